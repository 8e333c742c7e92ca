"""Slow clients against the L7 proxy: slowloris and a connection flood, in a real star-wars lab.

The lab runs the shipped L7 rule (``rule1-l7.yaml``). One deathstar pod is
the attacker: its connections to the other deathstar pod are empire -> empire
on port 80, so the datapath hands every one of them to the agent's proxy.
tiefighter is the honest client. What is checked:

- 1,000 slowloris connections (one byte of a never-ending request head per
  second each) do not slow tiefighter's requests down, and the agent's thread
  count stays small (one event loop, not a thread per connection);
- every slowloris connection is cut off at the head deadline although it
  keeps sending a byte a second (an idle timeout that restarts with every byte
  would keep them all);
- at the connection bound, one more connection is reset at once and counted in
  ``l7.status``; after the flood the proxy serves again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import workbench as wb
from workbench.agent.l7.proxy import HEAD_TIMEOUT, MAX_CONNECTIONS
from workbench.node.topology import pod_netns

DEATHSTAR = "deathstar.default.svc.cluster.local"
SLOW_CLIENTS = 1000

# One process, one thread, non-blocking sockets: "slow <host> <n>" trickles a request head on n
# connections and reports when the proxy closed each; "flood <host> <n>" opens n connections, waits
# for "go" on stdin, opens EXTRA more and reports which of those were closed at once.
ATTACKER = textwrap.dedent("""
    import json, resource, selectors, socket, sys, time
    mode, host, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    EXTRA, PORT = 40, 80
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = count + EXTRA + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))

    def open_many(n, batch=500, refused_ok=False):
        # a batch at a time: a burst beyond the listen backlog would wait for SYN retries.
        # refused_ok: the proxy may reset a connection before we look at it (it is beyond the
        # bound), so a pending ECONNRESET is an answer, not a failed connect

        connected = {}
        for first in range(0, n, batch):
            socks = []
            for _ in range(min(batch, n - first)):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex((host, PORT))
                socks.append(s)
            sel = selectors.DefaultSelector()
            for s in socks:
                sel.register(s, selectors.EVENT_WRITE)
            done, deadline = 0, time.monotonic() + 15
            while done < len(socks) and time.monotonic() < deadline:
                for key, _ in sel.select(0.5):
                    sel.unregister(key.fileobj)
                    connected[key.fileobj] = time.monotonic()
                    done += 1
            assert done == len(socks), f"{len(socks) - done} connections did not complete"
            if not refused_ok:
                assert all(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for s in socks)
        return connected

    def closed_now(s):
        try:
            return s.recv(65536) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    if mode == "slow":
        head = b"POST /v1/request-landing HTTP/1.1\\r\\nHost: deathstar\\r\\n" + b"".join(
            b"X-Slow-%d: %d\\r\\n" % (i, i) for i in range(200))
        socks = open_many(count)
        start = time.monotonic()
        state = {s: {"opened": at, "sent": 0, "closed": None, "answer": b""} for s, at in socks.items()}
        print("open", flush=True)
        sel = selectors.DefaultSelector()
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        alive, tick = set(socks), start
        while alive and time.monotonic() < start + 3 * float(sys.argv[4]):
            now = time.monotonic()
            if now >= tick:
                for s in list(alive):
                    st = state[s]
                    try:
                        st["sent"] += s.send(head[st["sent"]:st["sent"] + 1])
                    except OSError:
                        st["closed"] = now
                        alive.discard(s)
                        sel.unregister(s)
                tick += 1.0
            for key, _ in sel.select(max(0.0, tick - time.monotonic())):
                s, st = key.fileobj, state[key.fileobj]
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if data:
                    st["answer"] += data[:200]
                    continue
                st["closed"] = time.monotonic()
                alive.discard(s)
                sel.unregister(s)
        lives = [st["closed"] - st["opened"] for st in state.values() if st["closed"] is not None]
        print(json.dumps({"still_open": len(alive), "closed": len(lives),
                          "shortest": min(lives, default=None), "longest": max(lives, default=None),
                          "least_sent": min(st["sent"] for st in state.values()),
                          "answered_408": sum(st["answer"].startswith(b"HTTP/1.1 408") for st in state.values())}),
              flush=True)
    else:
        fillers = open_many(count)
        print("filled", flush=True)
        assert sys.stdin.readline().strip() == "go"
        extras = open_many(EXTRA, refused_ok=True)
        time.sleep(1.0)
        print(json.dumps({"extras": EXTRA, "extras_closed": sum(closed_now(s) for s in extras),
                          "fillers_open": sum(not closed_now(s) for s in fillers)}), flush=True)
        sys.stdin.readline()
""")

NORMAL_CLIENT = textwrap.dedent("""
    import http.client, json, sys, time
    out = []
    for _ in range(int(sys.argv[2])):
        t0 = time.monotonic()
        conn = http.client.HTTPConnection(sys.argv[1], 80, timeout=5)
        try:
            conn.request("POST", "/v1/request-landing")
            resp = conn.getresponse()
            out.append([resp.status, resp.read().decode(), time.monotonic() - t0])
        except OSError as err:
            out.append([0, repr(err), time.monotonic() - t0])
        finally:
            conn.close()
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def lab(starwars_lab):
    starwars_lab.policy.apply(wb.example("rule1-l7.yaml"))
    try:
        yield starwars_lab
    finally:
        starwars_lab.policy.delete(all=True)


@pytest.fixture(scope="module")
def attacker(lab):
    """(netns of one deathstar pod, address of the other): its connections go through the proxy."""
    eps = lab.endpoints
    deathstars = eps[eps.pod.str.startswith("deathstar-")].sort_values("pod")
    assert len(deathstars) >= 2, deathstars
    return pod_netns(lab.name, str(deathstars.iloc[0].pod)), str(deathstars.iloc[1].ipv4)


def start_attack(netns: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-I", "-c", ATTACKER,
                             *(str(a) for a in args)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def expect_line(proc: subprocess.Popen[str], word: str) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(word):
        proc.kill()
        raise AssertionError(f"attacker said {line!r}, not {word!r}: {proc.communicate()[1][-2000:]}")
    return line


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads line for pid {pid}")


def l7(lab) -> dict:
    return lab.call("l7.status")


def normal_requests(lab, count: int) -> list[list]:
    run = lab.exec("tiefighter", [sys.executable, "-I", "-c", NORMAL_CLIENT, DEATHSTAR, str(count)],
                   timeout=60, check=True)
    return json.loads(run.stdout)


def wait_connections(lab, predicate, seconds: float = 10.0) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        status = l7(lab)
        if predicate(status["connections"]) or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def test_slowloris_neither_starves_requests_nor_threads_and_is_cut_at_the_head_deadline(lab, attacker):
    netns, victim = attacker
    agent = int(lab.status()["agent_pid"])
    threads_before = threads(agent)
    before = l7(lab)
    assert before["fd_limit"] >= 2 * before["max_connections"]   # the agent made room for its bound
    proc = start_attack(netns, "slow", victim, SLOW_CLIENTS, HEAD_TIMEOUT)
    try:
        expect_line(proc, "open")
        opened = time.monotonic()
        during = wait_connections(lab, lambda n: n >= SLOW_CLIENTS)
        assert during["connections"] >= SLOW_CLIENTS, during
        # (a) honest requests while all the slow ones are held: each answered, fast
        answers = normal_requests(lab, 10)
        assert [a[:2] for a in answers] == [[200, "Ship landed\n"]] * 10, answers
        assert max(a[2] for a in answers) < 2.0, answers
        # (b) one loop, not a thread per connection
        threads_during = threads(agent)
        assert threads_during < 100 and threads_during - threads_before < 20, (threads_before, threads_during)
        assert time.monotonic() - opened < HEAD_TIMEOUT - 1, "too slow to check while the slow clients were held"
        assert l7(lab)["connections"] >= SLOW_CLIENTS
        # (c) every slow client is cut off at the deadline although it sent a byte every second
        assert proc.stdout is not None
        report = json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()
    assert report["still_open"] == 0 and report["closed"] == SLOW_CLIENTS, report
    assert HEAD_TIMEOUT - 1 <= report["shortest"] and report["longest"] <= HEAD_TIMEOUT + 3, report
    assert report["least_sent"] >= HEAD_TIMEOUT - 2, report            # all kept trickling until cut
    assert report["answered_408"] >= SLOW_CLIENTS * 0.9, report        # they were told why (a few may see RST)
    after = wait_connections(lab, lambda n: n == 0)
    assert after["timeouts"].get("head", 0) - before["timeouts"].get("head", 0) >= SLOW_CLIENTS, after
    assert after["refused"] == before["refused"] and after["errors"] == 0, after


def test_connections_beyond_the_bound_are_reset_at_once_and_counted(lab, attacker):
    netns, victim = attacker
    status = wait_connections(lab, lambda n: n == 0)
    assert status["connections"] == 0, status
    limit = status["max_connections"]
    assert limit == MAX_CONNECTIONS, status          # the documented bound, not lowered for lack of descriptors
    proc = start_attack(netns, "flood", victim, limit)
    try:
        expect_line(proc, "filled")
        full = wait_connections(lab, lambda n: n >= limit, seconds=5)
        assert full["connections"] == limit, full
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        report = json.loads(expect_line(proc, "{"))
        # an honest client is refused at once as well, not left waiting
        refused = normal_requests(lab, 1)[0]
        counted = l7(lab)
        proc.stdin.write("done\n")
        proc.stdin.flush()
        proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert report["extras_closed"] == report["extras"], report
    assert report["fillers_open"] == limit, report
    assert refused[0] == 0 and refused[2] < 2.0, refused
    assert counted["refused"] - status["refused"] == report["extras"] + 1, counted
    assert counted["accepted"] - status["accepted"] == limit, counted
    wait_connections(lab, lambda n: n == 0)
    answers = normal_requests(lab, 3)
    assert [a[:2] for a in answers] == [[200, "Ship landed\n"]] * 3, answers
