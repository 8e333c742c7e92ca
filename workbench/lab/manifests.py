"""Kubernetes manifests -> the lab's pods, services and namespaces.

Supports v1 Namespace, v1 Pod, apps/v1 Deployment and v1 Service from
multi-document YAML, and the lab's own workbench.dev/v1 ExternalHost (a named
host of the lab's world, docs/dns.md). Everything is validated before anything is created:
an error names the document (source, index, kind/name) and the field path,
e.g. ``spec.template.spec.containers[0].ports[0].containerPort``. Unknown kinds
and unknown fields are skipped with a warning.

Example::

    >>> spec = parse_manifests([DEMO_MANIFEST.read_text()])
    >>> sorted(p.name.split("-")[0] for p in spec.pods)
    ['deathstar', 'deathstar', 'tiefighter', 'xwing']
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import ValidationError
from workbench.lab.ipam import EXTERNAL_HOST_CIDRS, WORLD_GATEWAY, WORLD_HOST
from workbench.lab.model import PORT_NAME
from workbench.lab.yamldocs import MalformedYAML, load_yaml_documents, read_text_file

DEMO_MANIFEST = Path(__file__).resolve().parents[1] / "data" / "starwars.yaml"

# Images that stand for the Cilium star-wars deathstar (any registry, any tag).
DEATHSTAR_IMAGES = ("cilium/starwars",)
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

# RFC 1123 names as Kubernetes checks them (pods and services).
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_KEY_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
# The characters Kubernetes uses for generated name suffixes (no vowels, no look-alikes).
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"

_KNOWN_TOP = {"apiVersion", "kind", "metadata", "spec", "status"}
_KNOWN_METADATA = {"name", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation",
                   "creationTimestamp", "ownerReferences", "finalizers", "managedFields", "generateName"}
_KNOWN_CONTAINER = {"name", "image", "ports", "command", "args", "env", "envFrom", "imagePullPolicy",
                    "resources", "volumeMounts", "livenessProbe", "readinessProbe", "startupProbe",
                    "securityContext", "workingDir", "lifecycle", "stdin", "tty", "terminationMessagePath",
                    "terminationMessagePolicy", "volumeDevices"}
SUPPORTED_KINDS = {("v1", "Namespace"), ("v1", "Pod"), ("apps/v1", "Deployment"), ("v1", "Service"),
                   ("workbench.dev/v1", "ExternalHost")}

# The lab's own DNS service (workbench/lab/clusterdns.py adds it to every lab; a manifest may not define it).
CLUSTER_DOMAIN = "cluster.local"
KUBE_DNS_NAME = "kube-dns"
KUBE_DNS_NAMESPACE = "kube-system"
# External hosts live on the documentation ranges behind the lab's world link (never routed on the internet),
# minus the addresses the lab uses itself there: the node's world0 and the world host.
EXTERNAL_HOST_RESERVED = {WORLD_GATEWAY: "the node's world link", WORLD_HOST: "the world host"}
DEFAULT_EXTERNAL_TTL = 30
_KNOWN_EXTERNAL_SPEC = {"hostname", "ip", "ports", "ttl"}


@dataclass
class ContainerPort:
    port: int
    protocol: str = "TCP"
    name: str = ""


@dataclass
class PodSpec:
    """One pod to create. ``app`` is the built-in app standing in for the image."""

    name: str
    namespace: str
    labels: dict[str, str]
    image: str
    ports: list[ContainerPort] = field(default_factory=list)
    app: str = "idle"            # deathstar | echo | idle
    owner: str = ""              # Deployment name


@dataclass
class ServicePortSpec:
    port: int
    target_port: int | str       # a number, or the name of a container port
    protocol: str = "TCP"
    name: str = ""


@dataclass
class ServiceSpec:
    name: str
    namespace: str
    selector: dict[str, str]
    ports: list[ServicePortSpec]
    cluster_ip: str | None = None


@dataclass
class ExternalHostSpec:
    """A host outside the cluster, by name: an address of the lab's world netns serving HTTP on ``ports``.

    Pods resolve ``hostname`` through the lab's DNS service (answer TTL ``ttl``).
    """

    name: str                    # metadata.name of the ExternalHost document
    hostname: str                # e.g. api.github.com
    ip: str                      # in 192.0.2.0/24 or 198.51.100.0/24
    ports: list[int] = field(default_factory=lambda: [80])
    ttl: int = DEFAULT_EXTERNAL_TTL


@dataclass
class LabSpec:
    """Everything a lab is made of, validated. Crosses to the agent as JSON."""

    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)   # name -> labels
    pods: list[PodSpec] = field(default_factory=list)
    services: list[ServiceSpec] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    external_hosts: list[ExternalHostSpec] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabSpec:
        pods = [PodSpec(**{**p, "ports": [ContainerPort(**c) for c in p["ports"]]}) for p in data["pods"]]
        services = [ServiceSpec(**{**s, "ports": [ServicePortSpec(**sp) for sp in s["ports"]]})
                    for s in data["services"]]
        hosts = [ExternalHostSpec(**{**h, "ports": list(h["ports"])}) for h in data.get("external_hosts", [])]
        return cls(dict(data["namespaces"]), pods, services, list(data.get("warnings", [])), hosts)


class _Doc:
    """Field access for one document that turns every mistake into a located ValidationError."""

    def __init__(self, source: str, index: int, body: dict[str, Any]) -> None:
        self.source, self.index, self.body = source, index, body
        raw_meta = body.get("metadata")
        meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
        self.kind = str(body.get("kind", "?"))
        self.name = str(meta.get("name", "?"))
        self.warnings: list[str] = []

    @property
    def where(self) -> str:
        return f"{self.source} document {self.index} ({self.kind}/{self.name})"

    def fail(self, path: str, message: str) -> ValidationError:
        return ValidationError(f"{self.where}: {path}: {message}")

    def warn_unknown(self, obj: dict[str, Any], known: set[str], path: str) -> None:
        for key in obj:
            if key not in known:
                self.warnings.append(f"{self.where}: {path}{'.' if path else ''}{key}: unknown field ignored")

    def mapping(self, obj: Any, path: str, required: bool = True) -> dict[str, Any]:
        if obj is None and not required:
            return {}
        if not isinstance(obj, dict):
            raise self.fail(path, f"must be a mapping, got {_show(obj)}")
        return obj

    def sequence(self, obj: Any, path: str, required: bool = True) -> list[Any]:
        if obj is None and not required:
            return []
        if not isinstance(obj, list):
            raise self.fail(path, f"must be a list, got {_show(obj)}")
        return obj

    def string(self, obj: Any, path: str) -> str:
        if not isinstance(obj, str) or not obj:
            raise self.fail(path, f"must be a non-empty string, got {_show(obj)}")
        return obj

    def dns_name(self, obj: Any, path: str, label: bool = False) -> str:
        value = self.string(obj, path)
        pattern = _DNS_LABEL if label else _DNS_SUBDOMAIN
        if len(value) > (63 if label else 253) or not pattern.match(value):
            raise self.fail(path, f"{value!r} is not a valid RFC 1123 {'label' if label else 'name'} "
                                  "(lowercase letters, digits, '-')")
        return value

    def port(self, obj: Any, path: str) -> int:
        if isinstance(obj, bool) or not isinstance(obj, int) or not 1 <= obj <= 65535:
            raise self.fail(path, f"must be an integer 1-65535, got {_show(obj)}")
        return obj

    def protocol(self, obj: Any, path: str) -> str:
        if obj is None:
            return "TCP"
        if obj not in ("TCP", "UDP"):
            raise self.fail(path, f"must be TCP or UDP, got {_show(obj)}")
        return str(obj)

    def labels(self, obj: Any, path: str) -> dict[str, str]:
        labels = self.mapping(obj, path, required=False)
        out: dict[str, str] = {}
        for key, value in labels.items():
            if not isinstance(key, str) or not _valid_label_key(key):
                raise self.fail(f"{path}", f"invalid label key {_show(key)}")
            if isinstance(value, bool) or value is None or not isinstance(value, (str, int, float)):
                raise self.fail(f"{path}.{key}", f"label values must be strings, got {_show(value)}")
            text = str(value)
            if len(text) > 63 or not _LABEL_VALUE.match(text):
                raise self.fail(f"{path}.{key}", f"invalid label value {text!r}")
            out[key] = text
        return out


def _show(obj: Any) -> str:
    return "nothing" if obj is None else repr(obj)


def _valid_label_key(key: str) -> bool:
    prefix, sep, name = key.rpartition("/")
    if sep and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_LABEL_KEY_NAME.match(name))


def image_app(image: str, ports: list[ContainerPort]) -> str:
    """Which built-in app stands for a container image (no images run here; docs/architecture.md)."""
    repository = image.split("@")[0]
    head, _, last = repository.rpartition("/")
    repository = f"{head}/{last.split(':')[0]}" if head else last.split(":")[0]   # drop the tag
    if any(repository.endswith(name) for name in DEATHSTAR_IMAGES):
        return "deathstar"
    return "echo" if ports else "idle"


def _port_name(doc: _Doc, name: Any, path: str) -> str:
    if not isinstance(name, str) or not PORT_NAME.match(name):
        raise doc.fail(path, f"{_show(name)} is not a valid port name (at most 15 lowercase letters, digits "
                             "and '-', with a letter, no '--' and no '-' at either end)")
    return name


def _containers(doc: _Doc, pod_spec: Any, path: str) -> tuple[str, list[ContainerPort]]:
    spec = doc.mapping(pod_spec, path)
    containers = doc.sequence(spec.get("containers"), f"{path}.containers")
    if not containers:
        raise doc.fail(f"{path}.containers", "must list at least one container")
    images: list[str] = []
    ports: list[ContainerPort] = []
    seen: set[tuple[int, str]] = set()
    names: set[str] = set()
    for ci, raw in enumerate(containers):
        cpath = f"{path}.containers[{ci}]"
        container = doc.mapping(raw, cpath)
        doc.warn_unknown(container, _KNOWN_CONTAINER, cpath)
        doc.dns_name(container.get("name"), f"{cpath}.name", label=True)
        images.append(doc.string(container.get("image"), f"{cpath}.image"))
        for pi, raw_port in enumerate(doc.sequence(container.get("ports"), f"{cpath}.ports", required=False)):
            ppath = f"{cpath}.ports[{pi}]"
            port_map = doc.mapping(raw_port, ppath)
            number = doc.port(port_map.get("containerPort"), f"{ppath}.containerPort")
            protocol = doc.protocol(port_map.get("protocol"), f"{ppath}.protocol")
            name = port_map.get("name", "")
            if name:
                _port_name(doc, name, f"{ppath}.name")
                # Policies resolve a named port per pod ("port: http"), so a name means one port.
                if name in names:
                    raise doc.fail(f"{ppath}.name", f"port name {name!r} is used twice in this pod")
                names.add(name)
            if (number, protocol) in seen:
                raise doc.fail(f"{ppath}.containerPort", f"port {number}/{protocol} is declared twice")
            seen.add((number, protocol))
            ports.append(ContainerPort(number, protocol, str(name)))
    # The first container with a known app decides; the others run beside it.
    image = next((i for i in images if image_app(i, ports) == "deathstar"), images[0])
    return image, ports


# A Deployment's pods are named NAME-<10 hash>-<5 suffix>, and every pod name must be a DNS label (it
# names the pod's netns, cgroup and hostname), so a Deployment name has 63 - 17 characters.
_DEPLOYMENT_NAME_MAX = 63 - 17


def _metadata(doc: _Doc, default_namespace: str, label: bool = True) -> tuple[str, str, dict[str, str]]:
    meta = doc.mapping(doc.body.get("metadata"), "metadata")
    doc.warn_unknown(meta, _KNOWN_METADATA, "metadata")
    name = doc.dns_name(meta.get("name"), "metadata.name", label=label)
    namespace = meta.get("namespace", default_namespace)
    namespace = doc.dns_name(namespace, "metadata.namespace", label=True)
    return name, namespace, doc.labels(meta.get("labels"), "metadata.labels")


def _template_hash(doc: _Doc, name: str, namespace: str) -> str:
    digest = hashlib.sha256(json.dumps([namespace, name, doc.body.get("spec")], sort_keys=True,
                                       default=str).encode()).digest()
    return "".join(_SUFFIX_ALPHABET[b % len(_SUFFIX_ALPHABET)] for b in digest[:10])


def _replica_suffix(template_hash: str, index: int) -> str:
    digest = hashlib.sha256(f"{template_hash}/{index}".encode()).digest()
    return "".join(_SUFFIX_ALPHABET[b % len(_SUFFIX_ALPHABET)] for b in digest[:5])


def _no_host_network(doc: _Doc, pod_spec: Any, path: str) -> None:
    """A lab pod always has its own netns: on the host's network its traffic would be this machine's."""
    if isinstance(pod_spec, dict) and pod_spec.get("hostNetwork"):
        raise doc.fail(f"{path}.hostNetwork", "true is not supported: lab pods always get their own network "
                                              "namespace, never this machine's network")


def _parse_pod(doc: _Doc, spec: LabSpec) -> None:
    name, namespace, labels = _metadata(doc, "default")
    _no_host_network(doc, doc.body.get("spec"), "spec")
    image, ports = _containers(doc, doc.body.get("spec"), "spec")
    spec.pods.append(PodSpec(name, namespace, labels, image, ports, image_app(image, ports)))


def _parse_deployment(doc: _Doc, spec: LabSpec) -> None:
    name, namespace, _ = _metadata(doc, "default")
    if len(name) > _DEPLOYMENT_NAME_MAX:
        raise doc.fail("metadata.name", f"{name[:20]!r}... has {len(name)} characters; a Deployment name may "
                                        f"have {_DEPLOYMENT_NAME_MAX}, so that its pod names are DNS labels")
    body = doc.mapping(doc.body.get("spec"), "spec")
    replicas = body.get("replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas <= 1000:
        raise doc.fail("spec.replicas", f"must be an integer 0-1000, got {_show(replicas)}")
    selector = doc.mapping(body.get("selector"), "spec.selector")
    match = doc.labels(selector.get("matchLabels"), "spec.selector.matchLabels")
    if not match:
        raise doc.fail("spec.selector.matchLabels", "must select at least one label")
    template = doc.mapping(body.get("template"), "spec.template")
    tmeta = doc.mapping(template.get("metadata"), "spec.template.metadata")
    labels = doc.labels(tmeta.get("labels"), "spec.template.metadata.labels")
    for key, value in match.items():
        if labels.get(key) != value:
            raise doc.fail("spec.template.metadata.labels",
                           f"does not match spec.selector.matchLabels ({key}={value})")
    _no_host_network(doc, template.get("spec"), "spec.template.spec")
    image, ports = _containers(doc, template.get("spec"), "spec.template.spec")
    template_hash = _template_hash(doc, name, namespace)
    for index in range(replicas):
        pod_name = f"{name}-{template_hash}-{_replica_suffix(template_hash, index)}"
        spec.pods.append(PodSpec(pod_name, namespace, {**labels, "pod-template-hash": template_hash}, image,
                                 ports, image_app(image, ports), owner=name))


def _parse_service(doc: _Doc, spec: LabSpec) -> None:
    name, namespace, _ = _metadata(doc, "default")
    doc.dns_name(name, "metadata.name", label=True)
    body = doc.mapping(doc.body.get("spec"), "spec")
    kind = body.get("type", "ClusterIP")
    if kind != "ClusterIP":
        doc.warnings.append(f"{doc.where}: spec.type: {kind} is served as ClusterIP in the lab")
    cluster_ip = body.get("clusterIP")
    if cluster_ip is not None and not isinstance(cluster_ip, str):
        raise doc.fail("spec.clusterIP", f"must be an IPv4 address, got {_show(cluster_ip)}")
    if cluster_ip == "None":
        raise doc.fail("spec.clusterIP", "headless services are not supported in the lab")
    selector = doc.labels(body.get("selector"), "spec.selector")
    raw_ports = doc.sequence(body.get("ports"), "spec.ports")
    if not raw_ports:
        raise doc.fail("spec.ports", "must list at least one port")
    ports: list[ServicePortSpec] = []
    for pi, raw in enumerate(raw_ports):
        ppath = f"spec.ports[{pi}]"
        port_map = doc.mapping(raw, ppath)
        number = doc.port(port_map.get("port"), f"{ppath}.port")
        target = port_map.get("targetPort", number)
        if isinstance(target, str) and not target.isdigit():
            doc.dns_name(target, f"{ppath}.targetPort", label=True)
        else:
            target = doc.port(int(target) if isinstance(target, str) else target, f"{ppath}.targetPort")
        ports.append(ServicePortSpec(number, target, doc.protocol(port_map.get("protocol"), f"{ppath}.protocol"),
                                     str(port_map.get("name", ""))))
    if len(ports) > 1 and any(not p.name for p in ports):
        raise doc.fail("spec.ports", "every port needs a name when a service has more than one")
    spec.services.append(ServiceSpec(name, namespace, selector, ports, cluster_ip))


def _parse_namespace(doc: _Doc, spec: LabSpec) -> None:
    meta = doc.mapping(doc.body.get("metadata"), "metadata")
    doc.warn_unknown(meta, _KNOWN_METADATA, "metadata")
    name = doc.dns_name(meta.get("name"), "metadata.name", label=True)
    labels = doc.labels(meta.get("labels"), "metadata.labels")
    spec.namespaces[name] = {**labels, NAMESPACE_NAME_LABEL: name}


def _external_hostname(doc: _Doc, obj: Any, path: str) -> str:
    value = doc.string(obj, path).rstrip(".").lower()
    labels = value.split(".")
    if (len(value) > 253 or len(labels) < 2 or not all(_DNS_LABEL.match(label) and len(label) <= 63
                                                        for label in labels)):
        raise doc.fail(path, f"{obj!r} is not a valid DNS name (dot-separated labels of lowercase letters, "
                             "digits and '-', at least two labels)")
    if labels[-1].isdigit():
        raise doc.fail(path, f"{obj!r} is not a host name (its last label is a number, like an IP address)")
    if value == CLUSTER_DOMAIN or value.endswith("." + CLUSTER_DOMAIN):
        raise doc.fail(path, f"{value!r} is inside {CLUSTER_DOMAIN}, which the lab's DNS service answers "
                             "from its pods and services")
    return value


def _external_ip(doc: _Doc, obj: Any, path: str) -> str:
    text = doc.string(obj, path)
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        raise doc.fail(path, f"{text!r} is not an IPv4 address") from None
    if not any(address in ipaddress.IPv4Network(net) for net in EXTERNAL_HOST_CIDRS):
        raise doc.fail(path, f"{text} is outside {' and '.join(EXTERNAL_HOST_CIDRS)}, the documentation ranges "
                             "the lab's world serves (no lab packet may leave the machine)")
    if str(address) in EXTERNAL_HOST_RESERVED:
        raise doc.fail(path, f"{text} is {EXTERNAL_HOST_RESERVED[str(address)]} of every lab")
    if int(address) & 0xFF in (0, 255):
        raise doc.fail(path, f"{text} is the network or broadcast address of its /24")
    return str(address)


def _parse_external_host(doc: _Doc, spec: LabSpec) -> None:
    meta = doc.mapping(doc.body.get("metadata"), "metadata")
    doc.warn_unknown(meta, _KNOWN_METADATA, "metadata")
    name = doc.dns_name(meta.get("name"), "metadata.name", label=True)
    body = doc.mapping(doc.body.get("spec"), "spec")
    doc.warn_unknown(body, _KNOWN_EXTERNAL_SPEC, "spec")
    hostname = _external_hostname(doc, body.get("hostname"), "spec.hostname")
    ip = _external_ip(doc, body.get("ip"), "spec.ip")
    raw_ports = doc.sequence(body.get("ports"), "spec.ports", required=False) or [80]
    ports: list[int] = []
    for pi, raw in enumerate(raw_ports):
        number = doc.port(raw, f"spec.ports[{pi}]")
        if number in ports:
            raise doc.fail(f"spec.ports[{pi}]", f"port {number} is listed twice")
        ports.append(number)
    ttl = body.get("ttl", DEFAULT_EXTERNAL_TTL)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= 86400:
        raise doc.fail("spec.ttl", f"must be an integer 0-86400 (seconds), got {_show(ttl)}")
    for other in spec.external_hosts:
        for field_name, value in (("name", name), ("hostname", hostname), ("ip", ip)):
            if getattr(other, field_name) == value:
                path = "metadata.name" if field_name == "name" else f"spec.{field_name}"
                raise doc.fail(path, f"{value} is already used by ExternalHost/{other.name}")
    spec.external_hosts.append(ExternalHostSpec(name, hostname, ip, ports, ttl))


_PARSERS = {"Namespace": _parse_namespace, "Pod": _parse_pod, "Deployment": _parse_deployment,
            "Service": _parse_service, "ExternalHost": _parse_external_host}


def load_documents(texts: list[tuple[str, str]]) -> list[tuple[str, int, Any]]:
    """(source, yaml text) pairs -> (source, index, document) for every non-empty document."""
    docs: list[tuple[str, int, Any]] = []
    for source, text in texts:
        try:
            loaded = load_yaml_documents(text, source)
        except MalformedYAML as err:
            raise ValidationError(f"{source}{err.at}: not valid YAML: {err.problem}") from None
        for index, body in enumerate(loaded):
            if body is None:
                continue
            if isinstance(body, dict) and body.get("kind") == "List" and isinstance(body.get("items"), list):
                docs.extend((f"{source} document {index} items", i, item) for i, item in enumerate(body["items"]))
                continue
            docs.append((source, index, body))
    return docs


def parse_manifests(texts: list[str] | list[tuple[str, str]]) -> LabSpec:
    """Validate manifests and return the LabSpec; raise ValidationError on the first bad field.

    ``texts`` are YAML strings, or (source name, YAML) pairs so that errors name the file.
    """
    pairs = [(t if isinstance(t, tuple) else (f"manifest {i}", t)) for i, t in enumerate(texts)]
    spec = LabSpec(namespaces={"default": {NAMESPACE_NAME_LABEL: "default"}})
    for source, index, body in load_documents(pairs):
        if not isinstance(body, dict):
            raise ValidationError(f"{source} document {index}: must be a mapping with apiVersion and kind, "
                                  f"got {_show(body)}")
        doc = _Doc(source, index, body)
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if not isinstance(kind, str) or not kind:
            raise doc.fail("kind", "missing")
        if not isinstance(api_version, str) or not api_version:
            raise doc.fail("apiVersion", "missing")
        if (api_version, kind) not in SUPPORTED_KINDS:
            supported = ", ".join(f"{a}/{k}" for a, k in sorted(SUPPORTED_KINDS))
            spec.warnings.append(f"{doc.where}: {api_version}/{kind} is not supported by the lab, skipped "
                                 f"(supported: {supported})")
            continue
        doc.warn_unknown(body, _KNOWN_TOP, "")
        _PARSERS[kind](doc, spec)
        spec.warnings.extend(doc.warnings)
    _check_lab(spec)
    return spec


def _check_lab(spec: LabSpec) -> None:
    """Cross-document rules: names unique in the lab, referenced namespaces exist, kube-dns is the lab's."""
    seen: dict[str, str] = {}
    for pod in spec.pods:
        if pod.name == KUBE_DNS_NAME:
            raise ValidationError(f"pod {pod.namespace}/{pod.name}: the name {KUBE_DNS_NAME} is taken by the "
                                  f"lab's own DNS pod ({KUBE_DNS_NAMESPACE}/{KUBE_DNS_NAME}, in every lab)")
        if pod.name in seen:
            raise ValidationError(f"pod name {pod.name} is used twice (namespaces {seen[pod.name]} and "
                                  f"{pod.namespace}); pod names must be unique within a lab")
        seen[pod.name] = pod.namespace
    services: set[tuple[str, str]] = set()
    for svc in spec.services:
        if (svc.namespace, svc.name) == (KUBE_DNS_NAMESPACE, KUBE_DNS_NAME):
            raise ValidationError(f"service {KUBE_DNS_NAMESPACE}/{KUBE_DNS_NAME} is the lab's own DNS service, "
                                  "created in every lab; remove it from the manifests")
        if (svc.namespace, svc.name) in services:
            raise ValidationError(f"service {svc.namespace}/{svc.name} is defined twice")
        services.add((svc.namespace, svc.name))
    used = {p.namespace for p in spec.pods} | {s.namespace for s in spec.services}
    for namespace in sorted(used - set(spec.namespaces)):
        spec.namespaces[namespace] = {NAMESPACE_NAME_LABEL: namespace}
        spec.warnings.append(f"namespace {namespace} is not declared; created with default labels")


def read_manifest_files(paths: list[str | Path]) -> LabSpec:
    """Parse manifest files (the demo when ``paths`` is empty)."""
    from workbench.errors import NotFoundError

    if not paths:
        paths = [DEMO_MANIFEST]
    texts: list[tuple[str, str]] = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise NotFoundError(f"manifest {p} does not exist")
        texts.append((p.name, read_text_file(p)))
    return parse_manifests(texts)
