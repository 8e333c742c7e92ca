"""The `workbench` command line. Parsing and handlers live in the command modules."""

from __future__ import annotations

import json
import sys

from workbench.cli.commands import ArgumentError, run
from workbench.errors import WorkbenchError, one_line


def main(argv: list[str] | None = None) -> int:
    """Entry point of `workbench` and `python -m workbench`."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, result = run(argv)
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
    if getattr(args, "json", False):
        print(json.dumps(result.to_json(), indent=2, default=str))
    else:
        text = result.format_text()
        if text:
            print(text)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
