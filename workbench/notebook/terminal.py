"""``terminal(command)``: run a shell command from a tutorial as a terminal would, and print what it shows.

``workbench ...`` runs the CLI of the kernel's own Python (``python -m workbench``), whatever PATH
holds. In record mode the output is saved with the tutorial's recording; in replay mode the recorded
output is shown instead (nothing runs), marked as recorded.

Example::

    from workbench.notebook.terminal import terminal
    listing = terminal("workbench endpoint list --lab demo")
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from workbench.replay.session import RECORD_ENV, session


def terminal(command: str, *, check: bool = True, timeout: float = 120) -> str:
    """Run ``command``, print ``$ command`` and its output, return the output (stdout).

    ``check``: fail (AssertionError with its stderr) when it exits non-zero.
    """
    argv = shlex.split(command)
    current = session()
    lab = _lab_flag(argv)
    if current.replaying and current.replayer is not None:
        recorded = current.replayer.cli(lab, argv)
        output, code, stderr = recorded["output"], int(recorded["exit_code"]), recorded.get("stderr", "")
        print(f"$ {command}   # recorded on the lab node\n{output}", end="")
    else:
        run = [sys.executable, "-m", "workbench", *argv[1:]] if argv and argv[0] == "workbench" else argv
        env = {k: v for k, v in os.environ.items() if k != RECORD_ENV}   # the CLI must not record over us
        proc = subprocess.run(run, capture_output=True, text=True, timeout=timeout, env=env)
        output, code, stderr = proc.stdout, proc.returncode, proc.stderr
        current.record({"kind": "cli", "argv": argv, "output": output, "exit_code": code, "stderr": stderr}, lab)
        print(f"$ {command}\n{output}", end="")
    if check:
        assert code == 0, f"`{command}` exited with {code}: {stderr.strip()}"
    return str(output)


def _lab_flag(argv: list[str]) -> str:
    """The value of --lab/-l/--name in ``argv`` (the lab name the recording scrubs), or ""."""
    for i, word in enumerate(argv[:-1]):
        if word in ("--lab", "-l", "--name"):
            return argv[i + 1]
    return ""
