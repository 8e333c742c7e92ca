"""Parsing the `%%ebpf` cell line: program type, target and options.

Pure code (no kernel access), so every user mistake here becomes one line
before anything is compiled or attached.

Example::

    >>> spec = parse_cell_line("tc --direction egress --dev veth0 --netns wb-demo -D PORT=80")
    >>> spec.kind, spec.direction, spec.cflags
    ('tc', 'egress', ['-DPORT=80'])
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, NoReturn

from workbench.errors import ValidationError

# Program types the cell magic attaches, and what each one needs as target.
NET_DEVICE_KINDS = ("xdp", "tc")
CGROUP_KINDS = ("cgroup_skb", "connect4")
TRACE_KINDS = ("tracepoint", "raw_tracepoint")
KINDS = NET_DEVICE_KINDS + CGROUP_KINDS + TRACE_KINDS
# `%%ebpf cgroup ...` (as the tutorials write it) means the skb hook.
ALIASES = {"cgroup": "cgroup_skb"}

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRACEPOINT = re.compile(r"^[A-Za-z0-9_]+:[A-Za-z0-9_]+$")


@dataclass
class CellSpec:
    """What the cell line asks for (the C source is separate)."""

    kind: str
    tracepoint: str = ""          # CATEGORY:EVENT for tracepoint, EVENT for raw_tracepoint
    direction: str = ""           # ingress | egress for tc and cgroup_skb
    mode: str = "skb"             # xdp attach mode: skb | native
    dev: str = ""
    netns: str = ""
    pod: str = ""
    lab: str = ""
    lxc: bool = False
    cgroup: str = ""
    name: str = ""
    cflags: list[str] = field(default_factory=list)
    pin: bool = False

    @property
    def uses_cgroup(self) -> bool:
        return self.kind in CGROUP_KINDS

    @property
    def uses_device(self) -> bool:
        return self.kind in NET_DEVICE_KINDS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ValidationError(f"%%ebpf: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        # --help would end the kernel's process otherwise.
        raise ValidationError(f"%%ebpf: {message or self.format_usage().strip()}")


def _parser() -> _Parser:
    p = _Parser(prog="%%ebpf", add_help=False,
                usage="%%ebpf {" + ",".join(KINDS) + "} [TRACEPOINT] (--dev D [--netns NS] | --pod P [--lxc]"
                      " | --cgroup PATH) [--direction ingress|egress] [--mode skb|native] [--name N]"
                      " [-D NAME=VALUE]... [--pin]")
    p.add_argument("kind", choices=KINDS + tuple(ALIASES))
    p.add_argument("tracepoint", nargs="?", default="")
    p.add_argument("--direction", choices=("ingress", "egress"))
    p.add_argument("--mode", choices=("skb", "native"))
    p.add_argument("--dev")
    p.add_argument("--netns")
    p.add_argument("--pod")
    p.add_argument("--lab")
    p.add_argument("--lxc", action="store_true")
    p.add_argument("--cgroup")
    p.add_argument("--name")
    p.add_argument("-D", dest="defines", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--pin", action="store_true")
    return p


def parse_cell_line(line: str) -> CellSpec:
    """Parse and check the options of a `%%ebpf` cell; raises ValidationError with one line."""
    try:
        argv = shlex.split(line)
    except ValueError as err:
        raise ValidationError(f"%%ebpf: cannot parse the options: {err}") from None
    if not argv:
        raise ValidationError(f"%%ebpf: give the program type, one of {', '.join(KINDS)}")
    ns: Any = _parser().parse_args(argv)
    spec = CellSpec(kind=ALIASES.get(ns.kind, ns.kind), tracepoint=ns.tracepoint or "", direction=ns.direction or "",
                    mode=ns.mode or "skb", dev=ns.dev or "", netns=ns.netns or "", pod=ns.pod or "",
                    lab=ns.lab or "", lxc=ns.lxc, cgroup=ns.cgroup or "", name=ns.name or "",
                    cflags=[_cflag(d) for d in ns.defines], pin=ns.pin)
    _check(spec, ns)
    return spec


def _cflag(define: str) -> str:
    name, _, _ = define.partition("=")
    if not _IDENT.match(name):
        raise ValidationError(f"%%ebpf: -D {define}: expected NAME=VALUE with NAME a C identifier")
    return f"-D{define}"


def _fail(message: str) -> NoReturn:
    raise ValidationError(f"%%ebpf {message}")


def _check(spec: CellSpec, ns: Any) -> None:
    kind = spec.kind
    if spec.tracepoint and kind not in TRACE_KINDS:
        _fail(f"{kind}: unexpected argument {spec.tracepoint!r}")
    if kind == "tracepoint" and spec.tracepoint and not _TRACEPOINT.match(spec.tracepoint):
        _fail(f"tracepoint: {spec.tracepoint!r} is not CATEGORY:EVENT (e.g. sock:inet_sock_set_state)")
    if kind == "raw_tracepoint" and spec.tracepoint and not _IDENT.match(spec.tracepoint):
        _fail(f"raw_tracepoint: {spec.tracepoint!r} is not an event name (e.g. sched_switch)")
    if ns.mode and kind != "xdp":
        _fail(f"{kind}: --mode applies to xdp only")
    if kind in ("tc", "cgroup_skb") and not spec.direction:
        _fail(f"{kind}: needs --direction ingress|egress")
    if spec.direction and kind not in ("tc", "cgroup_skb"):
        _fail(f"{kind}: --direction applies to tc and cgroup_skb only")
    if spec.name and not _IDENT.match(spec.name):
        _fail(f"--name {spec.name!r}: use letters, digits and _ (it names the pin and the listing)")

    targets = [t for t, given in (("--dev", spec.dev), ("--pod", spec.pod), ("--cgroup", spec.cgroup)) if given]
    if kind in TRACE_KINDS:
        if targets or spec.netns or spec.lxc:
            _fail(f"{kind}: takes no target (tracepoints are node-wide); drop {' '.join(targets) or '--netns/--lxc'}")
        if spec.pin:
            _fail(f"{kind}: --pin keeps xdp, tc and cgroup programs attached; a tracepoint ends with its kernel")
        return
    if len(targets) != 1:
        wanted = "--dev D [--netns NS] or --pod P" + (" or --cgroup PATH" if spec.uses_cgroup else "")
        _fail(f"{kind}: give exactly one target: {wanted}" + (f" (got {', '.join(targets)})" if targets else ""))
    if spec.cgroup and not spec.uses_cgroup:
        _fail(f"{kind}: --cgroup applies to cgroup_skb and connect4")
    if spec.dev and spec.uses_cgroup:
        _fail(f"{kind}: attaches to a cgroup; use --cgroup PATH or --pod P, not --dev")
    if spec.netns and not spec.dev:
        _fail("--netns goes with --dev")
    if spec.lxc and not (spec.pod and spec.uses_device):
        _fail("--lxc goes with --pod for xdp and tc (the pod's node-side device)")
    if spec.lab and not spec.pod:
        _fail("--lab goes with --pod")
