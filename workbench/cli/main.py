"""The `workbench` command line. Parsing and handlers live in the command modules."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from workbench.cli.commands import ArgumentError, run
from workbench.errors import WorkbenchError, one_line


def main(argv: list[str] | None = None) -> int:
    """Entry point of `workbench` and `python -m workbench`."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, result = run(argv)
        _print(args, result)
    except ArgumentError as err:
        if "--help" in argv or "-h" in argv:
            return 0
        print(f"error: {one_line(str(err))}", file=sys.stderr)   # it quotes the arguments as typed
        return 2
    except WorkbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as err:   # a file the user named, a closed pipe: the system's own words
        where = f": {err.filename}" if err.filename else ""
        print(f"error: {one_line(err.strerror or str(err))}{where}", file=sys.stderr)
        return 1
    except Exception as err:   # a bug of ours: still one line; WORKBENCH_DEBUG=1 shows the traceback
        if os.environ.get("WORKBENCH_DEBUG"):
            raise
        print(f"error: internal error ({type(err).__name__}: {one_line(str(err))}); "
              "run with WORKBENCH_DEBUG=1 for the traceback", file=sys.stderr)
        return 1
    return result.exit_code


def _print(args: Any, result: Any) -> None:
    if getattr(args, "json", False):
        print(json.dumps(result.to_json(), indent=2, default=str))
    else:
        text = result.format_text()
        if text:
            print(text)


if __name__ == "__main__":
    sys.exit(main())
