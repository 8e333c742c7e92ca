"""Pure parts of services and the connectivity test: backend selection and the probe matrix."""

from __future__ import annotations

from workbench.client.connectivity import Probe, plan_probes
from workbench.lab.manifests import DEMO_MANIFEST, parse_manifests
from workbench.lab.services import build_frontends, selects


def test_selector_semantics() -> None:
    assert selects({"a": "1"}, {"a": "1", "b": "2"})
    assert not selects({"a": "1", "b": "3"}, {"a": "1", "b": "2"})
    assert not selects({}, {"a": "1"})


def test_demo_service_has_both_deathstars_as_backends() -> None:
    spec = parse_manifests([DEMO_MANIFEST.read_text()])
    pods = [(p, f"10.0.0.{i}") for i, p in enumerate(spec.pods, start=10)]
    (frontend,) = build_frontends([(spec.services[0], "10.96.0.10")], pods)
    assert (frontend.cluster_ip, frontend.port, frontend.protocol) == ("10.96.0.10", 80, "TCP")
    assert sorted(b[0].split("-")[0] for b in frontend.backends) == ["deathstar", "deathstar"]
    assert all(port == 80 for _, _, port in frontend.backends)


def _ep(pod: str, app: str, owner: str = "", ports: list[int] | None = None) -> dict[str, object]:
    return {"pod": pod, "app": app, "owner": owner, "ipv4": "10.0.0.1", "ports": ports or [], "netns": "x",
            "cgroup": "/x"}


def test_probe_matrix_covers_pods_services_and_world() -> None:
    endpoints = [_ep("ds-1", "deathstar", "ds", [80]), _ep("ds-2", "deathstar", "ds", [80]), _ep("x", "idle"),
                 _ep("e", "echo", ports=[9000])]
    services = [{"name": "ds", "namespace": "default", "cluster_ip": "10.96.0.10", "backends": ["ds-1", "ds-2"],
                 "ports": [{"port": 80, "protocol": "TCP"}]}]
    probes = plan_probes(endpoints, services)
    sources = sorted({p.source for p in probes})
    assert sources == ["ds-1", "e", "x"]          # one replica of the deployment probes
    from_x = [(p.kind, p.destination, p.protocol, p.port) for p in probes if p.source == "x"]
    assert ("pod-to-pod", "ds-1", "TCP", 80) in from_x and ("pod-to-pod", "ds-2", "TCP", 80) in from_x
    assert ("pod-to-pod", "e", "UDP", 9000) in from_x
    assert ("pod-to-service", "default/ds", "TCP", 80) in from_x
    assert ("pod-to-world", "world", "UDP", 80) in from_x
    assert all(p.destination != p.source for p in probes)
    deathstar_paths = {p.path for p in probes if p.destination.startswith("ds") and p.protocol == "TCP"}
    assert deathstar_paths == {"/v1/"}


def test_probe_is_as_expected_only_when_result_matches() -> None:
    probe = Probe("a", "pod-to-world", "world", "192.0.2.10", 80, "TCP", expected=False, ok=False)
    assert probe.as_expected
    probe.ok = True
    assert not probe.as_expected


def test_bench_manifest_has_the_requested_pod_count() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # bench/ is not a package of the wheel
    from bench.lab_bench import pods_manifest

    spec = parse_manifests([pods_manifest(50)])
    assert len(spec.pods) == 50
    assert sum(p.app == "echo" for p in spec.pods) == 20


def test_connectivity_report_text_json_and_exit_code() -> None:
    from workbench.client.connectivity import ConnectivityReport

    good = Probe("x", "pod-to-world", "world", "192.0.2.10", 80, "TCP", ok=True, detail="HTTP/1.1 200 OK")
    bad = Probe("x", "pod-to-world", "world", "192.0.2.10", 80, "UDP", ok=False, detail="timeout")
    report = ConnectivityReport("demo", [good, bad])
    assert report.exit_code == 1
    assert report.to_json()["ok"] is False and len(report.to_json()["probes"]) == 2
    text = report.format_text()
    assert "UNEXPECTED" in text and "1 of 2 probes did not behave as expected" in text
    assert ConnectivityReport("demo", [good]).exit_code == 0
