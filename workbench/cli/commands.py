"""One parser and one handler per command, shared by the CLI and the ``%ebpf`` magic.

A handler returns a result object; the CLI renders it as text or JSON and takes
its exit code, the notebook magic returns it (DataFrames and objects with HTML
reprs). So `workbench endpoint list --json` and `%ebpf endpoint list` can never
disagree about what the command does.

Every command that works on a lab takes ``--lab/-l NAME`` (:func:`add_lab_flag`),
defaulting to ``$WORKBENCH_LAB``, else ``default``; handlers reach the lab only
through ``workbench.client.lab.Lab``.
"""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from workbench.cli.tables import format_table, terminal_width
from workbench.lab.names import DEFAULT_LAB, LAB_ENVIRONMENT, default_lab

# Modules that contribute commands; each has `register(subparsers)`.
COMMAND_MODULES = [
    "workbench.cli.status",
    "workbench.cli.kernelspec",
    "workbench.cli.lab",
    "workbench.cli.observe",
    "workbench.cli.policy",
    "workbench.cli.fqdn",
]


@runtime_checkable
class Result(Protocol):
    """What a command handler returns."""

    exit_code: int

    def to_json(self) -> Any: ...

    def format_text(self) -> str: ...


@dataclass
class TableResult:
    """A listing: a DataFrame for notebooks, a table for terminals, records for --json.

    The terminal table fits the terminal's width (see tables.py), showing
    ``terminal_view(frame)`` (default: every column), in one section per
    value of its ``sections`` column when given; ``wide`` (``-o wide``) shows
    every column, labels in full, in one flat table. ``json_only`` columns
    (whole documents) appear only in --json and in the notebook's DataFrame.
    """

    frame: Any
    exit_code: int = 0
    empty_text: str = "(none)"
    wide: bool = False
    terminal_view: Callable[[Any], Any] | None = None
    sections: str | None = None
    json_only: tuple[str, ...] = ()

    def to_json(self) -> Any:
        return json.loads(self.frame.to_json(orient="records", date_format="iso"))

    def format_text(self) -> str:
        if self.frame.empty:
            return self.empty_text
        frame = self.frame.drop(columns=[c for c in self.json_only if c in self.frame.columns])
        if self.wide:
            return format_table(frame, None, wide=True)
        if self.terminal_view is not None:
            frame = self.terminal_view(frame)
        return format_table(frame, terminal_width(), sections=self.sections)

    def value(self) -> Any:
        return self.frame


@dataclass
class MessageResult:
    """A command whose outcome is a sentence (and optionally structured data)."""

    text: str
    data: dict[str, Any] = field(default_factory=dict)
    exit_code: int = 0

    def to_json(self) -> Any:
        return {"message": self.text, **self.data}

    def format_text(self) -> str:
        return self.text

    def value(self) -> Any:
        return self


class ArgumentError(Exception):
    """Raised instead of argparse's exit so the magic can report a usage error."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # type: ignore[override]
        raise ArgumentError(f"{self.prog}: {message}")


def build_parser(prog: str = "workbench") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="eBPF Workbench: a Cilium-style lab node on this machine")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def add_table_flags(parser: argparse.ArgumentParser) -> None:
    """``--json`` and ``-o table|wide`` for a command that prints a table."""
    add_json_flag(parser)
    parser.add_argument("-o", "--output", choices=("table", "wide"), default="table",
                        help="table: fit the terminal, labels abbreviated (default); wide: everything")


def table_result(args: argparse.Namespace, frame: Any, **options: Any) -> TableResult:
    """The TableResult of a command with :func:`add_table_flags`."""
    return TableResult(frame, wide=getattr(args, "output", "table") == "wide", **options)


def add_lab_flag(parser: argparse.ArgumentParser) -> None:
    """``--lab/-l NAME`` (``--name`` too, the older spelling): the lab a command works on.

    The default is read when the parser is built, so ``$WORKBENCH_LAB`` set in
    a notebook applies to the next ``%ebpf`` line.
    """
    parser.add_argument("--lab", "-l", "--name", dest="lab", metavar="NAME", default=default_lab(),
                        help=f"the lab (default: ${LAB_ENVIRONMENT}, else {DEFAULT_LAB}; here: %(default)s)")


def run(argv: list[str], prog: str = "workbench") -> tuple[argparse.Namespace, Result]:
    """Parse ``argv`` and run its handler; raises ArgumentError or WorkbenchError."""
    args = build_parser(prog).parse_args(argv)
    return args, args.func(args)
