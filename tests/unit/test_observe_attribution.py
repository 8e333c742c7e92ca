"""Policy attribution in flows (Hubble's ingress/egress_allowed_by, ingress/egress_denied_by), without a kernel.

Events are real struct flow_event records (synthetic.events) carrying a policy
cookie; the cookie table is the agent's own class. The kernel path (cookies
written into the policy map, events with real traffic) is in
tests/privileged/test_policy_attribution.py.
"""

from __future__ import annotations

import json
import os
import stat

import duckdb
import pandas as pd
import polars as pl
import pytest

from workbench.agent.l7.attribution import Attributor
from workbench.agent.l7.flows import exchange_rows
from workbench.agent.l7.proxy import Decision, Exchange
from workbench.datapath import abi
from workbench.datapath.cookies import PolicyCookies
from workbench.datapath.policymap import Slot, attribution, check_slots
from workbench.errors import ValidationError
from workbench.lab.model import Identity, PolicyEntry
from workbench.observe import schema, synthetic
from workbench.observe.archive import export_parquet, load_parquet
from workbench.observe.filters import flows
from workbench.observe.render import compact_line, read_json_lines, to_json_lines
from workbench.observe.store import FlowStore
from workbench.observe.synthetic import DEATHSTAR, TIEFIGHTER, XWING
from workbench.policy.compiler import compile_policies, load_documents

RULE1 = "default/rule1"
NO_XWING = "default/no-xwing"
CLUSTER = "cluster-wide"


@pytest.fixture
def cookies() -> PolicyCookies:
    table = PolicyCookies()
    table.cookies([(RULE1,), (NO_XWING,), (CLUSTER, RULE1)])
    return table


@pytest.fixture
def store(cookies: PolicyCookies) -> FlowStore:
    s = FlowStore(context=synthetic.star_wars_context())
    s.cookie_names = cookies.rules_of
    rule1, no_xwing, both = cookies.cookie([RULE1]), cookies.cookie([NO_XWING]), cookies.cookie([RULE1, CLUSTER])
    s.ingest(synthetic.events([
        # 0: tiefighter's SYN allowed by rule1 (deathstar ingress)
        dict(src=TIEFIGHTER.ipv4, dst=DEATHSTAR.ipv4, type="policy-verdict", match_type=abi.MATCH_L3_L4,
             policy_cookie=rule1),
        # 1, 2: xwing denied by a deny rule: the verdict and the drop both name it
        dict(src=XWING.ipv4, dst=DEATHSTAR.ipv4, type="policy-verdict", verdict="DROPPED",
             drop_reason=abi.DROP_POLICY_DENY, match_type=abi.MATCH_L3_ONLY, policy_cookie=no_xwing),
        dict(src=XWING.ipv4, dst=DEATHSTAR.ipv4, type="drop", verdict="DROPPED", drop_reason=abi.DROP_POLICY_DENY,
             policy_cookie=no_xwing),
        # 3: a default-deny drop: no entry matched, no cookie
        dict(src=XWING.ipv4, dst=DEATHSTAR.ipv4, type="policy-verdict", verdict="DROPPED",
             drop_reason=abi.DROP_POLICY_DENIED, match_type=abi.MATCH_NONE),
        # 4: an egress allow naming two policies
        dict(src=XWING.ipv4, dst=synthetic.WORLD_IP, type="policy-verdict", direction="EGRESS",
             match_type=abi.MATCH_ALL, policy_cookie=both),
        # 5: a trace row: never attributed
        dict(src=TIEFIGHTER.ipv4, dst=DEATHSTAR.ipv4, type="trace"),
        # 6: an audited deny (passes, would have been dropped by no-xwing)
        dict(src=XWING.ipv4, dst=DEATHSTAR.ipv4, type="policy-verdict", verdict="AUDIT",
             drop_reason=abi.DROP_POLICY_DENY, match_type=abi.MATCH_L3_ONLY, policy_cookie=no_xwing),
        # 7: a cookie the table never gave out (another lab's map?): named as nothing, not as garbage
        dict(src=XWING.ipv4, dst=DEATHSTAR.ipv4, type="policy-verdict", policy_cookie=999),
    ]))
    return s


def lists(frame: pd.DataFrame, row: int) -> dict[str, list[str]]:
    return {c: list(frame[c].iloc[row]) for c in schema.POLICY_COLUMNS}


def test_the_four_columns_follow_policy_match_type_as_string_lists() -> None:
    columns = schema.COLUMNS
    at = columns.index("policy_match_type")
    assert columns[at + 1:at + 5] == ["ingress_allowed_by", "egress_allowed_by", "ingress_denied_by",
                                      "egress_denied_by"]
    empty = schema.empty_flows()
    schema.validate_flows(empty)
    assert all(str(empty[c].dtype) == "list<item: string>[pyarrow]" for c in schema.POLICY_COLUMNS)


def test_each_verdict_fills_the_column_of_its_direction_and_kind(store: FlowStore) -> None:
    frame = store.frame()
    none = {c: [] for c in schema.POLICY_COLUMNS}
    assert lists(frame, 0) == {**none, "ingress_allowed_by": [RULE1]}
    assert lists(frame, 1) == {**none, "ingress_denied_by": [NO_XWING]}
    assert lists(frame, 2) == {**none, "ingress_denied_by": [NO_XWING]}
    assert lists(frame, 3) == none and frame.policy_match_type.iloc[3] == "none"
    assert lists(frame, 4) == {**none, "egress_allowed_by": [CLUSTER, RULE1]}
    assert lists(frame, 5) == none
    assert lists(frame, 6) == {**none, "ingress_denied_by": [NO_XWING]}
    assert lists(frame, 7) == none


def test_without_a_cookie_table_nothing_is_named() -> None:
    s = FlowStore()
    s.ingest(synthetic.events([dict(src=XWING.ipv4, dst=DEATHSTAR.ipv4, type="policy-verdict", policy_cookie=1)]))
    assert lists(s.frame(), 0) == {c: [] for c in schema.POLICY_COLUMNS}


def test_compact_output_says_who_allowed_or_denied(store: FlowStore) -> None:
    rows = list(store.frame().itertuples(index=False))
    assert compact_line(rows[0]).endswith("ALLOWED (TCP Flags: SYN) (allowed by default/rule1)")
    assert compact_line(rows[1]).endswith("DENIED (TCP Flags: SYN) (denied by default/no-xwing)")
    assert compact_line(rows[2]).endswith("POLICY_DENY DROPPED (TCP Flags: SYN) (denied by default/no-xwing)")
    assert compact_line(rows[3]).endswith("DENIED (TCP Flags: SYN)")
    assert compact_line(rows[4]).endswith("(allowed by cluster-wide, default/rule1)")


def test_json_lines_carry_the_lists_and_read_back_equal(store: FlowStore) -> None:
    frame = store.frame()
    text = to_json_lines(frame)
    first = json.loads(text.splitlines()[0])
    assert first["ingress_allowed_by"] == [RULE1] and first["egress_denied_by"] == []
    pd.testing.assert_frame_equal(read_json_lines(text), frame)


def test_parquet_keeps_the_list_columns_for_every_reader(store: FlowStore, tmp_path) -> None:
    frame = store.frame()
    path = export_parquet(frame, tmp_path / "attributed.parquet")
    pd.testing.assert_frame_equal(load_parquet(path), frame)
    assert [list(x) for x in pd.read_parquet(path).ingress_denied_by] == [list(x) for x in frame.ingress_denied_by]
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}') "
                      f"WHERE list_contains(ingress_denied_by, '{NO_XWING}')").fetchall()[0][0] == 3
    assert pl.read_parquet(path)["egress_allowed_by"].to_list()[4] == [CLUSTER, RULE1]


def test_policy_filter_selects_the_flows_a_policy_decided(store: FlowStore) -> None:
    frame = store.frame()
    assert flows(frame, policy=RULE1).index.tolist() == [0, 1] and len(flows(frame, policy="rule1")) == 2
    assert len(flows(frame, policy="no-xwing")) == 3
    assert len(flows(frame, policy=CLUSTER)) == 1    # clusterwide: its bare name is its key
    assert len(flows(frame, policy=["rule1", "no-xwing"])) == 5
    assert len(flows(frame, policy="rule1", verdict="FORWARDED")) == 2


def test_a_bare_name_in_two_namespaces_is_ambiguous(store: FlowStore) -> None:
    frame = store.frame()
    frame.attrs["known_policies"] = [RULE1, "kube-system/rule1"]
    with pytest.raises(ValidationError, match="ambiguous.*default/rule1, kube-system/rule1"):
        flows(frame, policy="rule1")
    assert len(flows(frame, policy="kube-system/rule1")) == 0


def test_a_policy_the_lab_never_had_is_an_error_listing_the_known_ones(store: FlowStore) -> None:
    frame = store.frame()
    frame.attrs["known_policies"] = [RULE1, NO_XWING, CLUSTER]
    with pytest.raises(ValidationError, match="unknown policy 'rule2'") as err:
        flows(frame, policy="rule2")
    assert "default/rule1" in str(err.value) and "\n" not in str(err.value)


def test_l7_rows_an_allowed_request_names_its_policies_a_denied_one_none_and_133() -> None:
    s = FlowStore(context=synthetic.star_wars_context())
    allowed = Exchange((TIEFIGHTER.ipv4, 41000), (DEATHSTAR.ipv4, 80), "POST", "/v1/request-landing", 200,
                       "FORWARDED", 1_000_000, Decision(True, TIEFIGHTER.identity, DEATHSTAR.identity,
                                                        policies=(RULE1,)))
    denied = Exchange((TIEFIGHTER.ipv4, 41001), (DEATHSTAR.ipv4, 80), "PUT", "/v1/exhaust-port", 403,
                      "DROPPED", None, Decision(False, TIEFIGHTER.identity, DEATHSTAR.identity))
    from workbench.agent.l7.flows import append_rows

    append_rows(s, exchange_rows(allowed) + exchange_rows(denied))
    frame = s.frame()
    assert [list(x) for x in frame.ingress_allowed_by] == [[RULE1], [RULE1], []]
    assert frame.drop_reason.tolist() == [0, 0, abi.DROP_POLICY_DENIED]
    assert frame.drop_reason_desc.iloc[2] == "POLICY_DENIED"
    assert all(list(x) == [] for c in ("ingress_denied_by", "egress_denied_by") for x in frame[c])


# -- the cookie table ------------------------------------------------------------------------------

def test_cookies_are_stable_small_and_0_is_no_policy(tmp_path) -> None:
    table = PolicyCookies(tmp_path / "cookies.json")
    first = table.cookies([("b/x", "a/y"), ("a/y", "b/x"), ()])
    assert first == [1, 1, abi.POLICY_COOKIE_NONE]
    assert table.rules_of(1) == ("a/y", "b/x") and table.rules_of(0) == () and table.rules_of(77) == ()
    assert table.cookie(["c/z"]) == 2 and table.cookie(["b/x", "a/y"]) == 1   # an old cookie keeps its meaning


def test_the_table_survives_an_agent_restart_private_and_whole(tmp_path) -> None:
    path = tmp_path / "policy_cookies.json"
    PolicyCookies(path).cookies([(RULE1,), (NO_XWING, RULE1)])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = PolicyCookies(path)
    assert again.rules_of(2) == (NO_XWING, RULE1) and again.cookie([RULE1]) == 1 and again.cookie(["n"]) == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_a_damaged_table_is_a_one_line_error(tmp_path) -> None:
    path = tmp_path / "policy_cookies.json"
    path.write_text('{"not": "a table"}')
    with pytest.raises(ValidationError, match="policy cookie table .* is unreadable"):
        PolicyCookies(path)


def test_a_shadowed_allow_is_attributed_to_the_deny_that_covers_it() -> None:
    deny = PolicyEntry(1, "ingress", 300, 0, 0, 0, deny=True, rules=(NO_XWING,))
    shadowed = PolicyEntry(1, "ingress", 300, 6, 80, 16, deny=True, shadowed=True, rules=(RULE1,))
    other_peer = PolicyEntry(1, "ingress", 301, 6, 80, 16, rules=(RULE1,))
    named = attribution(check_slots([deny, shadowed, other_peer]))
    assert named[Slot.of(shadowed)] == (NO_XWING,)
    assert named[Slot.of(deny)] == (NO_XWING,) and named[Slot.of(other_peer)] == (RULE1,)


# -- the proxy's attribution ------------------------------------------------------------------------

L7_ONLY = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "landing"},
           "spec": {"endpointSelector": {"matchLabels": {"class": "deathstar"}},
                    "ingress": [{"fromEndpoints": [{"matchLabels": {"org": "empire"}}],
                                 "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                                              "rules": {"http": [{"method": "POST",
                                                                  "path": "/v1/request-landing"}]}}]}]}}
L7_GET = {**L7_ONLY, "metadata": {"name": "reads"},
          "spec": {**L7_ONLY["spec"], "ingress": [{**L7_ONLY["spec"]["ingress"][0],  # type: ignore[index]
                                                  "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                                                               "rules": {"http": [{"method": "GET"}]}}]}]}}


def test_each_request_is_attributed_to_the_policies_whose_rules_match_it() -> None:
    docs = {d.key: d for d in load_documents([L7_ONLY, L7_GET])}
    endpoints = [XWING, TIEFIGHTER, DEATHSTAR]
    identities = [Identity(ep.identity, ep.labels) for ep in endpoints]
    compiled = compile_policies(list(docs.values()), endpoints, identities, {"default": {}})
    attributor = Attributor(lambda: docs, lambda: endpoints, lambda: identities, lambda: {"default": {}})

    def who(method: str, path: str) -> tuple[str, ...]:
        return attributor.allowed_by(compiled, DEATHSTAR.id, "ingress", TIEFIGHTER.identity, 80, method, path, {})

    assert who("POST", "/v1/request-landing") == ("default/landing",)
    assert who("GET", "/v1/") == ("default/reads",)
    assert who("PUT", "/v1/exhaust-port") == ()
    assert attributor.allowed_by(compiled, DEATHSTAR.id, "ingress", XWING.identity, 80, "GET", "/", {}) == ()
