"""%%policy --dry-run shows, under the map diff, the recorded flows whose verdict the cell would change."""

from __future__ import annotations

import uuid

import pytest

import workbench as wb
from tests.waiting import wait_until

RULE1 = wb.example("rule1.yaml").read_text()
LANDING = "curl -s -m 2 -XPOST deathstar.default.svc.cluster.local/v1/request-landing"


@pytest.fixture(scope="module")
def lab():
    lab = wb.Lab.up(name=f"expl{uuid.uuid4().hex[:6]}")
    try:
        yield lab
    finally:
        lab.down()


def recorded_clients(lab) -> set[str]:
    """The pods with a recorded connection start (what a replay judges) towards a deathstar pod."""
    flows = lab.flows()
    starts = flows[flows.event_type.astype(str).isin(["policy-verdict", "trace"])
                   & flows.dst_pod.astype(str).str.startswith("deathstar")]
    return set(starts.src_pod.astype(str))


def test_dry_run_replays_recorded_flows_and_applies_nothing(lab):
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "workbench")
    empty = shell.run_cell_magic("policy", f"--dry-run --lab {lab.name}", RULE1)
    assert empty["replay"] == []   # nothing recorded yet
    for pod in ("xwing", "tiefighter"):
        assert lab.exec(pod, LANDING).stdout.strip() == "Ship landed"
    # the store has the flows once the agent's ring reader has taken its batch: wait for both clients'
    wait_until(lambda: recorded_clients(lab) >= {"xwing", "tiefighter"}, 10,
               "the recorded connections of xwing and tiefighter to the deathstar")
    before = lab.policy.map.to_dict(orient="records")
    outcome = shell.run_cell_magic("policy", f"--dry-run --lab {lab.name}", RULE1)
    assert lab.policy.map.to_dict(orient="records") == before and lab.policy.get().empty
    changed = {(row["src"], row["verdict_now"], row["verdict_candidate"]) for row in outcome["replay"]}
    assert changed == {("default/xwing", "FORWARDED", "DROPPED")}, outcome["replay"]
    page = outcome._repr_html_()
    assert "recorded flows whose verdict would change" in page and "default/xwing" in page
