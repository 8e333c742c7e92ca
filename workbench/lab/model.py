"""The lab's vocabulary, shared by the lab, policy, datapath and observe layers.

Plain dataclasses, no kernel access. Labels are Cilium label strings
"source:key=value" (e.g. "k8s:class=deathstar", "reserved:world"), kept as
sorted tuples so that equal label sets compare and hash equal.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from workbench.datapath import abi

Direction = Literal["ingress", "egress"]

# Reserved identities (Cilium numbering, docs/policy.md); cluster identities from 256.
ID_UNKNOWN = 0
ID_HOST = 1
ID_WORLD = 2
ID_HEALTH = 4
FIRST_CLUSTER_IDENTITY = 256
RESERVED_IDENTITIES: dict[int, tuple[str, ...]] = {
    ID_HOST: ("reserved:host",),
    ID_WORLD: ("reserved:world",),
    ID_HEALTH: ("reserved:health",),
}

# The labels Cilium derives from a pod's namespace (k8s source prefix).
NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "io.cilium.k8s.namespace.labels."

# Kubernetes' IANA_SVC_NAME: a containerPort name, and a policy's named port ("http", "serve-80-tcp").
PORT_NAME = re.compile(r"^(?=.*[a-z])(?!.*--)[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")

# Protocol names as policies and services spell them -> IP protocol number (0: any).
PROTOCOLS = abi.POLICY_PROTOCOLS


def label_tuple(labels: dict[str, str], source: str = "k8s") -> tuple[str, ...]:
    """{"class": "deathstar"} -> ("k8s:class=deathstar",)."""
    return tuple(sorted(f"{source}:{k}={v}" for k, v in labels.items()))


def parse_label(label: str) -> tuple[str, str, str]:
    """"k8s:class=deathstar" -> ("k8s", "class", "deathstar"); a missing source reads as "any"."""
    source, sep, rest = label.partition(":")
    if not sep or "=" in source:
        source, rest = "any", label
    key, _, value = rest.partition("=")
    return source, key, value


@dataclass(frozen=True)
class Identity:
    """A numeric security identity and the label set it stands for."""

    id: int
    labels: tuple[str, ...]


@dataclass
class ServicePort:
    port: int
    target_port: int
    protocol: str = "TCP"
    name: str = ""


@dataclass
class Service:
    """A ClusterIP service; backends are pod names chosen by the selector."""

    name: str
    namespace: str
    cluster_ip: str
    ports: list[ServicePort]
    selector: dict[str, str]
    backends: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Endpoint:
    """A pod as the datapath sees it."""

    id: int                      # endpoint id, unique within the lab
    pod: str
    namespace: str
    ipv4: str
    identity: int
    labels: tuple[str, ...]      # the identity's labels
    pod_labels: dict[str, str]   # the manifest's labels, for selectors
    netns: str                   # wb-<lab>-<pod>
    lxc: str                     # host-side veth in the node netns
    ifindex: int = 0             # of lxc, in the node netns
    cgroup: str = ""             # cgroup v2 path of the pod's processes
    app: str = "idle"            # built-in app: deathstar | echo | idle
    ports: list[int] = field(default_factory=list)
    owner: str = ""              # Deployment name when created by one
    # containerPort name -> (port, protocol), for policies that name ports ("port: http")
    named_ports: dict[str, tuple[int, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Endpoints come back from JSON (state.json, the local API) with the pairs as lists.
        self.named_ports = {str(k): (int(v[0]), str(v[1])) for k, v in self.named_ports.items()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PolicyEntry:
    """One policy-map entry, as the compiler emits it and the writer stores it.

    ``identity`` 0 means any peer; ``protocol`` 0 any protocol (then port is 0);
    ``port_prefix`` is how many leading bits of ``port`` must match (16 exact,
    0 any), so a port range becomes a few prefix blocks. ``shadowed`` marks a
    deny the map holds in place of an allow that a covering deny overrides (the
    compiler decides that); a live edit that removes the deny brings the allow back.
    """

    ep_id: int
    direction: Direction
    identity: int
    protocol: int
    port: int
    port_prefix: int
    deny: bool = False
    proxy_port: int = 0
    rules: tuple[str, ...] = ()   # "namespace/name" of the policies that produced it
    shadowed: bool = False

    @property
    def match_type(self) -> str:
        """Hubble's policy_match_type for a verdict decided by this entry."""
        if self.identity == 0:
            code = abi.MATCH_ALL if self.protocol == abi.PROTO_ANY else abi.MATCH_L4_ONLY
        else:
            code = abi.MATCH_L3_ONLY if self.protocol == abi.PROTO_ANY else abi.MATCH_L3_L4
        return abi.MATCH_TYPE_NAMES[code]
