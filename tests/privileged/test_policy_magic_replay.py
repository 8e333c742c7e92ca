"""%%policy --dry-run shows, under the map diff, the recorded flows whose verdict the cell would change."""

from __future__ import annotations

import time
import uuid

import pytest

import workbench as wb

RULE1 = wb.example("rule1.yaml").read_text()
LANDING = "curl -s -m 2 -XPOST deathstar.default.svc.cluster.local/v1/request-landing"


@pytest.fixture(scope="module")
def lab():
    lab = wb.Lab.up(name=f"expl{uuid.uuid4().hex[:6]}")
    try:
        yield lab
    finally:
        lab.down()


def test_dry_run_replays_recorded_flows_and_applies_nothing(lab):
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "workbench")
    empty = shell.run_cell_magic("policy", f"--dry-run --lab {lab.name}", RULE1)
    assert empty["replay"] == []   # nothing recorded yet
    for pod in ("xwing", "tiefighter"):
        assert lab.exec(pod, LANDING).stdout.strip() == "Ship landed"
    time.sleep(1.0)   # the ring reader's batch
    before = lab.policy.map.to_dict(orient="records")
    outcome = shell.run_cell_magic("policy", f"--dry-run --lab {lab.name}", RULE1)
    assert lab.policy.map.to_dict(orient="records") == before and lab.policy.get().empty
    changed = {(row["src"], row["verdict_now"], row["verdict_candidate"]) for row in outcome["replay"]}
    assert changed == {("default/xwing", "FORWARDED", "DROPPED")}, outcome["replay"]
    page = outcome._repr_html_()
    assert "recorded flows whose verdict would change" in page and "default/xwing" in page
