"""`workbench status`: the preflight (``wb.status()``) as a command."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workbench.cli.commands import add_json_flag

if TYPE_CHECKING:
    from workbench.node.preflight import Report


@dataclass
class StatusResult:
    report: Report

    @property
    def exit_code(self) -> int:
        return 0 if self.report.ok else 1

    def to_json(self) -> Any:
        return self.report.to_dict()

    def format_text(self) -> str:
        return self.report.format_table()

    def value(self) -> Any:
        return self.report


def _status(args: argparse.Namespace) -> StatusResult:
    from workbench.node.preflight import run_preflight  # pyroute2 and BCC load only for this command

    return StatusResult(run_preflight())


def register(sub: Any) -> None:
    parser = sub.add_parser("status", help="preflight: can this node run a lab?")
    add_json_flag(parser)
    parser.set_defaults(func=_status)
