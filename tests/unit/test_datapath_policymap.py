"""The policy-map writer's pure part: entries are written as given, one key each, or refused."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from workbench.datapath import abi
from workbench.datapath.policymap import Slot, check_slots
from workbench.errors import ValidationError
from workbench.lab.model import PolicyEntry
from workbench.policy.compiler import map_entries


def test_slot_prefix_lengths_follow_the_key_layout() -> None:
    assert Slot(1, "ingress", 300, 0, 0, 0).prefixlen == abi.POLICY_PREFIX_IDENTITY
    assert Slot(1, "ingress", 300, 6, 0, 0).prefixlen == abi.POLICY_PREFIX_PROTO
    assert Slot(1, "ingress", 300, 6, 80, 16).prefixlen == abi.POLICY_PREFIX_FULL
    assert Slot(1, "ingress", 300, 6, 8080, 14).last_port == 8083
    assert Slot(1, "ingress", 300, 0, 0, 0).last_port == 0


def test_slots_are_kept_exactly_as_given() -> None:
    entries = [PolicyEntry(1, "ingress", 300, 6, 80, 16, deny=True, shadowed=True, rules=("default/a",)),
               PolicyEntry(1, "ingress", 300, 0, 0, 0, deny=True),
               PolicyEntry(1, "egress", 0, 17, 0, 0, proxy_port=15000)]
    assert list(check_slots(entries).values()) == entries


def test_what_the_compiler_plans_is_accepted() -> None:
    planned = map_entries([PolicyEntry(1, "ingress", 0, 0, 53, 16), PolicyEntry(1, "ingress", 300, 6, 8081, 15),
                           PolicyEntry(1, "ingress", 300, 0, 0, 0, deny=True)])
    assert len(check_slots(planned)) == len(planned) == 5  # ANY: TCP, UDP, SCTP


@pytest.mark.parametrize(("entry", "field"), [
    (PolicyEntry(1, "sideways", 0, 0, 0, 0), "direction"),  # type: ignore[arg-type]
    (PolicyEntry(70000, "ingress", 0, 0, 0, 0), "endpoint id"),
    (PolicyEntry(1, "ingress", 0, 6, 80, 17), "prefix"),
    (PolicyEntry(1, "ingress", 0, 6, 70000, 16), "port"),
    (PolicyEntry(1, "ingress", 0, 6, 80, 16, proxy_port=70000), "proxy port"),
])
def test_bad_entries_are_refused_naming_the_field(entry: PolicyEntry, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        check_slots([entry])


@pytest.mark.parametrize("entry", [
    PolicyEntry(1, "ingress", 0, 0, 53, 16),                # a port with ANY: the compiler expands it
    PolicyEntry(1, "ingress", 0, 6, 8081, 14),              # not the first port of its block
    PolicyEntry(1, "ingress", 0, 6, 80, 16, shadowed=True),  # shadowed is always a deny
])
def test_entries_that_are_not_slots_are_refused_not_fixed(entry: PolicyEntry) -> None:
    with pytest.raises(ValidationError, match="not a map slot") as err:
        check_slots([entry])
    assert "map_entries" in (err.value.hint or "")


def test_two_entries_for_one_key_are_refused_not_merged() -> None:
    with pytest.raises(ValidationError, match="two entries for one map key"):
        check_slots([PolicyEntry(1, "ingress", 300, 6, 80, 16), PolicyEntry(1, "ingress", 300, 6, 80, 16, deny=True)])


def test_the_writer_depends_on_no_policy_code() -> None:
    source = Path(__file__).resolve().parents[2] / "workbench" / "datapath" / "policymap.py"
    imported = {node.module for node in ast.walk(ast.parse(source.read_text()))
                if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {alias.name for node in ast.walk(ast.parse(source.read_text())) if isinstance(node, ast.Import)
                 for alias in node.names}
    assert not {m for m in imported if m.startswith("workbench.policy")}
