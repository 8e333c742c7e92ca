"""Every tutorial runs top to bottom in the workbench kernel with zero errors.

Cells that demonstrate an outcome assert it, so a broken lab fails here.
Executed copies go to tests/artifacts/ for inspection; the sources stay clean.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import workbench as wb

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]-*.ipynb"))
ARTIFACTS = REPO / "tests" / "artifacts"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_runs_clean(path: Path, kernelspec_prefix: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="ebpf-workbench", timeout=300, startup_timeout=120,
                            resources={"metadata": {"path": str(path.parent)}})
    labs_before = set(wb.Lab.known())
    try:
        client.execute(env=dict(os.environ, JUPYTER_PATH=str(kernelspec_prefix / "share" / "jupyter")))
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, ARTIFACTS / path.name)
        # a tutorial that failed half-way leaves its (uniquely named) lab: remove what this run created
        for name in set(wb.Lab.known()) - labs_before:
            wb.Lab(name).down()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
