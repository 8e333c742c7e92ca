"""`connectivity test`: a probe matrix pod->pod, pod->service, pod->world over TCP (HTTP) and UDP.

Like `cilium connectivity test`, each probe's result is compared with what
should happen. The expectation is pluggable: by default everything passes;
when the agent serves ``connectivity.expect`` (the policy layer registers it),
it answers, for the list of probes, which should pass. A caller may also pass
its own ``expect`` function.

Example::

    >>> report = run_connectivity_test("default")   # doctest: +SKIP
    >>> report.exit_code
    0
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workbench.client.transport import AgentClient
from workbench.errors import NotFoundError
from workbench.lab.clusterdns import DNS_APP
from workbench.lab.ipam import WORLD_HOST
from workbench.node.processes import exec_argv

PROBE_SCRIPT = Path(__file__).resolve().parents[1] / "node" / "probe.py"
HTTP_PATHS = {"deathstar": "/v1/", "echo": "/"}


@dataclass
class Probe:
    source: str            # pod name
    kind: str              # pod-to-pod | pod-to-service | pod-to-world
    destination: str       # pod name, namespace/service, or "world"
    address: str
    port: int
    protocol: str          # TCP (HTTP) | UDP
    path: str = "/"
    expected: bool = True
    ok: bool | None = None
    detail: str = ""

    @property
    def as_expected(self) -> bool:
        return self.ok == self.expected

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "as_expected": self.as_expected}


Expectation = Callable[[list[Probe]], list[bool]]


def _representatives(endpoints: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One source per workload: the first replica of a Deployment, every bare pod."""
    seen: set[str] = set()
    out = []
    for ep in sorted(endpoints, key=lambda e: e["pod"]):
        key = ep.get("owner") or ep["pod"]
        if key not in seen:
            seen.add(key)
            out.append(ep)
    return out


def plan_probes(endpoints: list[dict[str, Any]], services: list[dict[str, Any]]) -> list[Probe]:
    """The probe matrix for a lab (pure: from the agent's endpoint and service listings).

    The lab's DNS pod (kube-system/kube-dns) is infrastructure, as in `cilium connectivity test`: it is
    no source, and neither it nor its service is a destination (it answers DNS, neither HTTP nor echo).
    """
    endpoints = [ep for ep in endpoints if ep["app"] != DNS_APP]
    by_pod = {ep["pod"]: ep for ep in endpoints}
    probes: list[Probe] = []
    for src in _representatives(endpoints):
        for dst in sorted(endpoints, key=lambda e: e["pod"]):
            if dst["pod"] == src["pod"] or dst["app"] == "idle":
                continue
            for port in dst["ports"] or [80]:
                probes.append(Probe(src["pod"], "pod-to-pod", dst["pod"], dst["ipv4"], port, "TCP",
                                    HTTP_PATHS[dst["app"]]))
                if dst["app"] == "echo":
                    probes.append(Probe(src["pod"], "pod-to-pod", dst["pod"], dst["ipv4"], port, "UDP"))
        for svc in services:
            apps = {by_pod[b]["app"] for b in svc["backends"] if b in by_pod}
            if not apps:
                continue
            app = "deathstar" if "deathstar" in apps else "echo"
            for port in svc["ports"]:
                if port["protocol"] == "UDP" and app != "echo":
                    continue
                probes.append(Probe(src["pod"], "pod-to-service", f"{svc['namespace']}/{svc['name']}",
                                    svc["cluster_ip"], port["port"], port["protocol"], HTTP_PATHS[app]))
        probes.append(Probe(src["pod"], "pod-to-world", "world", WORLD_HOST, 80, "TCP", "/"))
        probes.append(Probe(src["pod"], "pod-to-world", "world", WORLD_HOST, 80, "UDP"))
    return probes


def agent_expectation(lab: str) -> Expectation:
    """Ask the agent (policy layer) what should pass; everything when it has no opinion."""

    def expect(probes: list[Probe]) -> list[bool]:
        try:
            answer = AgentClient(lab).call("connectivity.expect", probes=[p.to_dict() for p in probes])
        except NotFoundError as err:
            if "has no method" in str(err):
                return [True] * len(probes)
            raise
        return [bool(x) for x in answer]

    return expect


def _run_from(source: dict[str, Any], probes: list[Probe]) -> None:
    payload = json.dumps([{"address": p.address, "port": p.port, "protocol": p.protocol, "path": p.path}
                          for p in probes])
    argv = exec_argv(source["netns"], Path(source["cgroup"]), [sys.executable, "-I", str(PROBE_SCRIPT)])
    proc = subprocess.run(argv, input=payload, capture_output=True, text=True, timeout=60)
    try:
        results = json.loads(proc.stdout)
    except json.JSONDecodeError:
        results = [{"ok": False, "detail": f"probe failed: {proc.stderr.strip()[-200:]}"}] * len(probes)
    for probe, result in zip(probes, results, strict=True):
        probe.ok, probe.detail = bool(result["ok"]), str(result["detail"])


@dataclass
class ConnectivityReport:
    """The outcome: one row per probe; exit code 1 when any probe was not as expected."""

    lab: str
    probes: list[Probe]

    @property
    def unexpected(self) -> list[Probe]:
        return [p for p in self.probes if not p.as_expected]

    @property
    def exit_code(self) -> int:
        return 1 if self.unexpected else 0

    def to_frame(self) -> Any:
        import pandas as pd

        columns = ["source", "kind", "destination", "address", "port", "protocol", "expected", "ok",
                   "as_expected", "detail"]
        return pd.DataFrame([p.to_dict() for p in self.probes], columns=columns)

    def summary(self) -> str:
        bad = len(self.unexpected)
        total = len(self.probes)
        if bad:
            return f"{bad} of {total} probes did not behave as expected in lab {self.lab}"
        return f"all {total} probes behaved as expected in lab {self.lab}"

    def to_json(self) -> Any:
        return {"lab": self.lab, "ok": not self.unexpected, "summary": self.summary(),
                "probes": [p.to_dict() for p in self.probes]}

    def format_text(self) -> str:
        frame = self.to_frame()
        frame["result"] = ["pass" if p.ok else "fail" for p in self.probes]
        frame["verdict"] = ["ok" if p.as_expected else "UNEXPECTED" for p in self.probes]
        frame["expected"] = ["pass" if p.expected else "fail" for p in self.probes]
        shown = frame[["source", "kind", "destination", "port", "protocol", "expected", "result", "verdict"]]
        return f"{shown.to_string(index=False)}\n\n{self.summary()}"

    def value(self) -> Any:
        return self

    def _repr_html_(self) -> str:
        return f"<p>{self.summary()}</p>{self.to_frame().to_html(index=False)}"


def run_connectivity_test(lab: str, expect: Expectation | None = None) -> ConnectivityReport:
    """Probe the lab from every workload; compare with ``expect`` (default: the agent's answer)."""
    client = AgentClient(lab)
    endpoints = client.call("endpoint.list")
    services = client.call("service.list")
    probes = plan_probes(endpoints, services)
    for probe, expected in zip(probes, (expect or agent_expectation(lab))(probes), strict=True):
        probe.expected = expected
    by_source: dict[str, list[Probe]] = {}
    for probe in probes:
        by_source.setdefault(probe.source, []).append(probe)
    sources = {ep["pod"]: ep for ep in endpoints}
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda item: _run_from(sources[item[0]], item[1]), by_source.items()))
    return ConnectivityReport(lab, probes)
