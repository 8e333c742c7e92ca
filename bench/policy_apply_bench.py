"""Policy apply: time until N rules TAKE EFFECT, measured by a probe, not by the call returning.

A prober in pod a sends a UDP datagram to pod b every 0.2 ms; b's ingress is
default-deny, so nothing comes back. Then the policy (N entries, the allowing
one among them) is applied, and the figure is the time from the start of the
apply until the first echo arrives. The baseline does the same with
`iptables-restore` of N equivalent FORWARD rules in the node netns (the
datapath program is detached for it, and the chain starts as DROP).
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from typing import Any

from bench.datapath_bench import _iptables_rules, _policy
from bench.figures import figure
from workbench.datapath.testbed import Testbed

PORT = 7007
SEND_INTERVAL_S = 0.0002


def _time_until_reply(bed: Testbed, apply: Any, timeout: float = 10.0) -> float:
    """Seconds from calling ``apply()`` until b's echo first reaches a."""
    b = bed.endpoints["b"]
    sock = bed.socket_in("a", 2)  # SOCK_DGRAM
    sock.settimeout(0.001)
    stop = threading.Event()
    replied: list[float] = []

    def prober() -> None:
        while not stop.is_set():
            sock.sendto(b"probe", (b.ipv4, PORT))
            try:
                sock.recv(64)
                replied.append(time.perf_counter())
                return
            except OSError:
                time.sleep(SEND_INTERVAL_S)

    thread = threading.Thread(target=prober, daemon=True)
    thread.start()
    time.sleep(0.05)  # the prober is running and denied
    if replied:
        raise RuntimeError("the probe passed before the policy was applied")
    started = time.perf_counter()
    apply()
    thread.join(timeout)
    stop.set()
    sock.close()
    if not replied:
        raise RuntimeError("the policy never took effect")
    return replied[0] - started


def _deny_all(bed: Testbed) -> None:
    bed.datapath.policy_writer().apply([], {(bed.endpoints["b"].id, "ingress")})


def _iptables_restore(bed: Testbed, tool: str, count: int) -> None:
    subprocess.run(["ip", "netns", "exec", bed.node, tool], input=_iptables_rules(bed, count), text=True,
                   check=True)


def _iptables_flush(bed: Testbed, tool: str, policy: str = "DROP") -> None:
    subprocess.run(["ip", "netns", "exec", bed.node, tool], text=True, check=True,
                   input=f"*filter\n:FORWARD {policy} [0:0]\nCOMMIT\n")


def run(quick: bool = False) -> dict[str, Any]:
    repeats = 3 if quick else 7
    counts = (1_000, 10_000)
    result: dict[str, Any] = {}
    name = f"pa{uuid.uuid4().hex[:6]}"
    with Testbed.create(name, {"a": 256, "b": 257}, datapath_options={"policy_max": 65536}) as bed:
        bed.serve("b", PORT, "udp")
        writer = bed.datapath.policy_writer()
        b = bed.endpoints["b"]
        for count in counts:
            samples = []
            for _ in range(repeats):
                _deny_all(bed)
                entries = _policy(b.id, bed.endpoints["a"].identity, count)
                samples.append(_time_until_reply(bed, lambda e=entries: writer.apply(e, {(b.id, "ingress")})) * 1e3)
            result[f"ebpf_{count}_rules_ms"] = figure(samples, "ms", higher_is_better=False)
        # Baseline: the same rules through iptables, with our programs out of the way.
        for ep in bed.endpoints.values():
            bed.datapath.detach_endpoint(ep)
        for tool in ("iptables-nft-restore", "iptables-legacy-restore"):
            for count in counts:
                samples = []
                for _ in range(repeats):
                    _iptables_flush(bed, tool)
                    samples.append(_time_until_reply(bed, lambda c=count, t=tool: _iptables_restore(bed, t, c)) * 1e3)
                _iptables_flush(bed, tool, "ACCEPT")  # the other tool's turn must not see our DROP
                base = figure(samples, "ms", higher_is_better=False)
                result[f"{tool.split('-')[1]}_{count}_rules_ms"] = base
                ours = result[f"ebpf_{count}_rules_ms"]
                result[f"ebpf_vs_{tool.split('-')[1]}_{count}_rules_ms"] = figure(
                    [ours["median"]], "ms", baseline=base, higher_is_better=False)
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))
