"""Choosing the lab: --lab/-l/--name on every lab command (found by walking the parser), $WORKBENCH_LAB, then
"default"; the same for %%policy and for Lab()."""

from __future__ import annotations

import argparse
import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import workbench
from workbench.cli.commands import build_parser

# Commands about the node, not one lab. A new command must take --lab or be added here on purpose.
NODE_COMMANDS = {("status",), ("kernel", "install"), ("lab", "list")}
SPELLINGS = ("--lab", "-l", "--name")


def leaf_commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...],
                                                                                                 argparse.ArgumentParser]]:
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield path, parser
    for action in subparsers:
        for name, sub in action.choices.items():
            yield from leaf_commands(sub, (*path, name))


def positionals(parser: argparse.ArgumentParser) -> list[str]:
    """Values for a command's required arguments: its required options (`policy trace --from ...`), then its
    positionals (after the flags: exec's CMD takes the rest)."""
    options: list[str] = []
    values: list[str] = []
    for action in parser._actions:
        value = str(next(iter(action.choices))) if action.choices else "x.yaml"
        if action.option_strings:
            if action.required:
                options += [action.option_strings[0], "80" if action.type is int else value]
            continue
        if action.nargs in (argparse.REMAINDER, "*", "?"):
            continue
        values.append(value)
    return options + values


def lab_commands() -> list[tuple[tuple[str, ...], list[str]]]:
    return [(path, positionals(leaf)) for path, leaf in leaf_commands(build_parser()) if path not in NODE_COMMANDS]


def parse(path: tuple[str, ...], *rest: str) -> argparse.Namespace:
    return build_parser().parse_args([*path, *rest])


def test_the_walk_finds_the_lab_commands() -> None:
    found = {path for path, _ in lab_commands()}
    assert {("endpoint", "list"), ("lab", "up"), ("observe",), ("bpf", "policy", "get"), ("exec",)} <= found
    assert len(found) >= 17
    assert {path for path, _ in leaf_commands(build_parser())} >= NODE_COMMANDS    # no stale exception


@pytest.mark.parametrize(("path", "values"), [pytest.param(*c, id=" ".join(c[0])) for c in lab_commands()])
def test_every_lab_command_takes_the_lab_flag(path: tuple[str, ...], values: list[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKBENCH_LAB", raising=False)
    assert parse(path, *values).lab == "default"
    for spelling in SPELLINGS:
        assert parse(path, spelling, "lab2", *values).lab == "lab2", spelling
    monkeypatch.setenv("WORKBENCH_LAB", "fromenv")
    assert parse(path, *values).lab == "fromenv"                       # the environment over "default"
    assert parse(path, "-l", "given", *values).lab == "given"          # the flag over the environment
    assert parse(path, "--name", "old", *values).lab == "old"


@pytest.mark.parametrize("path", [pytest.param(path, id=" ".join(path)) for path in sorted(NODE_COMMANDS)])
def test_node_commands_take_no_lab(path: tuple[str, ...]) -> None:
    from workbench.cli.commands import ArgumentError

    with pytest.raises(ArgumentError, match="unrecognized arguments"):
        parse(path, "--lab", "x")


def test_lab_flag_help_names_the_environment_variable() -> None:
    leaf = dict(leaf_commands(build_parser()))[("endpoint", "list")]
    assert "$WORKBENCH_LAB" in leaf.format_help()


def test_policy_magic_takes_the_same_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    from IPython.core.magic_arguments import parse_argstring

    from workbench.notebook.magics import WorkbenchMagics

    for spelling in SPELLINGS:
        assert parse_argstring(WorkbenchMagics.policy, f"--dry-run {spelling} lab2").lab == "lab2"
    assert parse_argstring(WorkbenchMagics.policy, "").lab is None      # then Lab() decides, as below


def test_lab_defaults_to_the_environment_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKBENCH_LAB", raising=False)
    assert workbench.Lab().name == "default"
    monkeypatch.setenv("WORKBENCH_LAB", "fromenv")
    assert workbench.Lab().name == "fromenv" and workbench.Lab("given").name == "given"
    monkeypatch.setenv("WORKBENCH_LAB", "Not-A-Lab")
    with pytest.raises(workbench.ValidationError, match="lab name 'Not-A-Lab' is invalid"):
        workbench.Lab()


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_cli_is_a_layer_over_the_lab_class() -> None:
    package = Path(workbench.__file__).parent
    for module in (package / "cli").glob("*.py"):
        client_modules = {m for m in imported_modules(module)
                          if m.split(".")[:2] in (["workbench", "client"], ["workbench", "agent"])}
        assert client_modules <= {"workbench.client.lab", "workbench.client.frames"}, module.name
    for module in (package / "client").glob("*.py"):
        assert not any(m.split(".")[:2] == ["workbench", "cli"] for m in imported_modules(module)), module.name
