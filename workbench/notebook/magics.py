"""IPython magics. Thin by design: parse, call the shared command handlers or the program API, return objects.

The lab is chosen as on the command line: ``--lab/-l NAME`` (or ``--name``),
else ``$WORKBENCH_LAB``, else ``default``.
"""

from __future__ import annotations

import html
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from workbench.cli.commands import ArgumentError, run
from workbench.client.lab import Lab
from workbench.errors import WorkbenchError
from workbench.lab.names import DEFAULT_LAB, LAB_ENVIRONMENT
from workbench.notebook.cellargs import parse_cell_line

# Subcommands about this kernel's own programs: the registry lives in this process, so the
# CLI (another process) has nothing to list; they are handled here, not in commands.py.
PROGRAM_SUBCOMMANDS = ("programs", "detach")


@magics_class
class WorkbenchMagics(Magics):
    @line_cell_magic
    def ebpf(self, line: str, cell: str | None = None) -> Any:
        """`%ebpf SUBCOMMAND ...` mirrors the CLI; `%%ebpf TYPE [options]` compiles and attaches the cell's C."""
        try:
            if cell is not None:
                return _run_cell(line, cell)
            argv = shlex.split(line)
            if argv and argv[0] in PROGRAM_SUBCOMMANDS:
                return _program_command(argv)
            _, result = run(argv, prog="%ebpf")
        except (ArgumentError, WorkbenchError, ValueError) as err:
            raise UsageError(_message(err)) from None
        value = getattr(result, "value", None)
        return value() if callable(value) else result


    @magic_arguments()
    @argument("--dry-run", action="store_true", help="show which endpoints and map entries would change")
    @argument("--audit", action="store_true", help="apply, with the selected endpoints in audit mode")
    @argument("--lab", "-l", "--name", dest="lab", metavar="NAME", default=None,
              help=f"the lab (default: ${LAB_ENVIRONMENT}, else {DEFAULT_LAB})")
    @cell_magic
    def policy(self, line: str, cell: str) -> Any:
        """`%%policy [--dry-run] [--audit] [--lab L]`: apply the CiliumNetworkPolicy/NetworkPolicy YAML in the cell."""
        try:
            args = parse_argstring(self.policy, line)
        except UsageError as err:
            raise UsageError(f"%%policy: {err}") from None
        if not cell.strip():
            raise UsageError("%%policy: the cell is empty; write policy YAML below the %%policy line")
        try:
            lab = Lab(args.lab)
            outcome = lab.policy.apply(cell, dry_run=args.dry_run, audit=args.audit)
            if args.dry_run:
                outcome["replay"] = _replayed(lab, cell)
        except WorkbenchError as err:
            raise UsageError(f"%%policy: {err}") from None
        return PolicyOutcome(outcome)


DRY_RUN_REPLAY_FLOWS = 20_000   # the newest recorded flows a dry run replays (the whole store could be 1M rows)


def _replayed(lab: Lab, cell: str) -> list[dict[str, Any]]:
    """The recorded flows whose verdict the cell's policies would change (joining the applied set, as apply
    does); empty when the lab has recorded none."""
    flows = lab.flows(last=DRY_RUN_REPLAY_FLOWS)
    if flows.empty:
        return []
    frame = lab.policy.replay(cell, flows, add=True)
    return list(frame.astype(object).where(frame.notna(), None).to_dict(orient="records"))


class PolicyOutcome(dict):  # type: ignore[type-arg]
    """What %%policy did, shown as a sentence and (for --dry-run) the entries that would change."""

    def _repr_html_(self) -> str:
        from workbench.client.frames import dry_run_frame  # pandas, on first display

        if self.get("dry_run"):
            rows = dry_run_frame(self)
            table = rows.to_html(index=False) if not rows.empty else ""
            replayed = ""
            if self.get("replay"):
                import pandas as pd

                from workbench.policy.replay import RESULT_COLUMNS

                flows = pd.DataFrame(self["replay"], columns=RESULT_COLUMNS)
                replayed = (f"<p><b>recorded flows whose verdict would change</b>: {len(flows)}</p>"
                            + flows.to_html(index=False))
            return f"<p><b>dry run</b>: {html.escape(self['summary'])} (nothing applied)</p>{table}{replayed}"
        enforced = ", ".join(self.get("enforced", [])) or "none"
        audit = f"; audit mode on for {', '.join(self['audited'])}" if self.get("audited") else ""
        return (f"<p>applied <b>{html.escape(', '.join(self['applied']))}</b>: {self['entries']} map entries; "
                f"default-deny: {html.escape(enforced)}{html.escape(audit)}</p>")


def _message(err: Exception) -> str:
    details = getattr(err, "details", "")
    return f"{err}\n{details}" if details else str(err)


def _run_cell(line: str, cell: str) -> Any:
    spec = parse_cell_line(line)
    if not cell.strip():
        raise UsageError("%%ebpf: the cell is empty; write the program's C below the %%ebpf line")
    from workbench.replay.session import session

    if session().replaying:
        return ReplayedProgram(line, cell)
    from workbench.notebook.programs import manager  # BCC and pandas: loaded by the first %%ebpf cell

    return manager().load(spec, cell)


class ReplayedProgram:
    """What a %%ebpf cell shows in replay mode: the one line saying why nothing was loaded, and its C."""

    def __init__(self, line: str, source: str) -> None:
        from workbench.replay.session import NEEDS_A_NODE

        self.message = f"{NEEDS_A_NODE}: %%ebpf {line.strip()} was not compiled or attached"
        self.source = source

    def __repr__(self) -> str:
        return f"{self.message}\n{self.source}"

    def _repr_html_(self) -> str:
        from IPython.display import Code

        code = Code(self.source, language="c")._repr_html_()
        return f"<p style='color:#b45309'><b>{html.escape(self.message)}</b></p>{code}"


def _program_command(argv: list[str]) -> Any:
    from workbench.notebook import replayed_programs as recorded
    from workbench.replay.session import session

    replaying = session().replaying
    if argv[0] == "programs":
        if len(argv) > 1:
            raise UsageError(f"%ebpf programs takes no arguments (got {' '.join(argv[1:])})")
        if replaying:
            return recorded.replayed_programs()
        from workbench.notebook.programs import manager  # BCC and pandas: loaded on first use

        frame = manager().frame()
        recorded.record_programs(frame)      # record mode: replay mode serves it again
        return frame
    names = argv[1:]
    if not names:
        raise UsageError("usage: %ebpf detach NAME... | %ebpf detach --all")
    if replaying:
        print(recorded.DETACH_MESSAGE)
        return None
    from workbench.notebook.programs import manager

    if names == ["--all"]:
        return manager().detach_all()
    for name in names:
        manager().get(name)            # all names checked before anything is detached
    for name in names:
        manager().detach(name)
    return None


def register_magics(ipython: Any) -> None:
    ipython.register_magics(WorkbenchMagics)
