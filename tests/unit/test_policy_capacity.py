"""The compiler stops at the first rule after which a policy cannot fit the policy map."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_policy_compile import IDENTITIES, LAB, NAMESPACES
from workbench.errors import ValidationError
from workbench.policy import compile_policies, load_documents


def _policy(rules: list[dict[str, Any]], section: str = "ingress") -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "big"},
            "spec": {"endpointSelector": {"matchLabels": {"class": "deathstar"}}, section: rules}}


def _port_rule(port: int) -> dict[str, Any]:
    return {"fromEndpoints": [{"matchLabels": {"org": "empire"}}],
            "toPorts": [{"ports": [{"port": str(port), "protocol": "TCP"}]}]}


def _compile(doc: dict[str, Any], **kwargs: Any) -> Any:
    return compile_policies(load_documents(doc, origin="big.yaml"), LAB.endpoints, IDENTITIES.all(), NAMESPACES,
                            **kwargs)


def test_a_policy_over_capacity_stops_at_the_rule_that_overflows() -> None:
    doc = _policy([_port_rule(1000 + i) for i in range(50)])
    entries = len(_compile(doc).entries)
    per_rule = entries // 50
    assert per_rule >= 1
    limit = per_rule * 7   # rules 0..6 fit, rule 7 overflows
    with pytest.raises(ValidationError) as err:
        _compile(doc, max_entries=limit)
    message = str(err.value)
    assert "big.yaml policy document 1 (CiliumNetworkPolicy big): spec.ingress[7]:" in message
    assert f"more than the {limit:,} entries the policy map holds" in message
    assert "\n" not in message


def test_a_policy_that_fits_exactly_compiles() -> None:
    doc = _policy([_port_rule(1000 + i) for i in range(20)])
    entries = _compile(doc).entries
    assert _compile(doc, max_entries=len(entries)).entries == entries


ports = st.sampled_from(["", "80", "81", "0", "443"])
protocols = st.sampled_from(["TCP", "UDP", "ANY"])
peers = st.sampled_from([{"fromEntities": ["all"]}, {"fromEndpoints": [{"matchLabels": {"org": "empire"}}]},
                         {"fromEndpoints": [{}]}, {"fromCIDR": ["192.0.2.0/24"]},
                         {"fromEndpoints": [{"matchLabels": {"class": "xwing"}}]}])


@st.composite
def rules(draw: st.DrawFn) -> dict[str, Any]:
    rule = dict(draw(peers))
    port = draw(ports)
    if port:
        rule["toPorts"] = [{"ports": [{"port": port, "protocol": draw(protocols)}]}]
    return rule


@settings(max_examples=150, deadline=None)
@given(st.lists(rules(), min_size=1, max_size=6), st.lists(rules(), max_size=4))
def test_the_budget_never_refuses_a_policy_that_fits(allow: list[dict[str, Any]], deny: list[dict[str, Any]]) -> None:
    """The keys counted during the compile are a lower bound of the map entries written (deny splits add)."""
    doc = _policy(allow)
    if deny:
        doc["spec"]["ingressDeny"] = deny
    entries = _compile(doc).entries
    assert _compile(doc, max_entries=len(entries)).entries == entries
