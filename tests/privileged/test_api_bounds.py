"""The agent's local API is bounded and private: modes, peer credentials, request sizes, idle and many clients.

Findings behind it: under ``umask 0000`` user nobody could call the API
(export a root-owned world-writable file, shut the agent down); a 200 MiB line
was buffered; idle clients were never timed out; 17 of 60 concurrent clients
were refused by a listen backlog of 5; ``flows.export`` created directories and
``metrics.serve`` took port -1.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
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
        client = ("import json, socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
                  "s.sendall(b'{\"method\": \"agent.shutdown\"}\\n'); print(s.recv(4096).decode())")
        run = subprocess.run([*NOBODY, sys.executable, "-I", "-c", client, str(sock)], capture_output=True,
                             text=True, timeout=60)
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
