"""Users' own eBPF programs from `%%ebpf` cells: compile, attach, replace, list, detach.

One ProgramManager per process (``manager()``) is the registry of what this
kernel attached and its teardown: at exit it detaches everything not pinned.

Example::

    >>> from workbench.notebook.cellargs import parse_cell_line
    >>> prog = manager().load(parse_cell_line("xdp --dev veth0 --netns wb-demo"), '''
    ... BPF_ARRAY(counts, u64, 1);
    ... int count(struct xdp_md *ctx) {
    ...     int k = 0; u64 *v = counts.lookup(&k);
    ...     if (v) __sync_fetch_and_add(v, 1);
    ...     return XDP_PASS;
    ... }''')                                              # doctest: +SKIP
    >>> prog.maps["counts"].to_frame()                     # doctest: +SKIP
    >>> manager().detach("count")                          # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import html
import json
import shutil
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.errors import NotFoundError, PrivilegeError, ValidationError, WorkbenchError
from workbench.node import system
from workbench.notebook import attach as hooks
from workbench.notebook.cellargs import CellSpec
from workbench.notebook.cellsource import (
    CFunction,
    captured_fd2,
    choose_function,
    find_functions,
    first_error_line,
    rewrite_compiler_output,
    verifier_excerpt,
    verifier_reason,
)
from workbench.notebook.mapview import Maps, MapView

USER_PIN_DIR = system.PIN_ROOT / "user"
# What a pinned program's attachment is, so a later kernel can list, replace and detach it
# (bpffs holds only BPF objects, so the record lives under the run directory).
RECORDS_DIR = system.RUN_ROOT / "user-programs"
_ATTACHMENT_TYPES: dict[str, Any] = {"xdp": hooks.XdpAttachment, "tc": hooks.TcAttachment,
                                     "cgroup": hooks.CgroupAttachment}


class ProgramError(ValidationError):
    """A compile error or verifier rejection: ``str()`` is one line, ``details`` the diagnostics."""

    def __init__(self, message: str, details: str) -> None:
        super().__init__(message)
        self.details = details


@dataclass
class Target:
    """Where a program attaches: a device in a netns, a cgroup, or a tracepoint."""

    netns: str = ""
    dev: str = ""
    cgroup: str = ""
    tracepoint: str = ""


@dataclass
class Program:
    """A program this kernel attached from a cell. ``maps`` gives its maps as DataFrames."""

    name: str
    kind: str
    function: str
    target: str
    attached_at: datetime
    pinned: bool
    prog_id: int
    bpf: Any = field(repr=False)          # None for a pinned program adopted from an earlier kernel
    attachment: Any = field(repr=False)
    maps: Maps = field(repr=False)
    direction: str = ""

    @property
    def adopted(self) -> bool:
        """True when an earlier kernel attached and pinned it (its maps are under the pin directory)."""
        return self.bpf is None

    def close(self) -> None:
        """Release this process's fds (BCC module, maps); attachments the kernel holds stay."""
        if self.bpf is not None:
            self.bpf.cleanup()

    def detach(self) -> None:
        """Detach this program (same as `%ebpf detach NAME`)."""
        manager().detach(self.name)

    def _repr_html_(self) -> str:
        rows = [("name", self.name), ("type", self.kind + (f" {self.direction}" if self.direction else "")),
                ("function", self.function), ("target", self.target), ("prog id", str(self.prog_id)),
                ("attached at", self.attached_at.isoformat(timespec="seconds")),
                ("pinned", str(USER_PIN_DIR / self.name) if self.pinned else "no")]
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{html.escape(v)}</td></tr>"
                       for k, v in rows)
        map_rows = "".join(
            f"<tr><td>{html.escape(n)}</td><td>{html.escape(v.map_type)}</td><td>{_safe_len(v)}</td></tr>"
            for n, v in self.maps.items())
        maps = (f"<table><tr><th>map</th><th>type</th><th>entries</th></tr>{map_rows}</table>"
                if map_rows else f"<i>maps pinned at {USER_PIN_DIR / self.name}</i>" if self.adopted
                else "<i>no maps</i>")
        return f"<div><b>eBPF program {html.escape(self.name)}</b><table>{body}</table>{maps}</div>"

    def __repr__(self) -> str:
        return f"Program({self.name!r}, {self.kind}, target={self.target!r}, prog_id={self.prog_id})"


def _safe_len(view: MapView) -> str:
    try:
        return str(len(view))
    except Exception:
        return "?"


def resolve_pod_target(pod: str, lab: str | None = None, lxc: bool = False) -> tuple[str, str, str]:
    """(netns, device, cgroup path) of a lab pod: its eth0 in its netns, or with ``lxc`` the node-side device.

    Asks the lab's agent (``workbench.client.lab.Lab.connect``); NotFoundError when
    the lab is not up or has no such pod (the message lists its pods).

    Example::

        >>> resolve_pod_target("deathstar-0", lab="default")      # doctest: +SKIP
        ('wb-default-deathstar-0', 'eth0', '/sys/fs/cgroup/unified/wb/default/deathstar-0')
    """
    try:
        from workbench.client.lab import Lab
        from workbench.node.topology import node_netns
    except ImportError:
        raise NotFoundError(f"pod {pod!r}: no lab{f' {lab}' if lab else ''} on this node (start one with "
                            "`%ebpf lab up`), or attach with --dev D --netns NS") from None
    try:
        lab_obj = Lab.connect(lab) if lab else Lab.connect()
    except WorkbenchError as err:
        raise NotFoundError(f"pod {pod!r}: {err}") from None
    try:
        ep = lab_obj.call("endpoint.get", pod=pod)
    except WorkbenchError as err:
        raise NotFoundError(f"pod {pod!r} in lab {lab_obj.name}: {err}") from None
    cgroup = str(ep.get("cgroup") or "")
    if lxc:
        return node_netns(lab_obj.name), str(ep["lxc"]), cgroup
    return str(ep["netns"]), "eth0", cgroup


def _resolve_target(spec: CellSpec, fn: CFunction) -> Target:
    if spec.kind in ("tracepoint", "raw_tracepoint"):
        tp = spec.tracepoint or fn.tracepoint
        if not tp:
            example = "sock:inet_sock_set_state" if spec.kind == "tracepoint" else "sched_switch"
            raise ValidationError(f"%%ebpf {spec.kind}: name the event, e.g. `%%ebpf {spec.kind} {example}`")
        if fn.tracepoint and spec.tracepoint and fn.tracepoint != spec.tracepoint:
            raise ValidationError(f"%%ebpf {spec.kind}: the cell's {fn.name} is bound to {fn.tracepoint}, "
                                  f"not {spec.tracepoint}")
        return Target(tracepoint=tp)
    if spec.pod:
        netns, dev, cgroup = resolve_pod_target(spec.pod, spec.lab or None, lxc=spec.lxc)
        if spec.uses_cgroup:
            if not cgroup:
                raise NotFoundError(f"pod {spec.pod!r} has no cgroup")
            return Target(cgroup=cgroup)
        return Target(netns=netns, dev=dev)
    if spec.cgroup:
        return Target(cgroup=str(_checked_cgroup(spec.cgroup)))
    if not spec.netns:
        raise ValidationError(f"%%ebpf {spec.kind} --dev {spec.dev}: programs never attach in the machine's "
                              "own netns (lab safety); add --netns wb-... or use --pod")
    if not spec.netns.startswith(system.NETNS_PREFIX):
        raise ValidationError(f"--netns {spec.netns}: only workbench namespaces ({system.NETNS_PREFIX}*) "
                              "take user programs (lab safety)")
    hooks.run_in_netns(spec.netns, lambda: hooks.device_index(spec.dev, spec.netns))
    return Target(netns=spec.netns, dev=spec.dev)


def _checked_cgroup(path: str) -> Path:
    root = system.cgroup2_root()
    if root is None:
        raise ValidationError("no cgroup2 mount on this node")
    parent = root / system.CGROUP_PARENT
    full = Path(path) if path.startswith("/") else root / path
    full = full.resolve()
    if parent.resolve() not in full.parents:
        raise ValidationError(f"--cgroup {path}: only cgroups under {parent} take user programs (lab safety)")
    if not full.is_dir():
        raise NotFoundError(f"no cgroup {full}")
    return full


def _check_fits(spec: CellSpec, fn: CFunction) -> None:
    if fn.kinds and spec.kind not in fn.kinds:
        what = " or ".join(fn.kinds)
        raise ValidationError(f"%%ebpf {spec.kind}: function {fn.name} (cell line {fn.line}) is a {what} "
                              f"program by its context argument; it cannot attach as {spec.kind}")


def _compile(source: str, cflags: list[str]) -> Any:
    from bcc import BPF

    with captured_fd2() as out:
        try:
            return BPF(text=source.encode(), cflags=cflags)
        except Exception as err:
            failure: Exception = err
    text = out[0]
    message = str(failure)
    if "Failed to load BPF program" in message:   # an auto-attached probe macro was rejected
        raise ProgramError(f"verifier rejected the program: {verifier_reason(text)}",
                           verifier_excerpt(text, source)) from None
    if "Need super-user" in message:
        raise PrivilegeError("%%ebpf needs root or CAP_BPF+CAP_NET_ADMIN+CAP_SYS_ADMIN to load programs")
    line = first_error_line(text, source)
    diagnostics = rewrite_compiler_output(text, source) or message
    first = next((ln for ln in diagnostics.splitlines() if "error" in ln), diagnostics.splitlines()[0])
    where = f" at cell line {line}" if line else ""
    raise ProgramError(f"compile error{where}: {first.split('error: ', 1)[-1]}", diagnostics) from None


def _load(bpf: Any, fn: CFunction, kind: str, source: str) -> Any:
    if fn.name.encode() in bpf.funcs:        # BCC auto-loaded (and attached) a probe macro
        return bpf.funcs[fn.name.encode()]
    attach_type = hooks.ATTACH_INET4_CONNECT if kind == "connect4" else -1
    with captured_fd2() as out:
        try:
            return bpf.load_func(fn.name.encode(), hooks.PROG_TYPES[kind], attach_type=attach_type)
        except Exception as err:
            failure: Exception = err
    message = str(failure)
    if "Need super-user" in message:
        raise PrivilegeError("%%ebpf needs root or CAP_BPF+CAP_NET_ADMIN+CAP_SYS_ADMIN to load programs")
    if "Unknown program" in message:
        raise NotFoundError(f"BCC found no function {fn.name} in the compiled cell")
    raise ProgramError(f"verifier rejected {fn.name} as {kind}: {verifier_reason(out[0])}",
                       verifier_excerpt(out[0], source) or message) from None


def _map_views(bpf: Any, program: str) -> Maps:
    import ctypes as ct

    from bcc.libbcc import lib

    # libbcc.py declares no prototype for these two; without one ctypes would truncate the pointers.
    lib.bpf_num_tables.restype, lib.bpf_num_tables.argtypes = ct.c_size_t, [ct.c_void_p]
    lib.bpf_table_name.restype, lib.bpf_table_name.argtypes = ct.c_char_p, [ct.c_void_p, ct.c_size_t]
    views: dict[str, MapView] = {}
    for i in range(lib.bpf_num_tables(bpf.module)):
        name = lib.bpf_table_name(bpf.module, i).decode()
        try:
            views[name] = MapView(name, bpf.get_table(name.encode()), program=program)
        except Exception:   # a map type BCC cannot wrap (e.g. a queue): not viewable, not fatal
            continue
    return Maps(views)


def _pin(name: str, prog_fd: int, maps: Maps) -> None:
    from bcc.libbcc import lib

    where = USER_PIN_DIR / name
    where.mkdir(parents=True, exist_ok=True)
    if lib.bpf_obj_pin(prog_fd, str(where / "prog").encode()) != 0:
        raise ValidationError(f"pinning {name} under {where} failed")
    for map_name, view in maps.items():
        lib.bpf_obj_pin(view.table.map_fd, str(where / map_name).encode())


def _unpin(name: str) -> None:
    shutil.rmtree(USER_PIN_DIR / name, ignore_errors=True)
    for empty in (USER_PIN_DIR, system.PIN_ROOT):
        try:
            empty.rmdir()
        except OSError:
            break


def _save_record(program: Program) -> None:
    kind = "cgroup" if isinstance(program.attachment, hooks.CgroupAttachment) else program.kind
    record = {"name": program.name, "kind": program.kind, "function": program.function,
              "direction": program.direction, "attached_at": program.attached_at.isoformat(),
              "prog_id": program.prog_id, "attachment_type": kind, "attachment": asdict(program.attachment)}
    RECORDS_DIR.mkdir(parents=True, exist_ok=True)
    (RECORDS_DIR / f"{program.name}.json").write_text(json.dumps(record))


def _drop_record(name: str) -> None:
    (RECORDS_DIR / f"{name}.json").unlink(missing_ok=True)
    try:
        RECORDS_DIR.rmdir()
    except OSError:
        pass


def _load_records() -> dict[str, Program]:
    """Pinned programs with a record and their pins still present (stale records are dropped)."""
    found: dict[str, Program] = {}
    if not RECORDS_DIR.is_dir():
        return found
    for path in sorted(RECORDS_DIR.glob("*.json")):
        try:
            rec = json.loads(path.read_text())
            attachment = _ATTACHMENT_TYPES[rec["attachment_type"]](**rec["attachment"])
        except (ValueError, KeyError, TypeError):
            continue
        if not (USER_PIN_DIR / rec["name"] / "prog").exists():
            _drop_record(rec["name"])
            continue
        found[rec["name"]] = Program(
            name=rec["name"], kind=rec["kind"], function=rec["function"], target=attachment.target,
            attached_at=datetime.fromisoformat(rec["attached_at"]), pinned=True, prog_id=int(rec["prog_id"]),
            bpf=None, attachment=attachment, maps=Maps({}), direction=rec.get("direction", ""))
    return found


def _hook_of(att: Any) -> tuple[Any, ...]:
    if isinstance(att, hooks.XdpAttachment):
        return ("xdp", att.netns, att.dev)
    if isinstance(att, hooks.TcAttachment):
        return ("tc", att.netns, att.dev, att.direction)
    return ("other", id(att))


class ProgramManager:
    """The registry of programs this process attached; also their teardown at exit."""

    def __init__(self) -> None:
        self._programs: dict[str, Program] = {}
        self._lock = threading.RLock()
        self._atexit_registered = False

    def get(self, name: str) -> Program:
        self._adopt_pinned()
        try:
            return self._programs[name]
        except KeyError:
            raise NotFoundError(f"no program {name!r} attached by this kernel; attached: "
                                f"{', '.join(self._programs) or 'none'}") from None

    def names(self) -> list[str]:
        self._adopt_pinned()
        return list(self._programs)

    def _adopt_pinned(self) -> None:
        """Take over pinned programs an earlier kernel left attached, so they can be listed and detached."""
        with self._lock:
            for name, program in _load_records().items():
                if name not in self._programs:
                    self._programs[name] = program

    def load(self, spec: CellSpec, source: str) -> Program:
        """Compile ``source``, attach it per ``spec``, replacing the program of the same name.

        On any failure nothing new stays attached and the previous program
        (if any) keeps running.
        """
        system.require_privileges("%%ebpf")
        self._adopt_pinned()
        functions = find_functions(source)
        try:
            fn = choose_function(functions, spec.name)
        except LookupError as err:
            raise ValidationError(f"%%ebpf {spec.kind}: {err}") from None
        _check_fits(spec, fn)
        name = spec.name or fn.name
        target = _resolve_target(spec, fn)
        with self._lock:
            previous = self._programs.get(name)
            self._check_conflicts(name, spec, target)
            if previous is None and (USER_PIN_DIR / name).exists():
                raise ValidationError(f"pins of a program {name!r} exist at {USER_PIN_DIR / name} but no record of "
                                      "its attachment; choose another --name")
            bpf = _compile(source, spec.cflags)
            try:
                loaded = _load(bpf, fn, spec.kind, source)
                maps = _map_views(bpf, name)
                pid = hooks.prog_id(loaded.fd)
                # The attach is the last step that can fail: after it, only bookkeeping.
                attachment = self._attach(spec, name, loaded, bpf, target, previous)
            except BaseException:
                bpf.cleanup()
                raise
            program = Program(name=name, kind=spec.kind, function=fn.name, target=attachment.target,
                              attached_at=datetime.now(UTC), pinned=False, prog_id=pid,
                              bpf=bpf, attachment=attachment, maps=maps, direction=spec.direction)
            self._programs[name] = program
            self._register_atexit()
            if previous is not None:
                self._retire(previous, replaced_by=attachment)
            if spec.pin:
                _pin(name, loaded.fd, maps)
                program.pinned = True
                _save_record(program)
            return program

    def _check_conflicts(self, name: str, spec: CellSpec, target: Target) -> None:
        if spec.kind != "xdp":
            return
        previous = self._programs.get(name)
        att = previous.attachment if previous is not None else None
        if isinstance(att, hooks.XdpAttachment) and (att.netns, att.dev) == (target.netns, target.dev) \
                and att.mode != spec.mode:
            # The kernel allows one XDP mode per device, so this could not be a swap without a gap.
            raise ValidationError(f"{name} runs on {target.dev} in {att.mode} mode; re-run with --mode {att.mode}, "
                                  f"or `%ebpf detach {name}` first to change the mode")
        for other in self._programs.values():
            att = other.attachment
            if other.name != name and isinstance(att, hooks.XdpAttachment) and (att.netns, att.dev) == (
                    target.netns, target.dev):
                raise ValidationError(f"{target.dev} in {target.netns} already runs XDP program {other.name!r}; "
                                      f"re-run with --name {other.name} to replace it, or `%ebpf detach {other.name}`")

    def _attach(self, spec: CellSpec, name: str, fn: Any, bpf: Any, target: Target,
                previous: Program | None) -> Any:
        prev_att = previous.attachment if previous is not None else None
        if spec.kind == "xdp":
            prev = prev_att if isinstance(prev_att, hooks.XdpAttachment) else None
            return hooks.attach_xdp(fn, target.netns, target.dev, spec.mode, prev)
        if spec.kind == "tc":
            prev_tc = prev_att if isinstance(prev_att, hooks.TcAttachment) else None
            return hooks.attach_tc(fn, name, target.netns, target.dev, spec.direction, prev_tc)
        if spec.kind in ("cgroup_skb", "connect4"):
            return hooks.attach_cgroup(fn, spec.kind, target.cgroup, spec.direction, None)
        return hooks.attach_trace(bpf, fn.name.decode(), spec.kind, target.tracepoint)

    def _retire(self, old: Program, replaced_by: Any) -> None:
        """After a replacement: detach the old attachment unless the kernel swapped it in place."""
        swapped = _hook_of(old.attachment) == _hook_of(replaced_by) and not isinstance(
            old.attachment, hooks.TraceAttachment)
        if not swapped:
            old.attachment.detach()
        if old.pinned:
            _unpin(old.name)
            _drop_record(old.name)
        old.close()

    def detach(self, name: str) -> None:
        """Detach the named program and drop its pins; NotFoundError lists what is attached."""
        with self._lock:
            program = self.get(name)
            program.attachment.detach()
            if program.pinned:
                _unpin(name)
                _drop_record(name)
            program.close()
            del self._programs[name]

    def detach_all(self, include_pinned: bool = True) -> list[str]:
        """Detach every program (pinned ones too unless ``include_pinned`` is False); returns their names."""
        done: list[str] = []
        self._adopt_pinned()
        with self._lock:
            for name, program in list(self._programs.items()):
                if program.pinned and not include_pinned:
                    program.close()              # the kernel keeps the attachment, the pins keep the objects
                    del self._programs[name]
                    continue
                try:
                    self.detach(name)
                    done.append(name)
                except Exception:
                    continue   # teardown goes on for the others
        return done

    def shutdown(self) -> None:
        """Kernel exit: detach everything not pinned."""
        self.detach_all(include_pinned=False)

    def _register_atexit(self) -> None:
        if not self._atexit_registered:
            atexit.register(self.shutdown)
            self._atexit_registered = True

    def frame(self) -> pd.DataFrame:
        """What this kernel attached (and pinned programs of earlier kernels): name, type, target, function,
        attached_at, pinned, prog_id."""
        self._adopt_pinned()
        rows = [{"name": p.name, "type": p.kind + (f" {p.direction}" if p.direction else ""), "target": p.target,
                 "function": p.function, "attached_at": pd.Timestamp(p.attached_at), "pinned": p.pinned,
                 "prog_id": p.prog_id} for p in self._programs.values()]
        columns = ["name", "type", "target", "function", "attached_at", "pinned", "prog_id"]
        return pd.DataFrame(rows, columns=columns)


_MANAGER: ProgramManager | None = None
_MANAGER_LOCK = threading.Lock()


def manager() -> ProgramManager:
    """The process-wide registry (created on first use, never at import)."""
    global _MANAGER
    with _MANAGER_LOCK:
        if _MANAGER is None:
            _MANAGER = ProgramManager()
        return _MANAGER
