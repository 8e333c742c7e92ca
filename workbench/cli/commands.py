"""One parser and one handler per command, shared by the CLI and the ``%ebpf`` magic.

A handler returns a result object; the CLI renders it as text or JSON and takes
its exit code, the notebook magic returns it (DataFrames and objects with HTML
reprs). So `workbench endpoint list --json` and `%ebpf endpoint list` can never
disagree about what the command does.
"""

from __future__ import annotations

import argparse
import importlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# Modules that contribute commands; each has `register(subparsers)`.
COMMAND_MODULES = [
    "workbench.cli.status",
    "workbench.cli.kernelspec",
    "workbench.cli.lab",
    "workbench.cli.observe",
    "workbench.cli.policy",
]


@runtime_checkable
class Result(Protocol):
    """What a command handler returns."""

    exit_code: int

    def to_json(self) -> Any: ...

    def format_text(self) -> str: ...


@dataclass
class TableResult:
    """A listing: a DataFrame for notebooks, a table for terminals, records for --json."""

    frame: Any
    exit_code: int = 0
    empty_text: str = "(none)"

    def to_json(self) -> Any:
        return json.loads(self.frame.to_json(orient="records", date_format="iso"))

    def format_text(self) -> str:
        if self.frame.empty:
            return self.empty_text
        return str(self.frame.to_string(index=False))

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


def run(argv: list[str], prog: str = "workbench") -> tuple[argparse.Namespace, Result]:
    """Parse ``argv`` and run its handler; raises ArgumentError or WorkbenchError."""
    args = build_parser(prog).parse_args(argv)
    return args, args.func(args)
