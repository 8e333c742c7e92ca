"""`workbench kernel install`: the "eBPF Workbench (Python 3)" Jupyter kernelspec."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from workbench.cli.commands import MessageResult, add_json_flag

KERNEL_NAME = "ebpf-workbench"
TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "kernels" / KERNEL_NAME


def install_kernelspec(user: bool = False, prefix: str | None = None) -> str:
    """Install the kernelspec pointing at this interpreter; returns the install path.

    Example::

        >>> install_kernelspec(prefix=sys.prefix)  # doctest: +SKIP
        '/work/main/.venv/share/jupyter/kernels/ebpf-workbench'
    """
    from jupyter_client.kernelspec import KernelSpecManager  # heavy; only this command needs it

    spec = json.loads((TEMPLATE_DIR / "kernel.json").read_text())
    spec["argv"][0] = sys.executable  # the venv's python, which sees BCC through system site-packages
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "kernel.json").write_text(json.dumps(spec, indent=2))
        # a temporary directory is private (0700) and the install copies its mode: every user of this
        # Python must be able to find the kernel (replay mode runs the tutorials unprivileged)
        Path(tmp).chmod(0o755)
        return str(KernelSpecManager().install_kernel_spec(tmp, KERNEL_NAME, user=user, prefix=prefix))


def _install(args: argparse.Namespace) -> MessageResult:
    prefix = sys.prefix if args.sys_prefix else args.prefix
    path = install_kernelspec(user=args.user, prefix=prefix)
    return MessageResult(f"installed kernelspec {KERNEL_NAME} in {path}", {"path": path})


def register(sub: Any) -> None:
    kernel = sub.add_parser("kernel", help="the Jupyter kernelspec")
    ksub = kernel.add_subparsers(dest="kernel_command", metavar="SUBCOMMAND")
    ksub.required = True
    install = ksub.add_parser("install", help="install the eBPF Workbench kernelspec")
    where = install.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="into the user's Jupyter data dir")
    where.add_argument("--sys-prefix", action="store_true", help="into this venv (default for make lab)")
    where.add_argument("--prefix", help="into PREFIX/share/jupyter/kernels")
    add_json_flag(install)
    install.set_defaults(func=_install)
