"""`exec POD -- CMD`: run a command in a pod's netns, cgroup and hosts file, like `kubectl exec`."""

from __future__ import annotations

import html
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.client.transport import AgentClient, AgentUnavailable
from workbench.errors import ValidationError
from workbench.lab.names import find_endpoint
from workbench.node.processes import exec_argv
from workbench.node.state import saved_endpoints


@dataclass
class ExecResult:
    """Exit code and, when captured, the output of a command run in a pod."""

    pod: str
    command: list[str]
    exit_code: int
    stdout: str = ""
    stderr: str = ""
    captured: bool = True

    def to_json(self) -> Any:
        return {"pod": self.pod, "command": self.command, "exit_code": self.exit_code,
                "stdout": self.stdout, "stderr": self.stderr}

    def format_text(self) -> str:
        # Passed-through output has been printed already; captured output is the result.
        return self.stdout.rstrip("\n") if self.captured else ""

    def value(self) -> Any:
        return self

    def __str__(self) -> str:
        return self.stdout

    def _repr_html_(self) -> str:
        err = f"<pre style='color:#b00'>{html.escape(self.stderr)}</pre>" if self.stderr else ""
        return (f"<div><code>{html.escape(self.pod)}$ {html.escape(' '.join(self.command))}</code> "
                f"(exit {self.exit_code})<pre>{html.escape(self.stdout)}</pre>{err}</div>")


def exec_in_pod(lab: str, pod: str, command: list[str], *, capture: bool = True, input: str | None = None,
                timeout: float | None = None) -> ExecResult:
    """Run ``command`` in ``pod`` (or ``deploy/NAME``) of ``lab``.

    With ``capture`` the output is returned; without, stdin/stdout/stderr are
    the caller's (the CLI). The exit code is the command's.
    """
    if not command:
        raise ValidationError("exec needs a command: workbench exec POD -- CMD [ARG...]")
    try:
        ep = AgentClient(lab).call("endpoint.get", pod=pod)
    except AgentUnavailable:
        # The pods outlive their agent: while it is down, state.json still knows them.
        saved = saved_endpoints(lab)
        if not saved:
            raise
        ep = find_endpoint(saved, pod).to_dict()
    argv = exec_argv(ep["netns"], Path(ep["cgroup"]), command)
    if capture:
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        return ExecResult(ep["pod"], command, proc.returncode, proc.stdout, proc.stderr)
    returncode = subprocess.run(argv, timeout=timeout).returncode
    return ExecResult(ep["pod"], command, returncode, captured=False)
