"""Live, record and replay modes of this process's lab client.

- **live** (default): every call goes to a real agent.
- **record** (``WORKBENCH_RECORD=<dir>``, used by ``make record``): calls go to the real agent and
  every answer is also written to the recording (:class:`~workbench.replay.recording.RecordingWriter`),
  per tutorial (:func:`tutorial` names it).
- **replay**: nothing touches a kernel. ``WORKBENCH_REPLAY=1``, :meth:`workbench.Lab.replay`, or
  ``Lab.up()`` on a machine where eBPF is unavailable switch to it. Answers come from the recording:

  * a call the recorded tutorial made at this point gets the answer it got then (the tutorial's own
    sequence: its assertions hold as they held on the lab node);
  * any other call of a recorded method gets the nearest recorded answer with the same parameters;
    flows with filters nobody recorded are filtered here, from the recorded flows, with the same
    filter code the agent uses;
  * what needs a kernel and was not recorded fails with one line:
    ``replay mode: needs a lab node (root + eBPF)``.

  ``exec`` replays the recorded output of a tutorial's own commands at the point the tutorial ran
  them; any other command fails with that line. Applying a policy switches to the point of the
  recording where the same policy was applied, and says so.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from workbench.errors import WorkbenchError
from workbench.replay.recording import LAB_PLACEHOLDER, Recording, RecordingWriter, scrub, unscrub

REPLAY_ENV = "WORKBENCH_REPLAY"
RECORD_ENV = "WORKBENCH_RECORD"
TUTORIAL_ENV = "WORKBENCH_TUTORIAL"
NEEDS_A_NODE = "replay mode: needs a lab node (root + eBPF)"
# Flow filters whose values are this run's own clock readings: a replayed query is matched without them.
RUN_DEPENDENT_FILTERS = frozenset({"since", "until"})
MAX_BACKGROUND_SECONDS = 120.0   # the longest a replayed background command waits (its recorded duration)


class ReplayModeError(WorkbenchError):
    """What cannot be served from the recording."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{NEEDS_A_NODE}: {what}")


@dataclass
class Replayer:
    """Serves one process's replayed labs from a recording."""

    recording: Recording
    tutorial: str | None = None
    cursor: int = 0               # position in the tutorial's entries
    taken: set[int] = field(default_factory=set)   # entries served out of order (a background thread's)
    notes: list[str] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)
    _metrics_server: Any = None

    @property
    def entries(self) -> list[dict[str, Any]]:
        if self.tutorial and self.tutorial in self.recording.tutorials:
            return self.recording.tutorials[self.tutorial]
        return []

    def use_tutorial(self, name: str | None) -> None:
        with self.lock:
            self.tutorial = name if name in self.recording.tutorials else None
            self.cursor = 0
            self.taken = set()

    # -- matching ------------------------------------------------------------------------
    def _next(self, kind: str, key: dict[str, Any], *, advance: bool = True) -> dict[str, Any] | None:
        """The tutorial's next entry of ``kind`` from the cursor on; taken when its key matches.

        Entries of other kinds in between are skipped (a view the replay did not ask for, e.g. a
        poll that ended sooner); an entry of the same kind with another key ends the search only
        when no later entry of that kind matches within a short window. ``advance=False`` takes the
        entry out of order: the cursor stays, the entry is not served again.
        """
        entries = self.entries
        window = 400
        for i in range(self.cursor, min(len(entries), self.cursor + window)):
            entry = entries[i]
            if i in self.taken:
                continue
            if entry.get("kind") == kind and all(entry.get(k) == v for k, v in key.items()):
                if advance:
                    self.cursor = i + 1
                else:
                    self.taken.add(i)
                return entry
        return None

    def _anywhere(self, kind: str, key: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """The latest matching entry in the whole recording (views outside a tutorial's sequence)."""
        found = None
        for tutorial, entry in self.recording.entries():
            if entry.get("kind") == kind and all(entry.get(k) == v for k, v in key.items()):
                found = (tutorial, entry)
        return found

    def view(self, kind: str, key: dict[str, Any], what: str, *,
             in_sequence: bool = True) -> tuple[dict[str, Any], bytes | None]:
        """A recorded kernel-side view (``program``, ``map``, ``programs``, ...) and its payload.

        The tutorial's next entry of ``kind`` with ``key`` from the cursor, else the latest such entry in
        the recording (``in_sequence=False``: only that, the cursor stays); ReplayModeError naming
        ``what`` when nothing was recorded.
        """
        with self.lock:
            entry = self._next(kind, key) if in_sequence else None
            if entry is None:
                found = self._anywhere(kind, key)
                entry = found[1] if found else None
        if entry is None:
            raise ReplayModeError(what)
        return entry, self.recording.payload(entry["payload"]) if entry.get("payload") else None

    # -- answers ---------------------------------------------------------------------------
    def call(self, lab: str, method: str, params: dict[str, Any]) -> tuple[Any, bytes | None]:
        from workbench.replay.fallbacks import computed_answer

        key_params = scrub(params, lab)
        with self.lock:
            entry = self._next("call", {"method": method, "params": key_params})
            if entry is None and method == "flows.query":
                entry = self._next_flows(key_params)
            if entry is None and method == "flows.export":   # the path is this run's own
                entry = self._next("call", {"method": method}) if self.entries else None
                if entry is None:
                    found = self._anywhere("call", {"method": method})
                    entry = found[1] if found else None
            if entry is None and method == "policy.apply" and not params.get("dry_run"):
                entry = self._switch_to_apply(key_params)
            if entry is None:
                found = self._anywhere("call", {"method": method, "params": key_params})
                entry = found[1] if found else None
            if entry is None:
                computed = computed_answer(self, lab, method, params)
                if computed is not None:
                    return computed
                raise ReplayModeError(f"{method} was not recorded")
        return self._answer(entry, lab, params)

    def _next_flows(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """A flow query whose filters hold times or sequence numbers of this run: the tutorial's next one
        with the same filter names (the recorded run asked the same question at this point)."""
        def fixed(filters: dict[str, Any]) -> dict[str, Any]:
            """The filters without the ones that hold this run's own times (their names must still agree)."""
            return {k: (None if k in RUN_DEPENDENT_FILTERS else v) for k, v in (filters or {}).items()}

        wanted = fixed(params.get("filters") or {})
        entries = self.entries
        for i in range(self.cursor, min(len(entries), self.cursor + 400)):
            entry = entries[i]
            if entry.get("kind") == "call" and entry.get("method") == "flows.query" and \
                    fixed(entry["params"].get("filters") or {}) == wanted and \
                    (entry["params"].get("after") is None) == (params.get("after") is None):
                self.cursor = i + 1
                return entry
        return None

    def _switch_to_apply(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """A policy apply that the tutorial did not make here: the recording's point where the same policy
        was applied, if there is one (the replay goes on from there)."""
        for tutorial, entries in self.recording.tutorials.items():
            for i, entry in enumerate(entries):
                if entry.get("kind") == "call" and entry.get("method") == "policy.apply" and \
                        entry["params"].get("text") == params.get("text") and not entry["params"].get("dry_run"):
                    self.tutorial, self.cursor = tutorial, i + 1
                    message = (f"replay mode: switched to the recorded stage where this policy was applied "
                               f"(tutorial {tutorial})")
                    self.notes.append(message)
                    warnings.warn(message, UserWarning, stacklevel=4)
                    return entry
        raise ReplayModeError("applying a policy that was not recorded (a dry run works: --dry-run)")

    def _answer(self, entry: dict[str, Any], lab: str, params: dict[str, Any]) -> tuple[Any, bytes | None]:
        error = entry.get("error")
        if error:
            from workbench import errors

            error_type = getattr(errors, str(error.get("type")), WorkbenchError)
            if not (isinstance(error_type, type) and issubclass(error_type, WorkbenchError)):
                error_type = WorkbenchError
            raise error_type(unscrub(str(error.get("message")), lab))
        payload = self.recording.payload(entry["payload"]) if entry.get("payload") else None
        result = unscrub(entry.get("result"), lab)
        if entry.get("method") == "flows.export":
            return _write_export(str(params.get("path")), payload), None
        return result, payload

    def exec(self, lab: str, pod: str, command: list[str]) -> dict[str, Any]:
        """A command's recorded outcome. One run from a thread of the notebook (in the background, e.g. a
        flood while other cells run) is taken out of order and lasts as long as it did on the lab node:
        the cells running meanwhile keep the tutorial's sequence and see the command still running."""
        background = threading.current_thread() is not threading.main_thread()
        with self.lock:
            entry = self._next("exec", {"pod": pod, "command": scrub(command, lab)}, advance=not background)
        if entry is None:
            raise ReplayModeError(f"exec {pod} -- {' '.join(command)}")
        if background:
            time.sleep(min(float(entry.get("seconds") or 0.0), MAX_BACKGROUND_SECONDS))
        return unscrub(entry, lab)

    def cli(self, lab: str, argv: list[str]) -> dict[str, Any]:
        with self.lock:
            entry = self._next("cli", {"argv": scrub(argv, lab)})
            if entry is None:
                found = self._anywhere("cli", {"argv": scrub(argv, lab)})
                entry = found[1] if found else None
        if entry is None:
            raise ReplayModeError(f"`{' '.join(argv)}` was not recorded")
        return unscrub(entry, lab)

    def metrics_url(self, lab: str) -> str:
        """A /metrics endpoint on 127.0.0.1 serving the recorded exposition (as the agent serves its own)."""
        with self.lock:
            if self._metrics_server is None:
                self._metrics_server = _serve_metrics(lambda: str(self.call(lab, "metrics.text", {})[0]))
            host, port = self._metrics_server.server_address[:2]
        return f"http://{host}:{port}/metrics"

    @staticmethod
    def missing(what: str) -> ReplayModeError:
        return ReplayModeError(f"{what} was not recorded")

    def lifecycle(self, lab: str, kind: str) -> dict[str, Any]:
        with self.lock:
            entry = self._next(kind, {})
            if entry is None:
                found = self._anywhere(kind, {})
                entry = found[1] if found else {"kind": kind, "result": {}}
        return unscrub(entry, lab)


def _serve_metrics(exposition: Any) -> Any:
    """A daemon HTTP server on 127.0.0.1 (any free port) answering GET /metrics with ``exposition()``."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = exposition().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, name="replay-metrics", daemon=True).start()
    return server


def _write_export(path: str, payload: bytes | None) -> dict[str, Any]:
    """Write the recorded export (its flows) where this run asked for it, as the agent would have."""
    if payload is None:
        raise ReplayModeError("this export's flows were not recorded")
    from workbench.observe.archive import export_parquet
    from workbench.observe.ipc import from_ipc

    frame = from_ipc(payload)
    export_parquet(frame, path)
    return {"path": path, "rows": len(frame)}


@dataclass
class Session:
    """The mode of this process (see the module docstring)."""

    mode: str = "live"
    replayer: Replayer | None = None
    writer: RecordingWriter | None = None
    tutorial: str | None = None

    @property
    def replaying(self) -> bool:
        return self.mode == "replay"

    def record(self, entry: dict[str, Any], lab: str, payload: bytes | None = None) -> None:
        if self.writer is not None:
            self.writer.add(entry, lab, payload)


_session: Session | None = None
_session_lock = threading.Lock()


def session() -> Session:
    """This process's session, set up from the environment on first use."""
    global _session
    with _session_lock:
        if _session is None:
            _session = Session()
            tutorial = os.environ.get(TUTORIAL_ENV) or None
            if os.environ.get(RECORD_ENV):
                _start_recording(_session, tutorial or "session")
            elif os.environ.get(REPLAY_ENV, "") not in ("", "0"):
                _start_replay(_session, tutorial)
        return _session


def _start_recording(s: Session, tutorial: str) -> None:
    from pathlib import Path

    s.mode, s.tutorial = "record", tutorial
    s.writer = RecordingWriter(Path(os.environ[RECORD_ENV]), tutorial)


def _start_replay(s: Session, tutorial: str | None, directory: str | None = None) -> None:
    value = os.environ.get(REPLAY_ENV, "")
    path = directory or (value if value not in ("", "0", "1") else None)
    s.mode, s.tutorial = "replay", tutorial
    s.replayer = Replayer(Recording.load(path), tutorial)
    s.replayer.use_tutorial(tutorial)
    # the CLI run from a replaying notebook (terminal()) replays too
    os.environ[REPLAY_ENV] = path or "1"


def start_replay(tutorial: str | None = None) -> Session:
    """Switch this process to replay mode (idempotent); ``tutorial`` picks the recorded sequence."""
    s = session()
    if not s.replaying:
        _start_replay(s, tutorial)
    elif tutorial is not None and s.replayer is not None and s.tutorial != tutorial:
        s.tutorial = tutorial
        s.replayer.use_tutorial(tutorial)
    return s


def tutorial(name: str) -> Session:
    """Name the tutorial this notebook is (its first cell calls it).

    Live: nothing changes. Record: the recording of this run is filed under ``name``. Replay: the
    recorded sequence of ``name`` is served. Without a lab node (no root or no eBPF), this switches
    to replay mode and shows the banner.

    Example::

        wb.tutorial("02-observe")
    """
    os.environ[TUTORIAL_ENV] = name
    s = session()
    if s.mode == "record" and s.tutorial != name:
        _start_recording(s, name)
    elif s.replaying and s.replayer is not None:
        s.tutorial = name
        s.replayer.use_tutorial(name)
    elif s.mode == "live" and not lab_node_available():
        start_replay(name)
    if s.replaying:
        show_banner()
    return s


def lab_node_available() -> bool:
    """Could this process run a lab, privilege-wise (root or the capabilities eBPF needs)?

    Only missing privileges count: on a machine where root lacks a setup step (bpffs, headers) the
    lab commands name the fix instead of quietly replaying a recording.
    """
    from workbench.node import system

    try:
        system.require_privileges("a lab")
    except WorkbenchError:
        return False
    return True


def banner() -> str:
    s = session()
    return s.replayer.recording.banner if s.replayer else ""


def show_banner() -> None:
    """The replay banner, as HTML in a notebook and as a line elsewhere."""
    text = banner()
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display

        if get_ipython() is not None:
            display(HTML(f"<div style='padding:6px 10px;border-left:4px solid #d97706;background:#fff7ed'>"
                         f"<b>{text}</b>: what you see was recorded on a real lab node; what needs a kernel "
                         f"says so.</div>"))
            return
    except ImportError:
        pass
    print(text)


__all__ = ["LAB_PLACEHOLDER", "NEEDS_A_NODE", "ReplayModeError", "Replayer", "Session", "banner", "session",
           "start_replay", "tutorial"]
