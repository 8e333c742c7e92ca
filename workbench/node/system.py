"""Where the workbench keeps its state on this node, and checks that setup is complete.

Everything here only reads the system; nothing is created at import time.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from workbench.errors import PrivilegeError, SetupError

BPFFS = Path("/sys/fs/bpf")
TRACEFS = Path("/sys/kernel/tracing")
PIN_ROOT = BPFFS / "workbench"
RUN_ROOT = Path(os.environ.get("WORKBENCH_RUN_DIR", "/run/workbench"))
NETNS_PREFIX = "wb-"
CGROUP_PARENT = "wb"

SETUP_HINT = "run `make setup` from the workbench checkout as root"

# Capabilities by bit number (linux/capability.h).
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_BPF = 39
REQUIRED_CAPS = {"CAP_BPF": CAP_BPF, "CAP_NET_ADMIN": CAP_NET_ADMIN, "CAP_SYS_ADMIN": CAP_SYS_ADMIN}


def mounted_fs() -> dict[str, str]:
    """Mount point -> filesystem type, from /proc/mounts."""
    mounts: dict[str, str] = {}
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            mounts[parts[1]] = parts[2]
    return mounts


def cgroup2_root() -> Path | None:
    """The cgroup v2 mount (unified or hybrid layout), or None when there is none."""
    for mountpoint, fstype in mounted_fs().items():
        if fstype == "cgroup2":
            return Path(mountpoint)
    return None


def effective_caps() -> int:
    """The CapEff bit mask of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def missing_capabilities() -> list[str]:
    """Names of the capabilities eBPF networking needs that this process lacks."""
    caps = effective_caps()
    return [name for name, bit in REQUIRED_CAPS.items() if not caps & (1 << bit)]


def kernel_headers_dir() -> Path:
    return Path("/lib/modules") / platform.release()


def headers_present() -> bool:
    moddir = kernel_headers_dir()
    return (moddir / "build" / "Makefile").exists() and (
        moddir / "source" / "include" / "linux" / "kconfig.h"
    ).exists()


def require_privileges(what: str = "this command") -> None:
    """Raise PrivilegeError naming the missing capability."""
    missing = missing_capabilities()
    if missing:
        raise PrivilegeError(
            f"{what} needs root or {'+'.join(REQUIRED_CAPS)}; this process lacks {', '.join(missing)}",
            hint="run it with sudo",
        )


def require_ready(what: str = "this command") -> None:
    """Fail with the missing setup step and its fix before touching the kernel."""
    require_privileges(what)
    mounts = mounted_fs()
    if mounts.get(str(BPFFS)) != "bpf":
        raise SetupError(f"{what} needs bpffs mounted at {BPFFS}", hint=f"mount -t bpf bpf {BPFFS}, or {SETUP_HINT}")
    if not headers_present():
        raise SetupError(
            f"{what} needs kernel headers at {kernel_headers_dir()}/build and /source for BCC",
            hint=SETUP_HINT,
        )
    if cgroup2_root() is None:
        raise SetupError(f"{what} needs a cgroup2 mount", hint=SETUP_HINT)
    try:
        import bcc  # noqa: F401
    except ImportError as err:
        raise SetupError(f"{what} needs BCC (python3-bpfcc): {err}", hint=SETUP_HINT) from err
