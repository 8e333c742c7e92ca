"""`make record`: run every tutorial on this lab node and save what it read, for replay mode.

Each tutorial notebook runs top to bottom in the workbench kernel with WORKBENCH_RECORD set, so its
lab client writes every answer it gets (local API calls, flows, pod commands, terminal output) into
the recording (workbench/replay/recording.py). The recording replaces workbench/data/recording only
when every tutorial ran clean; it is never edited by hand.

    python scripts/record_tutorials.py [--only 02-observe ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import workbench as wb  # noqa: E402
from workbench.replay.recording import DEFAULT_RECORDING, FORMAT, META_FILE, Recording  # noqa: E402
from workbench.replay.session import RECORD_ENV, TUTORIAL_ENV  # noqa: E402

NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]-*.ipynb"))
MAX_BYTES = 5 * 1024 * 1024


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def record(path: Path, directory: Path) -> float:
    """Run one tutorial in record mode; returns its seconds. Raises when a cell fails."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="ebpf-workbench", timeout=300, startup_timeout=120,
                            resources={"metadata": {"path": str(path.parent)}})
    labs_before = set(wb.Lab.known())
    start = time.monotonic()
    try:
        client.execute(env=dict(os.environ, **{RECORD_ENV: str(directory), TUTORIAL_ENV: path.stem}))
    finally:
        # a tutorial that failed half-way leaves its lab (named tutorialNN...): only those are removed here
        for name in set(wb.Lab.known()) - labs_before:
            if name.startswith(f"tutorial{path.stem[:2]}"):
                wb.Lab(name).down()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    if errors:
        raise SystemExit(f"record: {path.name} failed: {errors[0].get('ename')}: {errors[0].get('evalue')}")
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="tutorial names (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_RECORDING)
    args = parser.parse_args()
    chosen = [p for p in NOTEBOOKS if not args.only or p.stem in args.only]
    with tempfile.TemporaryDirectory(prefix="wb-record-") as tmp:
        directory = Path(tmp) / "recording"
        directory.mkdir()
        seconds = {}
        for path in chosen:
            print(f"record: {path.stem} ...", flush=True)
            seconds[path.stem] = round(record(path, directory), 1)
        recorded = [p.stem for p in chosen if (directory / f"{p.stem}.jsonl").exists()]
        meta = {"format": FORMAT, "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "kernel": platform.release(), "workbench_version": wb.__version__, "cpu": cpu_model(),
                "tutorials": recorded, "seconds": seconds}
        (directory / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        # the policy stages the tutorials went through (no policy, rule1, L7, ...): where each begins
        meta["stages"] = Recording.load(directory).stages()
        (directory / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
        if size > MAX_BYTES:
            raise SystemExit(f"record: the recording is {size / 1e6:.1f} MB, over the {MAX_BYTES / 1e6:.0f} MB bound")
        if args.out.exists():
            shutil.rmtree(args.out)
        shutil.copytree(directory, args.out)
        print(f"record: {len(recorded)} tutorials, {size / 1e6:.2f} MB -> {args.out}")


if __name__ == "__main__":
    main()
