"""Compiling the lab's eBPF objects with BCC, and where their pins live.

One compile per entry file per lab (docs/datapath.md): per-endpoint facts are map
entries, so adding a pod compiles nothing. Compile-time options are cflags.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
from pathlib import Path
from typing import Any

from workbench.errors import ValidationError
from workbench.node import system

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"


def pin_dir(lab: str) -> Path:
    """/sys/fs/bpf/workbench/<lab>: the lab's pinned maps and programs."""
    return system.PIN_ROOT / lab


def compile_object(entry: str, lab: str, cflags: list[str] | None = None) -> Any:
    """Compile ``bpf/<entry>`` for ``lab``; its pinned maps are created or reopened.

    Example::

        >>> bpf = compile_object("maps_only.bpf.c", "demo")  # doctest: +SKIP
        >>> bpf["ipcache"]                                     # doctest: +SKIP
    """
    from bcc import BPF

    pins = pin_dir(lab)
    pins.mkdir(parents=True, exist_ok=True)
    flags = [f'-DPIN_DIR="{pins}"', f"-I{BPF_DIR}", *(cflags or [])]
    try:
        return BPF(src_file=str(BPF_DIR / entry).encode(), cflags=flags)
    except Exception as err:  # BCC raises a bare Exception with the compiler output on stderr
        raise ValidationError(f"compiling {entry} for lab {lab} failed: {err}") from err


def remove_pins(lab: str) -> None:
    """Unpin everything of the lab (maps live on while a program still uses them)."""
    shutil.rmtree(pin_dir(lab), ignore_errors=True)
    try:
        system.PIN_ROOT.rmdir()
    except OSError:
        pass


def ipv4_be(address: str) -> int:
    """An IPv4 address as the u32 the datapath stores (network byte order read natively)."""
    return int.from_bytes(ipaddress.IPv4Address(address).packed, "little")


def ipcache_set(bpf: Any, cidr: str, identity: int) -> None:
    """Map an IPv4 prefix to an identity in the lab's ipcache."""
    net = ipaddress.IPv4Network(cidr)
    table = bpf["ipcache"]
    key = table.Key(net.prefixlen, ipv4_be(str(net.network_address)))
    table[key] = table.Leaf(identity, 0)


def ipcache_delete(bpf: Any, cidr: str) -> None:
    net = ipaddress.IPv4Network(cidr)
    table = bpf["ipcache"]
    try:
        del table[table.Key(net.prefixlen, ipv4_be(str(net.network_address)))]
    except KeyError:
        pass


def ipcache_lookup(bpf: Any, address: str) -> int | None:
    """Longest-prefix lookup, as the datapath does it; None when nothing matches."""
    table = bpf["ipcache"]
    try:
        return int(table[table.Key(32, ipv4_be(address))].identity)
    except KeyError:
        return None


_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def inline_local_includes(path: Path, seen: set[Path] | None = None) -> str:
    """The text of ``path`` with its quoted ``#include "..."`` files pasted in, recursively.

    Why: BCC rewrites map calls (``map.lookup(&k)``) only in the main file it
    compiles, so logic headers in bpf/lib/ that touch maps must become part of
    that main file. ``#line`` markers keep compiler errors pointing at the real
    header and line. Each file is pasted once (include guards stay as well).
    """
    path = path.resolve()
    seen = set() if seen is None else seen
    if path in seen:
        return ""
    seen.add(path)
    out: list[str] = [f'#line 1 "{path}"']
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = _LOCAL_INCLUDE.match(line)
        if match:
            out.append(inline_local_includes(path.parent / match.group(1), seen))
            out.append(f'#line {number + 1} "{path}"')
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def compile_inlined(entry: str, lab: str, cflags: list[str] | None = None) -> Any:
    """Like :func:`compile_object`, for entry files whose bpf/lib headers use maps.

    Example::

        >>> bpf = compile_inlined("lxc.bpf.c", "demo", ["-DPOLICY_MAX=1024"])  # doctest: +SKIP
    """
    from bcc import BPF

    pins = pin_dir(lab)
    pins.mkdir(parents=True, exist_ok=True)
    flags = [f'-DPIN_DIR="{pins}"', f"-I{BPF_DIR}", *(cflags or [])]
    try:
        text = inline_local_includes(BPF_DIR / entry)
        return BPF(text=text.encode(), cflags=flags)
    except Exception as err:  # BCC raises a bare Exception with the compiler output on stderr
        raise ValidationError(f"compiling {entry} for lab {lab} failed: {err}") from err
