"""Every leaf command of the `workbench` parser is run as a process by some test.

The test sources are read, not run: an invocation is a list whose items go
``"-m", "workbench", "WORD", ...`` (``[sys.executable, "-m", "workbench", "policy", "get"]``),
or a call of a helper that builds such a list from its arguments, with the
command's words as literal leading arguments (``cli("policy", "get", "--lab", name)``,
tests/privileged/test_cli_commands.py). A helper that forwards ``*args`` to such
a helper is one too (``cli_json``). Words after the first non-literal argument
are not read, so a command built at run time (a parametrized list) does not count.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

from tests.unit.test_cli_lab_flag import leaf_commands
from workbench.cli.commands import build_parser

TESTS = Path(__file__).resolve().parents[1]


def _literal_words(nodes: list[ast.expr]) -> tuple[str, ...]:
    words: list[str] = []
    for node in nodes:
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            break
        words.append(node.value)
    return tuple(words)


def _module_words(items: list[ast.expr]) -> tuple[str, ...] | None:
    """The literal words after ``"-m", "workbench"`` in a list's items; None when it is no such list."""
    for i in range(len(items) - 1):
        pair = items[i:i + 2]
        if all(isinstance(n, ast.Constant) for n in pair) and \
                [n.value for n in pair] == ["-m", "workbench"]:  # type: ignore[attr-defined]
            return _literal_words(items[i + 2:])
    return None


def _called_name(call: ast.Call) -> str | None:
    return call.func.id if isinstance(call.func, ast.Name) else None


def _wrappers(tree: ast.Module) -> set[str]:
    """Functions of a module that run `python -m workbench` with their arguments (directly or via another)."""
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    found: set[str] = set()
    while True:
        more = {f.name for f in functions if f.name not in found and any(
            (isinstance(n, ast.List | ast.Tuple) and _module_words(n.elts) is not None)
            or (isinstance(n, ast.Call) and _called_name(n) in found
                and any(isinstance(a, ast.Starred) for a in n.args))
            for n in ast.walk(f))}
        if not more:
            return found
        found |= more


def invocations(source: str) -> set[tuple[str, ...]]:
    """The literal command words of every `python -m workbench` invocation in a test module's source."""
    tree = ast.parse(source)
    wrappers = _wrappers(tree)
    found: set[tuple[str, ...]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.List | ast.Tuple):
            words = _module_words(node.elts)
            if words:
                found.add(words)
        elif isinstance(node, ast.Call) and _called_name(node) in wrappers:
            words = _literal_words(node.args)
            if words:
                found.add(words)
    return found


@cache
def invoked_in_tests() -> frozenset[tuple[str, ...]]:
    """Read once per session: every test module's invocations."""
    found: set[tuple[str, ...]] = set()
    for path in sorted(TESTS.rglob("test_*.py")):
        found |= invocations(path.read_text())
    return frozenset(found)


def covered(path: tuple[str, ...], invoked: frozenset[tuple[str, ...]] | set[tuple[str, ...]]) -> bool:
    return any(words[:len(path)] == path for words in invoked)


LEAVES = sorted(path for path, _ in leaf_commands(build_parser()))


@pytest.mark.parametrize("path", [pytest.param(p, id=" ".join(p)) for p in LEAVES])
def test_every_leaf_command_is_run_by_a_test(path: tuple[str, ...]) -> None:
    assert covered(path, invoked_in_tests()), \
        f"`workbench {' '.join(path)}` is run by no test (add it to tests/privileged/test_cli_commands.py)"


def test_the_reader_finds_lists_helpers_and_forwarding_helpers() -> None:
    source = '''
import subprocess, sys
def cli(*args, expect=0):
    return subprocess.run([sys.executable, "-m", "workbench", *args])
def cli_json(*args):
    return cli(*args, "--json")
def other(x):
    return x
def test_x(lab):
    subprocess.run([sys.executable, "-m", "workbench", "observe", "--lab", lab])
    cli("policy", "get", "--lab", lab)
    cli_json("bpf", "policy", "get")
    other("lab", "up")
    cli(*["identity", "list"])
'''
    found = invocations(source)
    assert found == {("observe", "--lab"), ("policy", "get", "--lab"), ("bpf", "policy", "get")}
    assert covered(("policy", "get"), found) and covered(("observe",), found)
    assert not covered(("lab", "up"), found) and not covered(("identity", "list"), found)
    assert not covered(("policy", "delete"), found)


def test_the_parser_has_the_commands_the_walk_expects() -> None:
    assert len(LEAVES) >= 24
    assert {("identity", "list"), ("policy", "audit"), ("bpf", "policy", "get"), ("connectivity", "test"),
            ("policy", "suggest")} <= set(LEAVES)
