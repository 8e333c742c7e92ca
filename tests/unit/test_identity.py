"""Identities, IPAM and lab names: pure logic, no root."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.errors import ValidationError
from workbench.lab.identity import IdentityAllocator, identity_labels
from workbench.lab.ipam import AddressPool, check_lab_cidrs
from workbench.lab.names import check_lab_name
from workbench.node.topology import lxc_name

NS = {"kubernetes.io/metadata.name": "default"}


def test_identity_labels_follow_cilium() -> None:
    labels = identity_labels({"org": "empire", "pod-template-hash": "abc"}, "default", NS)
    assert labels == ("k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=default",
                      "k8s:io.kubernetes.pod.namespace=default", "k8s:org=empire")


def test_same_label_set_same_id_from_256() -> None:
    alloc = IdentityAllocator()
    a = alloc.allocate(identity_labels({"class": "deathstar"}, "default", NS))
    b = alloc.allocate(identity_labels({"class": "xwing"}, "default", NS))
    again = alloc.allocate(identity_labels({"class": "deathstar"}, "default", NS))
    assert (a.id, b.id, again.id) == (256, 257, 256)
    assert alloc.lookup(2) is not None and alloc.lookup(2).labels == ("reserved:world",)  # type: ignore[union-attr]
    assert [i.id for i in alloc.all()] == [1, 2, 4, 256, 257]


def test_namespace_is_part_of_the_identity() -> None:
    alloc = IdentityAllocator()
    a = alloc.allocate(identity_labels({"app": "x"}, "a", {"kubernetes.io/metadata.name": "a"}))
    b = alloc.allocate(identity_labels({"app": "x"}, "b", {"kubernetes.io/metadata.name": "b"}))
    assert a.id != b.id


def test_allocation_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "identities.json"
    first = IdentityAllocator(path)
    ids = [first.allocate((f"k8s:app={n}",)).id for n in ("a", "b", "c")]
    second = IdentityAllocator(path)
    assert [second.allocate((f"k8s:app={n}",)).id for n in ("c", "a", "b")] == [ids[2], ids[0], ids[1]]
    assert second.allocate(("k8s:app=d",)).id == 259


def test_address_pool_skips_reserved_and_reports_exhaustion() -> None:
    pool = AddressPool("10.0.0.0/28")
    pool.reserve("10.0.0.11")
    assert [pool.allocate() for _ in range(3)] == ["10.0.0.10", "10.0.0.12", "10.0.0.13"]
    pool.allocate()
    with pytest.raises(ValidationError, match="no free addresses"):
        pool.allocate()
    with pytest.raises(ValidationError, match="not inside"):
        pool.reserve("10.1.0.1")


@pytest.mark.parametrize(("pod", "svc", "message"), [
    ("10.244.0.0/16", "10.244.128.0/17", "overlap"),
    ("8.8.0.0/16", "10.96.0.0/16", "private"),
    ("10.244.0.0/33", "10.96.0.0/16", "not an IPv4 network"),
])
def test_lab_cidrs_are_checked(pod: str, svc: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        check_lab_cidrs(pod, svc)


@pytest.mark.parametrize("name", ["default", "t1a2b3", "lab2"])
def test_valid_lab_names(name: str) -> None:
    assert check_lab_name(name) == name


@pytest.mark.parametrize("name", ["", "Bad", "with-dash", "1abc", "x" * 21])
def test_invalid_lab_names(name: str) -> None:
    with pytest.raises(ValidationError, match="lab name"):
        check_lab_name(name)


def test_lxc_names_fit_the_interface_name_limit() -> None:
    names = {lxc_name("default", f"pod{i}") for i in range(1000)}
    assert len(names) == 1000
    assert all(len(n) == 14 and n.startswith("lxc") for n in names)
