"""Datapath cost: iperf3 between two pods of the datapath testbed.

Configurations: bare veth (no programs), then the full lxc program (conntrack,
policy, events, counters) with 1, 1,000 and 10,000 policy entries. pod b's
ingress is enforced and one entry allows pod a; the other entries are other
identities' L3-L4 allows on b, so the LPM trie really holds that many keys.
Measures 64-byte UDP packets per second (received) and TCP throughput; each
figure is median/min/max over ``repeats`` runs, with the ratio to bare veth.
Also records how long apply() takes until the new policy is in force.

Run alone: ``python -m bench.datapath_bench [--quick]`` (root). No assertions:
the numbers go to bench/results (targets in issue 4).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
import uuid
from typing import Any

from bench.figures import figure
from workbench.datapath.testbed import Testbed
from workbench.model import PolicyEntry

ENTRY_COUNTS = (1, 1000, 10000)
IPERF_PORT = 5201


def _policy(b_id: int, a_identity: int, count: int) -> list[PolicyEntry]:
    entries = [PolicyEntry(b_id, "ingress", a_identity, 0, 0, 0)]
    for i in range(count - 1):  # other peers, distinct keys: identity x port
        entries.append(PolicyEntry(b_id, "ingress", 10_000 + i // 50, 6, 1000 + i % 50, 16))
    return entries


def _iperf(bed: Testbed, udp: bool, seconds: float) -> float:
    """One iperf3 run a -> b: received packets/s for UDP (64-byte payload), bits/s for TCP."""
    b = bed.endpoints["b"]
    a = bed.endpoints["a"]
    server = subprocess.Popen(["ip", "netns", "exec", b.netns, "iperf3", "-s", "-1", "-p", str(IPERF_PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        args = ["ip", "netns", "exec", a.netns, "iperf3", "-c", b.ipv4, "-p", str(IPERF_PORT), "-J",
                "-t", str(seconds)]
        if udp:
            args += ["-u", "-b", "0", "-l", "64"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30)
        doc = json.loads(out.stdout)
        if "error" in doc:
            raise RuntimeError(f"iperf3: {doc['error']}")
        end = doc["end"]
        if udp:
            s = end["sum"]
            return float(s["packets"] - s["lost_packets"]) / float(s["seconds"])
        return float(end["sum_received"]["bits_per_second"])
    finally:
        server.wait(timeout=10) if server.poll() is not None else server.kill()
        server.wait()


def _measure(bed: Testbed, repeats: int, seconds: float) -> tuple[list[float], list[float]]:
    pps = [_iperf(bed, True, seconds) for _ in range(repeats)]
    bps = [_iperf(bed, False, seconds) for _ in range(repeats)]
    return pps, bps


def run(quick: bool = False, repeats: int | None = None, seconds: float | None = None) -> dict[str, Any]:
    """Measure every configuration; returns {"udp_64b_pps": {...}, "tcp_bps": {...}, "apply": {...}}."""
    if shutil.which("iperf3") is None:
        raise RuntimeError("iperf3 is not installed")
    repeats = repeats or (2 if quick else 5)
    seconds = seconds or (1.0 if quick else 3.0)
    result: dict[str, Any] = {"udp_64b_pps": {}, "tcp_bps": {}, "apply": {},
                              "setup": {"repeats": repeats, "seconds": seconds}}
    pods = {"a": 300, "b": 301}

    with Testbed.create(f"bd{uuid.uuid4().hex[:6]}", pods, attach=False) as bed:
        pps, bps = _measure(bed, repeats, seconds)
    bare_pps, bare_bps = figure(pps, "packets/s"), figure(bps, "bit/s")
    result["udp_64b_pps"]["bare_veth"], result["tcp_bps"]["bare_veth"] = bare_pps, bare_bps

    with Testbed.create(f"bd{uuid.uuid4().hex[:6]}", pods) as bed:
        writer = bed.datapath.policy_writer()
        b = bed.endpoints["b"]
        for count in ENTRY_COUNTS:
            writer.apply(_policy(b.id, pods["a"], count), {(b.id, "ingress")})
            result["apply"][f"entries_{count}"] = {
                "effective": figure([writer.last_apply_timing["effective_s"] * 1000], "ms", higher_is_better=False),
                "total": figure([writer.last_apply_timing["total_s"] * 1000], "ms", higher_is_better=False),
            }
            pps, bps = _measure(bed, repeats, seconds)
            result["udp_64b_pps"][f"program_{count}_entries"] = figure(pps, "packets/s", bare_pps)
            result["tcp_bps"][f"program_{count}_entries"] = figure(bps, "bit/s", bare_bps)
        result["datapath_lost_events"] = bed.datapath.lost_events()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args()
    print(json.dumps(run(quick=opts.quick), indent=2))
