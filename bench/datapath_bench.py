"""Datapath cost: iperf3 between two pods of the datapath testbed.

Configurations: bare veth (no programs), then the full lxc program (conntrack,
policy, events, counters) with 1, 1,000 and 10,000 policy entries. pod b's
ingress is enforced and one entry allows pod a; the other entries are other
identities' L3-L4 allows on b, so the LPM trie really holds that many keys.
Measures 64-byte UDP packets per second (received) and TCP throughput; each
figure is median/min/max over ``repeats`` runs, with the ratio to bare veth.
Beside them, iptables (nft and legacy) FORWARD chains in the node netns with
1,000 and 10,000 equivalent rules and no programs. Also records how long
apply() takes until the new policy is in force.

Run alone: ``python -m bench.datapath_bench [--quick]`` (root). No assertions:
the numbers go to bench/results (the README's table shows the latest).
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
from workbench.lab.model import PolicyEntry

ENTRY_COUNTS = (1, 1000, 10000)
IPTABLES_COUNTS = (1000, 10000)
IPTABLES_FLAVOURS = ("iptables-nft-restore", "iptables-legacy-restore")
IPERF_PORT = 5201


def _policy(b_id: int, a_identity: int, count: int) -> list[PolicyEntry]:
    entries = [PolicyEntry(b_id, "ingress", a_identity, 0, 0, 0)]
    for i in range(count - 1):  # other peers, distinct keys: identity x port
        entries.append(PolicyEntry(b_id, "ingress", 10_000 + i // 50, 6, 1000 + i % 50, 16))
    return entries


def _iptables_rules(bed: Testbed, count: int) -> str:
    """FORWARD rules in the node netns equivalent to the policy: count-1 non-matching, then the allow."""
    a, b = bed.endpoints["a"], bed.endpoints["b"]
    # No "ESTABLISHED -j ACCEPT" shortcut: every packet walks the chain, the
    # stateless worst case (our program's conntrack fast
    # path is the other side of that comparison).
    lines = ["*filter", ":FORWARD DROP [0:0]"]
    for i in range(count - 1):  # never matches: sources that do not exist
        lines.append(f"-A FORWARD -s 10.99.{i // 250}.{i % 250 + 1}/32 -d {b.ipv4}/32 -p tcp "
                     f"--dport {1000 + i % 50} -j ACCEPT")
    lines.append(f"-A FORWARD -s {a.ipv4}/32 -d {b.ipv4}/32 -j ACCEPT")
    lines.append(f"-A FORWARD -s {b.ipv4}/32 -d {a.ipv4}/32 -j ACCEPT")
    return "\n".join(lines + ["COMMIT", ""])


def _set_iptables(bed: Testbed, tool: str, count: int) -> None:
    # only ever inside the testbed's node netns: the machine's own netns gets no rules
    rules = _iptables_rules(bed, count) if count else "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n"
    subprocess.run(["ip", "netns", "exec", bed.node, tool], input=rules, text=True, check=True)


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


def run(quick: bool = False, repeats: int | None = None, seconds: float | None = None,
        include_iptables: bool = True) -> dict[str, Any]:
    """Measure every configuration; returns {"udp_64b_pps": {...}, "tcp_bps": {...}, "apply": {...}}.

    Configurations are measured round-robin (one run of each per round), so
    that load from elsewhere on the machine spreads over all of them instead
    of skewing one.
    """
    if shutil.which("iperf3") is None:
        raise RuntimeError("iperf3 is not installed")
    repeats = repeats or (2 if quick else 5)
    seconds = seconds or (1.0 if quick else 3.0)
    pods = {"a": 300, "b": 301}
    samples: dict[str, dict[str, list[float]]] = {}
    applies: dict[int, list[tuple[float, float]]] = {n: [] for n in ENTRY_COUNTS}
    tools = [t for t in IPTABLES_FLAVOURS if include_iptables and shutil.which(t)]

    with Testbed.create(f"bd{uuid.uuid4().hex[:6]}", pods, attach=False) as bare, \
            Testbed.create(f"bd{uuid.uuid4().hex[:6]}", pods) as prog:
        writer = prog.datapath.policy_writer()
        b = prog.endpoints["b"]

        def sample(name: str, bed: Testbed) -> None:
            got = samples.setdefault(name, {"pps": [], "bps": []})
            got["pps"].append(_iperf(bed, True, seconds))
            got["bps"].append(_iperf(bed, False, seconds))

        for _ in range(repeats):
            sample("bare_veth", bare)
            for tool in tools:
                for count in IPTABLES_COUNTS:
                    _set_iptables(bare, tool, count)
                    try:
                        sample(f"iptables_{tool.split('-')[1]}_{count}_rules", bare)
                    finally:
                        _set_iptables(bare, tool, 0)
            for count in ENTRY_COUNTS:
                writer.apply(_policy(b.id, pods["a"], count), {(b.id, "ingress")})
                applies[count].append((writer.last_apply_timing["effective_s"] * 1000,
                                       writer.last_apply_timing["total_s"] * 1000))
                sample(f"program_{count}_entries", prog)
        lost = prog.datapath.lost_events()

    bare_pps = figure(samples["bare_veth"]["pps"], "packets/s")
    bare_bps = figure(samples["bare_veth"]["bps"], "bit/s")
    result: dict[str, Any] = {"udp_64b_pps": {}, "tcp_bps": {}, "apply": {},
                              "setup": {"repeats": repeats, "seconds": seconds, "iptables": tools},
                              "datapath_lost_events": lost}
    for name, got in samples.items():
        base = (None, None) if name == "bare_veth" else (bare_pps, bare_bps)
        result["udp_64b_pps"][name] = figure(got["pps"], "packets/s", base[0])
        result["tcp_bps"][name] = figure(got["bps"], "bit/s", base[1])
    for count, times in applies.items():
        # apply() replaces the previous round's policy, whatever its size
        result["apply"][f"entries_{count}"] = {
            "effective": figure([t[0] for t in times], "ms", higher_is_better=False),
            "total": figure([t[1] for t in times], "ms", higher_is_better=False),
        }
    one = result["udp_64b_pps"]["program_1_entries"]
    result["udp_64b_pps_10000_vs_1_entries"] = one and (
        result["udp_64b_pps"]["program_10000_entries"]["median"] / one["median"])
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args()
    print(json.dumps(run(quick=opts.quick), indent=2))
