"""Starts the workbench Jupyter kernel: ipykernel with the `workbench` extension loaded.

eBPF needs root (or CAP_BPF+CAP_NET_ADMIN+CAP_SYS_ADMIN). When JupyterLab runs
unprivileged, the launcher re-executes itself through passwordless sudo if that
is available; otherwise the kernel starts anyway and `%ebpf status` says which
privilege is missing.
"""

from __future__ import annotations

import os
import shutil
import sys


def main() -> None:
    from workbench.node.system import missing_capabilities

    if missing_capabilities() and os.environ.get("WORKBENCH_NO_SUDO") != "1" and shutil.which("sudo"):
        if os.system("sudo -n true 2>/dev/null") == 0:
            os.execvp("sudo", ["sudo", "-n", "-E", sys.executable, "-m", "workbench.notebook.kernel_launcher", *sys.argv[1:]])
    # `!workbench ...` in a cell must find the CLI of this venv, activated or not.
    bin_dir = os.path.dirname(sys.executable)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    from ipykernel import kernelapp

    kernelapp.launch_new_instance(argv=[*sys.argv[1:], "--ext=workbench"])


if __name__ == "__main__":
    main()
