"""Benchmark results follow bench/README.md's schema: the committed file, and a fresh quick run.

The fresh run is the ``bench`` tier: minutes of measuring, so ``make test``
leaves it out; run it with ``.venv/bin/pytest -m bench tests/unit/test_bench_schema.py``
(as root: the datapath and lab sections build real labs).
"""

import json
import os
from pathlib import Path

import pytest

from bench.figures import SECTIONS, figure, iter_figures, validate

LATEST = Path(__file__).resolve().parents[2] / "bench" / "results" / "latest.json"


def test_latest_results_follow_the_schema():
    doc = json.loads(LATEST.read_text())
    assert validate(doc) == []
    figures = list(iter_figures({k: doc[k] for k in SECTIONS}))
    assert len(figures) >= 20, "a real run measures many figures"
    sections_with_figures = {path.split(".")[0] for path, _ in figures}
    assert sections_with_figures == set(SECTIONS), \
        f"sections without figures (failed?): {[k for k in doc if isinstance(doc[k], dict) and 'error' in doc[k]]}"
    assert any("ratio" in fig for _, fig in figures)


def test_validate_finds_broken_figures():
    good = figure([1.0, 2.0, 3.0], "ms", baseline=figure([4.0], "ms"))
    assert good["ratio"] == 0.5
    doc = {"machine": {}, "datapath": {"x": good}, "attribution": {}, "policy_apply": {}, "ingest": {}, "lab": {}, "flows_wire": {}, "dns": {},
           "l7": {"bad": {"median": 5, "min": 6, "max": 7, "unit": "ms"}}}
    assert validate(doc) == ["l7.bad: min <= median <= max does not hold"]
    del doc["ingest"]
    assert "missing top-level key 'ingest'" in validate(doc)


@pytest.mark.bench
@pytest.mark.parametrize("section", SECTIONS)
def test_a_fresh_quick_run_follows_the_schema(section):
    if os.geteuid() != 0:
        pytest.skip("the bench sections need root (real labs, eBPF)")
    from bench.__main__ import run_all

    doc = run_all(quick=True, only=[section])   # in process: results/latest.json is not touched
    assert "error" not in doc[section], doc[section].get("traceback", doc[section])
    assert validate(doc) == []
    figures = list(iter_figures({section: doc[section]}))
    assert figures, f"the {section} section measured no figure"
    for path, fig in figures:
        assert fig["samples"] >= 1 and fig["unit"], path
