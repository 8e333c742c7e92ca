"""The committed benchmark results (a real run's output) follow bench/README.md's schema."""

import json
from pathlib import Path

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
    doc = {"machine": {}, "datapath": {"x": good}, "attribution": {}, "policy_apply": {}, "ingest": {}, "lab": {}, "flows_wire": {},
           "l7": {"bad": {"median": 5, "min": 6, "max": 7, "unit": "ms"}}}
    assert validate(doc) == ["l7.bad: min <= median <= max does not hold"]
    del doc["ingest"]
    assert "missing top-level key 'ingest'" in validate(doc)
