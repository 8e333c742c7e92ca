"""%%policy through IPython's shell against a real lab: apply, --dry-run, --audit, bad input."""

from __future__ import annotations

import uuid

import pytest
from IPython.core.error import UsageError

import workbench as wb

RULE1 = wb.example("rule1.yaml").read_text()
LANDING = "curl -s -m 2 -XPOST deathstar.default.svc.cluster.local/v1/request-landing"


@pytest.fixture(scope="module")
def lab():
    lab = wb.Lab.up(name=f"m{uuid.uuid4().hex[:6]}")
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture
def ip(lab):
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "workbench")
    yield shell
    lab.policy.audit(False)
    lab.policy.delete(all=True)


def test_dry_run_shows_changes_and_applies_nothing(lab, ip):
    outcome = ip.run_cell_magic("policy", f"--dry-run --lab {lab.name}", RULE1)
    assert outcome["dry_run"] and "2 endpoint" in outcome["summary"]
    changes = [row["change"] for row in outcome["rows"]]
    assert changes.count("+") == 4 and changes.count("enforce") == 2 and "dry run" in outcome._repr_html_()
    assert lab.policy.get().empty
    assert lab.exec("xwing", LANDING).stdout.strip() == "Ship landed"


def test_apply_enforces_rule1(lab, ip):
    outcome = ip.run_cell_magic("policy", f"--lab {lab.name}", RULE1)
    assert outcome["applied"] == ["default/rule1"] and "rule1" in outcome._repr_html_()
    assert lab.exec("tiefighter", LANDING).stdout.strip() == "Ship landed"
    assert lab.exec("xwing", LANDING).exit_code == 28   # curl: timed out


def test_audit_applies_with_the_selected_endpoints_in_audit_mode(lab, ip):
    outcome = ip.run_cell_magic("policy", f"--audit --lab {lab.name}", RULE1)
    assert len(outcome["audited"]) == 2 and all(p.startswith("deathstar") for p in outcome["audited"])
    assert lab.exec("xwing", LANDING).stdout.strip() == "Ship landed"
    verdicts = lab.flows(verdict="AUDIT", from_pod="xwing", event_type="policy-verdict", last=50)
    assert len(verdicts) > 0 and set(verdicts.drop_reason_desc.astype(str)) == {"POLICY_DENIED"}


@pytest.mark.parametrize("line, cell, message", [
    ("--lab {lab}", "kind: [unclosed", "malformed YAML"),
    ("--lab {lab}", RULE1.replace('port: "80"', 'port: "80000"'), "out of range"),
    ("--bogus --lab {lab}", RULE1, "unrecognized arguments: --bogus"),
    ("--lab nosuchlab", RULE1, "lab nosuchlab is not up"),
    ("--lab {lab}", "   ", "the cell is empty"),
])
def test_bad_input_is_one_usage_error_and_applies_nothing(lab, ip, line, cell, message):
    with pytest.raises(UsageError) as err:
        ip.run_cell_magic("policy", line.format(lab=lab.name), cell)
    assert message in str(err.value) and "\n" not in str(err.value).strip()
    assert lab.policy.get().empty
