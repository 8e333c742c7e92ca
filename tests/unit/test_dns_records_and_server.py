"""The lab's DNS without a kernel: the kube-dns spec, the records, and the server's answers to wire messages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from workbench.errors import ValidationError
from workbench.lab.clusterdns import dns_service_ip, resolv_conf, with_cluster_dns
from workbench.lab.dnsrecords import lab_records, records_json
from workbench.lab.identity import identity_labels
from workbench.lab.manifests import DEMO_MANIFEST, parse_manifests
from workbench.lab.model import Endpoint, Service
from workbench.lab.services import build_frontends
from workbench.node.dnsapp import RecordFile, answer


def test_every_lab_gets_kube_dns_after_its_own_pods() -> None:
    demo = parse_manifests([DEMO_MANIFEST.read_text()])
    spec = with_cluster_dns(demo, "10.96.0.0/16")
    assert [p.name for p in spec.pods[:-1]] == [p.name for p in demo.pods]     # their addresses stay
    dns_pod, dns_svc = spec.pods[-1], spec.services[-1]
    assert (dns_pod.name, dns_pod.namespace, dns_pod.labels, dns_pod.app) == \
        ("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, "dns")
    assert (dns_svc.name, dns_svc.namespace, dns_svc.cluster_ip) == ("kube-dns", "kube-system", "10.96.0.10")
    assert [(p.name, p.port, p.protocol) for p in dns_svc.ports] == [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")]
    labels = identity_labels(dns_pod.labels, "kube-system", spec.namespaces["kube-system"])
    assert {"k8s:k8s-app=kube-dns", "k8s:io.kubernetes.pod.namespace=kube-system"} <= set(labels)
    assert with_cluster_dns(spec, "10.96.0.0/16") == spec                       # idempotent
    assert demo.pods[-1].name == "xwing"                                         # the input is left alone
    (frontend_udp, frontend_tcp) = build_frontends([(dns_svc, "10.96.0.10")], [(dns_pod, "10.244.0.14")])
    assert frontend_udp.backends == frontend_tcp.backends == [("kube-dns", "10.244.0.14", 53)]


@pytest.mark.parametrize(("cidr", "address"), [("10.96.0.0/16", "10.96.0.10"), ("10.78.0.0/16", "10.78.0.10"),
                                               ("172.20.0.0/24", "172.20.0.10")])
def test_the_dns_service_is_the_service_cidrs_dot_10(cidr: str, address: str) -> None:
    assert dns_service_ip(cidr) == address


def test_a_service_that_asks_for_the_dns_address_is_refused() -> None:
    spec = parse_manifests(["apiVersion: v1\nkind: Service\nmetadata: {name: web}\n"
                            "spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n"])
    with pytest.raises(ValidationError, match="service default/web: clusterIP 10.96.0.10 is the address of the "
                                              "lab's DNS service kube-system/kube-dns"):
        with_cluster_dns(spec, "10.96.0.0/16")


def test_resolv_conf_is_the_kubelets() -> None:
    assert resolv_conf("shop", "10.96.0.10") == ("search shop.svc.cluster.local svc.cluster.local cluster.local\n"
                                                 "nameserver 10.96.0.10\noptions ndots:5\n")


def _endpoint(pod: str, namespace: str, ip: str) -> Endpoint:
    return Endpoint(1, pod, namespace, ip, 256, (), {}, f"wb-x-{pod}", "lxc0")


def test_records_name_services_pods_and_external_hosts() -> None:
    spec = with_cluster_dns(parse_manifests([DEMO_MANIFEST.read_text()]), "10.96.0.0/16")
    services = [Service("deathstar", "default", "10.96.0.11", [], {}),
                Service("kube-dns", "kube-system", "10.96.0.10", [], {})]
    endpoints = [_endpoint("xwing", "default", "10.244.0.13"), _endpoint("kube-dns", "kube-system", "10.244.0.14")]
    records = lab_records(services, endpoints, spec.external_hosts)
    assert records == {
        "deathstar.default.svc.cluster.local": [("10.96.0.11", 30)],
        "kube-dns.kube-system.svc.cluster.local": [("10.96.0.10", 30)],
        "10-244-0-13.default.pod.cluster.local": [("10.244.0.13", 30)],
        "10-244-0-14.kube-system.pod.cluster.local": [("10.244.0.14", 30)],
        "api.github.com": [("192.0.2.20", 30)],
        "support.github.com": [("192.0.2.21", 30)],
    }
    assert json.loads(records_json(records))["records"]["api.github.com"] == [{"ip": "192.0.2.20", "ttl": 30}]


@pytest.fixture
def records(tmp_path: Path) -> RecordFile:
    path = tmp_path / "dns-records.json"
    path.write_text(records_json({"deathstar.default.svc.cluster.local": [("10.96.0.11", 30)],
                                  "api.github.com": [("192.0.2.20", 60)]}))
    return RecordFile(str(path))


def query(records: RecordFile, name: str, rdtype: str = "A", udp: bool = True) -> dns.message.Message:
    wire, _ = answer(dns.message.make_query(name, rdtype).to_wire(), records, udp)
    assert wire is not None
    return dns.message.from_wire(wire)


def test_answers_records_nodata_and_nxdomain(records: RecordFile) -> None:
    reply = query(records, "DeathStar.default.svc.cluster.local")         # names are case-insensitive
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    assert [(rr.ttl, [r.to_text() for r in rr]) for rr in reply.answer] == [(30, ["10.96.0.11"])]
    nodata = query(records, "deathstar.default.svc.cluster.local", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert [rr.rdtype for rr in nodata.authority] == [dns.rdatatype.SOA]
    assert query(records, "svc.cluster.local").rcode() == dns.rcode.NOERROR          # has names below it
    assert query(records, "nosuch.default.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    external = query(records, "api.github.com", udp=False)
    assert [(rr.ttl, [r.to_text() for r in rr]) for rr in external.answer] == [(60, ["192.0.2.20"])]
    outside = query(records, "www.example.net")
    assert outside.rcode() == dns.rcode.NXDOMAIN and not outside.authority and not outside.answer
    # a name above an external host exists (RFC 8020: NXDOMAIN would deny everything below it), without data
    above = query(records, "github.com")
    assert above.rcode() == dns.rcode.NOERROR and not above.answer


def test_malformed_packets_get_formerr_or_silence(records: RecordFile) -> None:
    truncated = bytes.fromhex("beef0100000100000000000007") + b"exa"
    wire, _ = answer(truncated, records, udp=True)
    assert wire is not None
    reply = dns.message.from_wire(wire)
    assert (reply.id, reply.rcode(), bool(reply.flags & dns.flags.QR)) == (0xBEEF, dns.rcode.FORMERR, True)
    assert answer(b"\x01\x02\x03", records, udp=True)[0] is None                     # not even a header
    response = dns.message.make_response(dns.message.make_query("api.github.com", "A")).to_wire()
    assert answer(response, records, udp=True)[0] is None                           # never answer an answer
    two = dns.message.make_query("api.github.com", "A")
    two.question.append(two.question[0])
    reply_two = dns.message.from_wire(answer(two.to_wire(), records, udp=True)[0] or b"")
    assert reply_two.rcode() == dns.rcode.FORMERR


def test_the_records_file_is_read_again_when_it_changes(records: RecordFile) -> None:
    assert query(records, "added.example.org").rcode() == dns.rcode.NXDOMAIN
    path = Path(records.path)
    tmp = path.with_suffix(".new")
    tmp.write_text(records_json({"added.example.org": [("198.51.100.9", 5)]}))
    os.replace(tmp, path)
    assert [r.to_text() for r in query(records, "added.example.org").answer[0]] == ["198.51.100.9"]
    assert query(records, "api.github.com").rcode() == dns.rcode.NXDOMAIN
    path.write_text("{not json")                         # a broken file keeps the last good records
    assert query(records, "added.example.org").rcode() == dns.rcode.NOERROR
