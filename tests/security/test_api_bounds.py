"""The agent's local API is bounded and private: modes, peer credentials, request sizes, idle and many clients.

Findings behind it: under ``umask 0000`` user nobody could call the API
(export a root-owned world-writable file, shut the agent down); a 200 MiB line
was buffered; idle clients were never timed out; 17 of 60 concurrent clients
were refused by a listen backlog of 5; ``flows.export`` created directories and
``metrics.serve`` took port -1.

The lab of this module is started by ``workbench lab up`` under umask 0000.
The last test fuzzes the API itself (hypothesis): random method names and
random JSON parameters get one-line errors, the agent stays up and the
enforced policy map does not change.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

import workbench as wb
from workbench.agent import api
from workbench.errors import ValidationError
from workbench.node import state

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


@pytest.fixture(scope="module")
def lab():
    name = f"b{uuid.uuid4().hex[:6]}"
    # lab up under umask 0000: every mode must be set explicitly, not inherited
    run = subprocess.run([sys.executable, "-m", "workbench", "lab", "up", "--lab", name], capture_output=True,
                         text=True, timeout=180, preexec_fn=lambda: os.umask(0))
    assert run.returncode == 0, run.stderr
    lab = wb.Lab.connect(name)
    try:
        yield lab
    finally:
        lab.down()


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def raw_call(path, payload: bytes, timeout: float = 30.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data.split(b"\n")[0])


def test_modes_are_explicit_under_umask_0000(lab):
    lab.policy.apply(wb.example("rule1.yaml"))
    directory = state.state_dir(lab.name)
    assert mode(directory) == 0o700
    assert mode(state.socket_path(lab.name)) in (0o600, 0o660)
    for name in ("config.json", "state.json", "identities.json", "policies.json"):
        assert mode(directory / name) == 0o600, name
    # nothing under the state dir is open to others, whatever it is (logs, pid, archive state)
    for path in [directory, *directory.rglob("*")]:
        assert mode(path) & 0o007 == 0, (path, oct(mode(path)))
        if path.is_file():
            assert mode(path) & 0o077 == 0, (path, oct(mode(path)))


def test_nobody_cannot_reach_or_stop_the_agent(lab):
    run = subprocess.run([*NOBODY, sys.executable, "-m", "workbench", "endpoint", "list", "--lab", lab.name],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and "root" in run.stderr
    # Even with the directory and socket opened up, the agent checks who calls (SO_PEERCRED).
    directory, sock = state.state_dir(lab.name), state.socket_path(lab.name)
    old_dir, old_sock = mode(directory), mode(sock)
    os.chmod(directory, 0o711)
    os.chmod(sock, 0o666)
    try:
        # The agent answers before reading the request and closes: the send may find the socket closed.
        client = textwrap.dedent('''
            import socket, sys
            s = socket.socket(socket.AF_UNIX)
            s.connect(sys.argv[1])
            try:
                s.sendall(b'{"method": "agent.shutdown"}\\n')
            except BrokenPipeError:
                pass
            print(s.recv(4096).decode())
        ''')
        run = subprocess.run([*NOBODY, sys.executable, "-I", "-c", client, str(sock)], capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        reply = json.loads(run.stdout)
        assert reply["ok"] is False and reply["type"] == "PrivilegeError"
    finally:
        os.chmod(directory, old_dir)
        os.chmod(sock, old_sock)
    assert lab.call("agent.ping")["lab"] == lab.name          # still serving


def test_oversized_requests_are_refused_in_one_line(lab):
    reply = raw_call(state.socket_path(lab.name), b"x" * (api.MAX_REQUEST_BYTES + 10) + b"\n")
    assert reply == {"ok": False, "type": "ValidationError",
                     "error": f"request longer than {api.MAX_REQUEST_BYTES} bytes"}
    assert lab.call("agent.ping")["lab"] == lab.name


def test_idle_clients_are_dropped_and_do_not_starve_others(lab):
    path = str(state.socket_path(lab.name))
    idle = []
    try:
        for _ in range(api.MAX_CLIENTS + 50):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(path)
            idle.append(conn)
        started = time.monotonic()
        assert lab.call("agent.ping")["lab"] == lab.name        # waits for a slot, never refused
        assert time.monotonic() - started < api.REQUEST_DEADLINE + api.BUSY_WAIT
        idle[0].settimeout(api.REQUEST_DEADLINE + 5)
        assert idle[0].recv(1) == b""                          # the agent closed the idle connection
    finally:
        for conn in idle:
            conn.close()
    threads = int(next(line.split()[1] for line in open(f"/proc/{lab.status()['agent_pid']}/status")
                       if line.startswith("Threads:")))
    assert threads < api.MAX_CLIENTS + 64


def test_two_hundred_concurrent_clients_are_all_answered(lab):
    results: list[object] = []

    def ping() -> None:
        try:
            results.append(lab.call("agent.ping")["lab"])
        except Exception as err:   # collected: the assertion below names it
            results.append(err)

    threads = [threading.Thread(target=ping) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [lab.name] * 200


@pytest.mark.parametrize("method, params, message", [
    ("flows.export", {"path": "relative.parquet"}, "must be absolute"),
    ("flows.export", {"path": "/nonexistent-wb-dir/x/flows.parquet"}, "does not exist"),
    ("flows.archive", {"directory": "relative-dir"}, "must be absolute"),
    ("metrics.serve", {"port": -1}, "not in 0-65535"),
    ("metrics.serve", {"port": 70000}, "not in 0-65535"),
])
def test_paths_and_ports_are_checked_at_the_boundary(lab, method, params, message):
    with pytest.raises(ValidationError, match=message):
        lab.call(method, **params)
    assert not os.path.exists("/nonexistent-wb-dir")


# ----- fuzzing the API (hypothesis) ---------------------------------------------------------------

READ_ONLY = ["agent.ping", "agent.methods", "lab.status", "endpoint.list", "endpoint.get", "service.list",
             "identity.list", "lb.list", "policy.get", "policy.explain", "bpf.policy.get", "datapath.metrics",
             "flows.query", "flows.status", "metrics.text", "l7.status", "connectivity.expect"]
PARAM_NAMES = ["text", "source", "dry_run", "audit", "names", "all", "pod", "direction", "on", "op", "peer",
               "protocol", "port", "end_port", "filters", "after", "path", "directory", "probes", "lab"]


def json_values():
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**200), max_value=2**200),
                        st.floats(allow_nan=False), st.text(max_size=40),
                        st.sampled_from(["", "xwing", "ingress", "TCP", "-1", "\n", "\u2028", "é" * 50, "{}"]))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=10) | st.sampled_from(PARAM_NAMES), inner, max_size=4),
                        max_leaves=15)


def fuzz_requests():
    """(method, params) pairs that no valid call can come out of for the methods that change things."""
    from hypothesis import strategies as st

    junk = json_values()
    not_bool = junk.filter(lambda v: not isinstance(v, bool))
    params = st.dictionaries(st.sampled_from(PARAM_NAMES) | st.text(max_size=10), junk, max_size=4)
    return st.one_of(
        st.tuples(st.sampled_from(READ_ONLY) | st.text(max_size=30) | st.from_regex(r"[a-z]{1,8}\.[a-z.]{1,12}",
                                                                                  fullmatch=True), params),
        st.tuples(st.just("policy.apply"), st.fixed_dictionaries({"text": st.text(max_size=300) | junk},
                                                                 optional={"dry_run": junk, "source": junk})),
        st.tuples(st.just("policy.delete"),
                  st.fixed_dictionaries({}, optional={"names": st.lists(st.text(max_size=12)) | junk,
                                                      "all": not_bool})),
        st.tuples(st.just("policy.audit"), st.fixed_dictionaries({"on": not_bool}, optional={"pod": junk})),
        st.tuples(st.just("policy.map.edit"), params),
        st.tuples(st.sampled_from(READ_ONLY) | st.just("policy.apply"), junk),        # params not an object
    )


def exchange(path, line: bytes) -> bytes:
    """One request line; the whole reply (the agent closes the connection after it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(path))
        sock.sendall(line)
        data = b""
        while chunk := sock.recv(1 << 20):
            data += chunk
    return data


def error_types() -> set[str]:
    from workbench import errors

    found, todo = set(), [errors.WorkbenchError]
    while todo:
        cls = todo.pop()
        found.add(cls.__name__)
        todo += cls.__subclasses__()
    return found


def policy_map(lab) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("packets", "bytes")} for row in lab.call("bpf.policy.get")]


def test_random_methods_and_parameters_get_one_line_errors_and_change_nothing(lab):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    lab.policy.delete(all=True)
    lab.policy.apply(wb.example("rule1.yaml"))
    path = state.socket_path(lab.name)
    log = state.state_dir(lab.name) / "agent.log"
    log_before = log.read_text(errors="replace").count("Traceback") if log.exists() else 0
    map_before, policies_before = policy_map(lab), lab.call("policy.get")
    assert map_before, "rule1 is applied: the map has entries to compare"
    known = error_types()
    seen = {"ok": 0, "errors": 0}

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(request=fuzz_requests(), raw=st.booleans(), garbage=st.binary(max_size=60))
    def call(request, raw, garbage):
        method, params = request
        line = garbage.replace(b"\n", b"") + b"\n" if raw else json.dumps(
            {"method": method, "params": params}, ensure_ascii=False).encode() + b"\n"
        reply_bytes = exchange(path, line)
        first, _, _rest = reply_bytes.partition(b"\n")
        reply = json.loads(first)       # always one JSON line first (binary replies: their bytes follow)
        if reply["ok"]:
            seen["ok"] += 1
            return
        seen["errors"] += 1
        assert reply["type"] in known, reply
        assert len(reply["error"].splitlines()) == 1 and "Traceback" not in reply["error"], reply
        # the catch-all of a handler that raised something unexpected: a bug, even though the agent lived
        assert not reply["error"].startswith(f"{method} failed: "), reply

    call()
    assert seen["errors"] > 50 and seen["ok"] > 0, seen           # both paths were exercised
    assert lab.call("agent.ping")["lab"] == lab.name
    assert policy_map(lab) == map_before
    assert lab.call("policy.get") == policies_before
    if log.exists():
        assert log.read_text(errors="replace").count("Traceback") == log_before
