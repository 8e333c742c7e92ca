"""Parameters at the agent boundary are typed: a wrong type is an error, never truthiness.

The finding behind it: ``lab.policy.audit("off")`` (and the raw call with
``on: "maybe"``) put every endpoint into audit mode, and xwing landed under rule1.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

import workbench as wb
from workbench.errors import ValidationError

LANDING = "curl -s -m 2 -XPOST deathstar.default.svc.cluster.local/v1/request-landing"


@pytest.fixture(scope="module")
def lab():
    lab = wb.Lab.up(name=f"sect{uuid.uuid4().hex[:6]}")
    try:
        lab.policy.apply(wb.example("rule1.yaml"))
        yield lab
    finally:
        lab.down()


def xwing_lands(lab) -> bool:
    return lab.exec("xwing", LANDING).stdout.strip() == "Ship landed"


def test_audit_off_keeps_enforcing_and_on_really_turns_audit_on(lab):
    lab.policy.audit("off")
    assert not xwing_lands(lab)
    assert lab.policy.audit("on")["audit"] is True
    assert xwing_lands(lab)                          # the check above can fail: audit really lets it through
    assert lab.policy.audit("off")["audit"] is False
    assert not xwing_lands(lab)


@pytest.mark.parametrize("value", ["maybe", "off", 1, 0, None, [], {}])
def test_a_non_boolean_audit_switch_is_refused_by_the_agent_and_changes_nothing(lab, value):
    with pytest.raises(ValidationError, match=r"policy.audit: parameter 'on'"):
        lab.call("policy.audit", on=value)
    assert not xwing_lands(lab)


def test_the_python_api_refuses_words_other_than_on_and_off(lab):
    with pytest.raises(ValidationError, match="'on'/'off'"):
        lab.policy.audit("maybe")
    assert not xwing_lands(lab)


@pytest.mark.parametrize("method, params, where", [
    ("policy.apply", {"text": 42}, "'text'"),
    ("policy.delete", {"names": "rule1"}, "'names'"),
    ("policy.delete", {"all": "yes"}, "'all'"),
    ("flows.query", {"after": "10"}, "'after'"),
    ("metrics.serve", {"port": "80"}, "'port'"),
    ("endpoint.get", {"pod": ["xwing"]}, "'pod'"),
    ("policy.audit", {"on": False, "surprise": 1}, "'surprise'"),
])
def test_every_method_checks_its_parameter_types(lab, method, params, where):
    with pytest.raises(ValidationError, match=f"{method}: parameter {where}"):
        lab.call(method, **params)
    assert set(lab.policy.get()["name"]) == {"rule1"}
    assert not xwing_lands(lab)


def test_the_cli_audit_command_takes_on_and_off(lab):
    run = subprocess.run([sys.executable, "-m", "workbench", "policy", "audit", "off", "--lab", lab.name],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert not xwing_lands(lab)
