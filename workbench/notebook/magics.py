"""IPython magics. Thin by design: parse, call the shared command handlers, return objects."""

from __future__ import annotations

import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class

from ..commands import ArgumentError, run
from ..errors import WorkbenchError


@magics_class
class WorkbenchMagics(Magics):
    @line_cell_magic
    def ebpf(self, line: str, cell: str | None = None) -> Any:
        """`%ebpf SUBCOMMAND ...` mirrors the CLI and returns DataFrames/objects."""
        if cell is not None:
            raise UsageError("%%ebpf (programs in cells) is not available yet")
        try:
            _, result = run(shlex.split(line), prog="%ebpf")
        except (ArgumentError, WorkbenchError) as err:
            raise UsageError(str(err)) from None
        value = getattr(result, "value", None)
        return value() if callable(value) else result


def register_magics(ipython: Any) -> None:
    ipython.register_magics(WorkbenchMagics)
