"""ExternalHost manifests: parsed, validated with located one-line errors, and round-tripped as JSON."""

from __future__ import annotations

import json
import re

import pytest

from workbench.errors import ValidationError
from workbench.lab.ipam import check_lab_cidrs
from workbench.lab.manifests import DEMO_MANIFEST, ExternalHostSpec, LabSpec, parse_manifests


def host(name: str = "github-api", hostname: object = "api.github.com", ip: object = "192.0.2.20",
         extra: str = "") -> str:
    return (f"apiVersion: workbench.dev/v1\nkind: ExternalHost\nmetadata: {{name: {name}}}\n"
            f"spec: {{hostname: {json.dumps(hostname)}, ip: {json.dumps(ip)}{extra}}}\n")


def parse(*docs: str) -> LabSpec:
    return parse_manifests([("hosts.yaml", "---\n".join(docs))])


def test_demo_has_two_github_hosts_on_port_80() -> None:
    spec = parse_manifests([DEMO_MANIFEST.read_text()])
    assert spec.external_hosts == [ExternalHostSpec("github-api", "api.github.com", "192.0.2.20", [80], 30),
                                   ExternalHostSpec("github-support", "support.github.com", "192.0.2.21", [80], 30)]
    assert spec.warnings == []


def test_defaults_ports_80_and_ttl_30_and_normalizes_the_name() -> None:
    (parsed,) = parse(host(hostname="API.GitHub.com.", ip="198.51.100.7")).external_hosts
    assert parsed == ExternalHostSpec("github-api", "api.github.com", "198.51.100.7", [80], 30)


def test_ports_and_ttl_are_kept_and_the_spec_round_trips_through_json() -> None:
    spec = parse(host(extra=", ports: [80, 8443], ttl: 5"), host("other", "example.org", "198.51.100.20"))
    assert [(h.ports, h.ttl) for h in spec.external_hosts] == [([80, 8443], 5), ([80], 30)]
    again = LabSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec


def test_a_spec_without_external_hosts_reads_as_none() -> None:
    data = parse("apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: a, image: b}]}\n")
    raw = data.to_dict()
    del raw["external_hosts"]
    assert LabSpec.from_dict(raw).external_hosts == []


@pytest.mark.parametrize(("doc", "message"), [
    (host(ip="8.8.8.8"), "spec.ip: 8.8.8.8 is outside 192.0.2.0/24 and 198.51.100.0/24"),
    (host(ip="10.244.0.5"), "spec.ip: 10.244.0.5 is outside"),
    (host(ip="203.0.113.5"), "spec.ip: 203.0.113.5 is outside"),
    (host(ip="192.0.2.1"), "spec.ip: 192.0.2.1 is the node's world link of every lab"),
    (host(ip="192.0.2.10"), "spec.ip: 192.0.2.10 is the world host of every lab"),
    (host(ip="198.51.100.255"), "spec.ip: 198.51.100.255 is the network or broadcast address"),
    (host(ip="not-an-ip"), "spec.ip: 'not-an-ip' is not an IPv4 address"),
    (host(ip=20), "spec.ip: must be a non-empty string, got 20"),
    (host(hostname="bad_name.example.com"), "spec.hostname: 'bad_name.example.com' is not a valid DNS name"),
    (host(hostname="localhost"), "spec.hostname: 'localhost' is not a valid DNS name"),
    (host(hostname="-a.example.com"), "is not a valid DNS name"),
    (host(hostname="a..example.com"), "is not a valid DNS name"),
    (host(hostname=("x" * 64) + ".example.com"), "is not a valid DNS name"),
    (host(hostname="1.2.3.4"), "its last label is a number"),
    (host(hostname="deathstar.default.svc.cluster.local"), "is inside cluster.local"),
    (host(hostname="cluster.local"), "is inside cluster.local"),
    (host(extra=", ports: [0]"), "spec.ports[0]: must be an integer 1-65535, got 0"),
    (host(extra=", ports: [80, 80]"), "spec.ports[1]: port 80 is listed twice"),
    (host(extra=", ttl: -1"), "spec.ttl: must be an integer 0-86400 (seconds), got -1"),
    (host(extra=", ttl: '30'"), "spec.ttl: must be an integer 0-86400"),
])
def test_bad_external_hosts_are_refused_with_the_document_and_field(doc: str, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)) as err:
        parse(doc)
    assert str(err.value).startswith("hosts.yaml document 0 (ExternalHost/github-api): ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("name", "hostname", "ip", "message"), [
    ("b", "api.github.com", "192.0.2.30", "spec.hostname: api.github.com is already used by ExternalHost/a"),
    ("b", "b.example.com", "192.0.2.20", "spec.ip: 192.0.2.20 is already used by ExternalHost/a"),
    ("a", "b.example.com", "192.0.2.30", "metadata.name: a is already used by ExternalHost/a"),
])
def test_duplicate_hostnames_ips_and_names_are_refused(name: str, hostname: str, ip: str, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(f"document 1 (ExternalHost/{name}): {message}")):
        parse(host("a"), host(name, hostname, ip))


@pytest.mark.parametrize(("doc", "message"), [
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: kube-dns, namespace: kube-system}\n"
     "spec: {containers: [{name: a, image: b}]}\n", "the name kube-dns is taken by the lab's own DNS pod"),
    ("apiVersion: v1\nkind: Service\nmetadata: {name: kube-dns, namespace: kube-system}\n"
     "spec: {ports: [{port: 53}]}\n", "service kube-system/kube-dns is the lab's own DNS service"),
])
def test_a_manifest_may_not_define_the_labs_dns(doc: str, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        parse(doc)


def test_a_kube_system_namespace_with_labels_is_fine() -> None:
    spec = parse("apiVersion: v1\nkind: Namespace\nmetadata: {name: kube-system, labels: {tier: infra}}\n")
    assert spec.namespaces["kube-system"] == {"tier": "infra", "kubernetes.io/metadata.name": "kube-system"}


def test_lab_cidrs_may_not_overlap_the_external_range() -> None:
    with pytest.raises(ValidationError, match=re.escape("the pod CIDR and the lab world overlap")):
        check_lab_cidrs("198.51.100.0/24", "10.96.0.0/16")
