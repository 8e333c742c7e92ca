"""The kernel's own run-time statistics of BPF programs, switched on only while they are needed.

``BPF_ENABLE_STATS`` turns on run counting and timing while the file descriptor
it returns is open; the kernel drops it when the descriptor closes, also when
the process dies, so the machine's ``kernel.bpf_stats_enabled`` setting is
never changed. Read a program's figures with
:meth:`workbench.datapath.loader.Datapath.program_stats`.

Example::

    >>> with run_time_stats():                                   # doctest: +SKIP
    ...     before = datapath.program_stats("to_container")
    ...     send_traffic()
    ...     after = datapath.program_stats("to_container")
    >>> (after.run_time_ns - before.run_time_ns) / (after.run_cnt - before.run_cnt)   # doctest: +SKIP
    312.5
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

SYS_BPF = {"x86_64": 321, "aarch64": 280}
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0


class ProgramStats(NamedTuple):
    """Cumulative figures of one loaded program (zero while no stats were ever on)."""

    run_time_ns: int
    run_cnt: int


@contextmanager
def run_time_stats() -> Iterator[None]:
    """Kernel run-time accounting of every BPF program while the block runs."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(16)
    ctypes.c_uint32.from_buffer(attr, 0).value = BPF_STATS_RUN_TIME
    fd = libc.syscall(SYS_BPF[os.uname().machine], BPF_ENABLE_STATS, attr, ctypes.sizeof(attr))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "BPF_ENABLE_STATS failed")
    try:
        yield
    finally:
        os.close(fd)


def program_fd_stats(fd: int) -> ProgramStats:
    """run_time_ns and run_cnt of the program behind ``fd`` (a descriptor this process holds)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines())
    return ProgramStats(int(fields["run_time_ns"]), int(fields["run_cnt"]))
