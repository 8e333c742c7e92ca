"""`policy trace`: the verdict a new connection (or an HTTP request) would get now, without sending it.

Pure: the caller gives the policy (its entries as the live map holds them,
see :func:`workbench.policy.rules_view.live_entries`) and the two ends, already
resolved to addresses and identities (:class:`Party`). Each end that is a pod
of the lab judges: the source's **egress**, then the destination's
**ingress**, each as the datapath does it (bpf/lib/policy.h):

- two longest-prefix lookups, the peer's identity and identity 0 (any peer);
  a deny from either wins (POLICY_DENY, 181), otherwise an allow from either
  admits, the peer's own entry first;
- no entry: dropped when the direction is enforced (default deny,
  POLICY_DENIED, 133), passed when no policy selects it (match type ``all``);
- an endpoint in audit mode lets its would-be drop pass: the direction's
  verdict is AUDIT with the reason it would have had;
- an allowed TCP connection whose entry names the L7 proxy (at the source's
  egress, or the destination's ingress entry) is REDIRECTED. With a method
  and path, the request is then judged by the HTTP rules of both ends, as the
  proxy judges it: no rule matching means DROPPED, POLICY_DENIED, code 403
  (audit mode does not apply to the proxy);
- an allowed egress connection (UDP or TCP) whose entry has DNS rules goes to
  the DNS proxy: REDIRECTED, with the names the proxy lets through
  (``dns_rules``). What a ``toFQDNs`` rule cannot show in entries (it learns
  nothing without a DNS rule, or has selected no address yet) is in ``notes``.

The overall verdict is what the packet gets: DROPPED at the first direction
that drops it (the ingress is then not reached), else AUDIT when a direction
only passed by audit, else FORWARDED. ``*_allowed_by`` / ``*_denied_by`` name
the policies ("namespace/name", clusterwide "name") of the entry that decided
each direction; a default-deny drop has no deciding entry, its direction says
which policies made it default-deny (``enforced_by``).

Example::

    >>> from workbench.lab.model import PolicyEntry
    >>> compiled = CompiledPolicy(entries=[PolicyEntry(1, "ingress", 300, 6, 80, 16, rules=("default/rule1",))],
    ...                           enforced={(1, "ingress")})
    >>> src, dst = Party("10.0.0.2", 300, ep_id=2), Party("10.0.0.1", 301, ep_id=1)
    >>> trace_connection(compiled, src, dst, "TCP", 80).verdict
    'FORWARDED'
    >>> trace_connection(compiled, src, dst, "TCP", 81).drop_reason_desc
    'POLICY_DENIED'
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from workbench.datapath import abi
from workbench.errors import NotFoundError, ValidationError
from workbench.lab.model import ID_HOST, ID_WORLD, Direction, Endpoint, PolicyEntry, Service
from workbench.lab.names import find_endpoint
from workbench.policy.compiler import CompiledPolicy
from workbench.policy.l7 import request_allowed
from workbench.policy.ports import PORT_BITS

FORWARDED, DROPPED, AUDIT, REDIRECTED = "FORWARDED", "DROPPED", "AUDIT", "REDIRECTED"
POLICY_DENIED = abi.DROP_REASON_NAMES[abi.DROP_POLICY_DENIED]
POLICY_DENY = abi.DROP_REASON_NAMES[abi.DROP_POLICY_DENY]
L7_DENIED_CODE = 403


@dataclass(frozen=True)
class Party:
    """One end of a traced connection: a pod of the lab (``ep_id``) or an address outside it.

    ``identity`` is what the ipcache gives the address; ``audit`` the pod's
    audit flag; ``name`` how reports show it ("default/xwing", "world").
    """

    address: str
    identity: int
    ep_id: int | None = None
    name: str = ""
    audit: bool = False


@dataclass
class DirectionTrace:
    """How one direction (the source's egress or the destination's ingress) judges the connection."""

    direction: Direction
    judged: bool = False          # False: nothing judges here (see ``note``)
    note: str = "not a pod of the lab"
    reached: bool = True          # False: the packet was dropped before (at the source's egress)
    verdict: str = ""             # FORWARDED | REDIRECTED | DROPPED | AUDIT ("" when not judged)
    drop_reason_desc: str = ""    # the reason of a drop, or the would-be reason under AUDIT
    match_type: str = ""
    allowed_by: list[str] = field(default_factory=list)
    denied_by: list[str] = field(default_factory=list)
    enforced: bool = False
    enforced_by: list[str] = field(default_factory=list)
    audit: bool = False
    entry: str = ""               # the deciding map entry, e.g. "identity 258 TCP 80/16 allow"
    proxy_port: int = 0
    dns_rules: list[str] | None = None   # redirected to the DNS proxy: the names it lets through
    notes: list[str] = field(default_factory=list)

    @property
    def passes(self) -> bool:
        return self.verdict != DROPPED


@dataclass
class L7Trace:
    """The proxy's judgement of one HTTP request (only for a connection it would see)."""

    method: str
    path: str
    verdict: str
    http_code: int | None
    direction: str = ""                                       # INGRESS or EGRESS: which end's rules refused
    ingress_rules: list[str] | None = None                    # None: that end does not restrict requests
    egress_rules: list[str] | None = None


@dataclass
class TraceResult:
    """The outcome of one connection (see the module docstring); ``to_dict`` is the JSON form."""

    source: Party
    destination: Party
    protocol: str
    port: int
    verdict: str
    drop_reason_desc: str
    egress: DirectionTrace
    ingress: DirectionTrace
    l7: L7Trace | None = None
    http_code: int | None = None
    service: str = ""
    backends: list[TraceResult] = field(default_factory=list)

    def by(self, direction: Direction, what: str) -> list[str]:
        trace = self.egress if direction == "egress" else self.ingress
        if not trace.judged or not trace.reached:
            return []
        if what == "allowed" and self.l7 is not None and self.l7.verdict == DROPPED:
            return []   # the request was refused: nothing allowed it
        return list(trace.allowed_by if what == "allowed" else trace.denied_by)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "verdict": self.verdict, "drop_reason_desc": self.drop_reason_desc,
            "source": asdict(self.source), "destination": asdict(self.destination),
            "protocol": self.protocol, "port": self.port, "service": self.service,
            "ingress_allowed_by": self.by("ingress", "allowed"), "egress_allowed_by": self.by("egress", "allowed"),
            "ingress_denied_by": self.by("ingress", "denied"), "egress_denied_by": self.by("egress", "denied"),
            "http_code": self.http_code,
            "egress": asdict(self.egress), "ingress": asdict(self.ingress),
            "l7": asdict(self.l7) if self.l7 is not None else None,
        }
        if self.backends:
            out["backends"] = [b.to_dict() for b in self.backends]
        return out


def _matches(entry: PolicyEntry, protocol: int, port: int) -> bool:
    if entry.protocol == 0:
        return True
    if entry.protocol != protocol:
        return False
    return (port >> (PORT_BITS - entry.port_prefix)) == (entry.port >> (PORT_BITS - entry.port_prefix))


def _longest(entries: list[PolicyEntry], identity: int, protocol: int, port: int) -> PolicyEntry | None:
    """The policy map's longest-prefix match for one identity: a protocol beats any, longer port blocks win."""
    hits = [e for e in entries if e.identity == identity and _matches(e, protocol, port)]
    if not hits:
        return None
    return max(hits, key=lambda e: (e.protocol != 0, e.port_prefix if e.protocol else -1))


def _entry_text(entry: PolicyEntry) -> str:
    proto = abi.POLICY_PROTOCOL_NAMES.get(entry.protocol, str(entry.protocol))
    port = "" if entry.protocol == 0 else f" {entry.port}/{entry.port_prefix}"
    peer = "any peer" if entry.identity == 0 else f"identity {entry.identity}"
    return f"{peer} {proto}{port} {'deny' if entry.deny else 'allow'}"


def judge(compiled: CompiledPolicy, ep_id: int, direction: Direction, peer_identity: int, protocol: str,
          port: int, *, audit: bool = False) -> DirectionTrace:
    """One direction of one endpoint, as the datapath decides a new connection (module docstring)."""
    proto = abi.POLICY_PROTOCOLS[protocol.upper()]
    mine = compiled.entries_for(ep_id, direction)
    by_peer = _longest(mine, peer_identity, proto, port)
    by_any = _longest(mine, 0, proto, port) if peer_identity != 0 else None
    enforced = (ep_id, direction) in compiled.enforced
    out = DirectionTrace(direction, judged=True, enforced=enforced, audit=audit,
                         enforced_by=sorted(compiled.enforced_by.get((ep_id, direction), ())) if enforced else [])
    decided = next((e for e in (by_peer, by_any) if e is not None and e.deny), None)
    if decided is not None:
        out.drop_reason_desc, out.denied_by = POLICY_DENY, list(decided.rules)
    else:
        decided = by_peer or by_any
        if decided is not None:
            out.allowed_by, out.proxy_port = list(decided.rules), decided.proxy_port
        elif enforced:
            out.drop_reason_desc = POLICY_DENIED
    if decided is not None:
        out.match_type, out.entry = decided.match_type, _entry_text(decided)
    else:
        out.match_type = abi.MATCH_TYPE_NAMES[abi.MATCH_ALL if not enforced else abi.MATCH_NONE]
    out.notes = list(compiled.notes.get((ep_id, direction), ()))
    if out.drop_reason_desc:
        out.verdict = AUDIT if audit else DROPPED
        out.proxy_port = 0
        return out
    names = compiled.dns_rules(ep_id, direction, peer_identity, proto, port) if out.proxy_port else None
    if names is not None:
        out.dns_rules = [str(n) for n in names]
    # only TCP goes to the HTTP proxy; the DNS proxy takes UDP queries too
    redirected = out.proxy_port and (proto == abi.IPPROTO_TCP or names is not None)
    out.verdict = REDIRECTED if redirected else FORWARDED
    return out


def judge_request(compiled: CompiledPolicy, src: Party, dst: Party, port: int, method: str, path: str,
                  headers: dict[str, str] | None = None) -> L7Trace | None:
    """The proxy's decision on a request (None when no L7 rule restricts this connection).

    The destination's ingress rules and the source's egress rules must both
    allow it (docs/policy.md, L7 HTTP); ``headers`` keyed by lower-case name.
    """
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    ingress = compiled.http_rules(dst.ep_id, "ingress", src.identity, port) if dst.ep_id is not None else None
    egress = compiled.http_rules(src.ep_id, "egress", dst.identity, port) if src.ep_id is not None else None
    if ingress is None and egress is None:
        return None
    refused = ""
    if ingress is not None and not request_allowed(ingress, method, path, headers):
        refused = "INGRESS"
    elif egress is not None and not request_allowed(egress, method, path, headers):
        refused = "EGRESS"
    return L7Trace(method, path, DROPPED if refused else FORWARDED, L7_DENIED_CODE if refused else None, refused,
                   None if ingress is None else [str(r) for r in ingress],
                   None if egress is None else [str(r) for r in egress])


def trace_connection(compiled: CompiledPolicy, src: Party, dst: Party, protocol: str, port: int, *,
                     method: str | None = None, path: str | None = None,
                     headers: dict[str, str] | None = None) -> TraceResult:
    """The verdict of a new connection ``src`` -> ``dst`` on ``protocol``/``port`` (module docstring).

    ``method``/``path`` (TCP only) trace an HTTP request as well: on a
    connection the L7 proxy sees, the request is judged by the HTTP rules.
    """
    protocol = protocol.upper()
    if src.ep_id is not None and src.ep_id == dst.ep_id:
        # a pod reaching itself (e.g. through its own service): the packet never leaves the pod
        alone = "the pod reaches itself: no program sees the packet"
        return TraceResult(src, dst, protocol, port, FORWARDED, "", DirectionTrace("egress", note=alone),
                           DirectionTrace("ingress", note=alone))
    if src.ep_id is not None:
        egress = judge(compiled, src.ep_id, "egress", dst.identity, protocol, port, audit=src.audit)
    else:
        egress = DirectionTrace("egress")
    if dst.ep_id is not None:
        ingress = judge(compiled, dst.ep_id, "ingress", src.identity, protocol, port, audit=dst.audit)
    else:
        ingress = DirectionTrace("ingress")
    ingress.reached = egress.passes
    if egress.verdict == FORWARDED and ingress.verdict == REDIRECTED:
        egress.verdict = REDIRECTED   # the source's program redirects to the destination's proxy (lib/l7.h)
    verdict, reason = FORWARDED, ""
    for step in (egress, ingress):
        if step.judged and step.reached and step.verdict in (DROPPED, AUDIT):
            if step.verdict == DROPPED:
                verdict, reason = DROPPED, step.drop_reason_desc
                break
            if verdict != AUDIT:
                verdict, reason = AUDIT, step.drop_reason_desc
    result = TraceResult(src, dst, protocol, port, verdict, reason, egress, ingress)
    if verdict != DROPPED and protocol == "TCP" and (method or path):
        # The proxy sees the connection when an allow entry of either end names it (an audited drop is not
        # redirected); judge_request answers None when neither end has L7 rules for it.
        redirected = egress.verdict == REDIRECTED or ingress.verdict == REDIRECTED
        l7 = judge_request(compiled, src, dst, port, (method or "GET").upper(), path or "/", headers) \
            if redirected else None
        result.l7 = l7
        if l7 is not None and l7.verdict == DROPPED:
            result.verdict, result.drop_reason_desc, result.http_code = DROPPED, POLICY_DENIED, L7_DENIED_CODE
    return result


VERDICT_ORDER = {FORWARDED: 0, AUDIT: 1, DROPPED: 2}


def trace_service(compiled: CompiledPolicy, src: Party, backends: list[Party], service: str, protocol: str,
                  port: int, target_port: int, **request: Any) -> TraceResult:
    """A connection to a service: the socket LB picks one backend, so each backend is traced.

    The result is the backend with the worst verdict (DROPPED, then AUDIT, then
    FORWARDED), with every backend's trace in ``backends``: FORWARDED means
    every backend would forward it.
    """
    traces = [trace_connection(compiled, src, b, protocol, target_port, **request) for b in backends]
    if not traces:
        raise ValidationError(f"service {service} has no backends to trace")
    worst = max(traces, key=lambda t: VERDICT_ORDER.get(t.verdict, 0))
    result = TraceResult(**{**worst.__dict__, "backends": traces, "service": service, "port": port})
    return result


# ---- naming the ends: pods, services, addresses ---------------------------------------------------

def _pod(endpoints: list[Endpoint], text: str) -> Endpoint | None:
    namespace, sep, name = text.rpartition("/")
    for ep in endpoints:
        if ep.pod == (name if sep else text) and (not sep or namespace in (ep.namespace, "deploy", "deployment")):
            return ep
    if sep and namespace in ("deploy", "deployment"):
        return find_endpoint(endpoints, text)
    return None


def _service(services: list[Service], text: str) -> Service | None:
    for svc in services:
        if text in (svc.name, f"{svc.namespace}/{svc.name}", svc.cluster_ip):
            return svc
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def pod_party(ep: Endpoint, audit: Mapping[int, bool]) -> Party:
    return Party(ep.ipv4, ep.identity, ep.id, f"{ep.namespace}/{ep.pod}", bool(audit.get(ep.id)))


def outside_party(address: str, identity: int, labels: Mapping[int, tuple[str, ...]]) -> Party:
    """An address outside the lab's pods, named by its identity ("world", "host", its CIDR labels or,
    for an address learned from DNS, its fqdn labels: "fqdn:api.github.com")."""
    names = {ID_WORLD: "world", ID_HOST: "host"}
    mine = labels.get(identity, ())
    fqdns = [label for label in mine if label.startswith("fqdn:")]
    name = names.get(identity) or ",".join(fqdns or mine) or f"identity {identity}"
    return Party(address, identity, None, name)


@dataclass
class Ends:
    """The resolved ends of a trace: one source, and one destination or a service's backends."""

    source: Party
    destinations: list[Party]
    service: str = ""
    port: int = 0           # the port the client connects to (the service port for a service)
    target_port: int = 0    # the port the backend sees


def resolve_ends(source: str, destination: str, port: int, protocol: str, endpoints: list[Endpoint],
                 services: list[Service], ipcache: Callable[[str], int], audit: Mapping[int, bool],
                 labels: Mapping[int, tuple[str, ...]]) -> Ends:
    """``--from``/``--to`` as the lab knows them.

    A pod is "pod", "namespace/pod" or "deploy/NAME"; a service "name",
    "namespace/name" or its cluster IP (each backend is traced, with the
    service port mapped to its target port); an IP is a pod's when a pod has
    it, else what ``ipcache`` (the live ipcache's longest prefix) says.
    """
    by_ip = {ep.ipv4: ep for ep in endpoints}

    def party(text: str, role: str) -> Party:
        ep = by_ip.get(text) if _is_ip(text) else _pod(endpoints, text)
        if ep is not None:
            return pod_party(ep, audit)
        if _is_ip(text):
            return outside_party(text, ipcache(text), labels)
        pods = ", ".join(sorted(ep.pod for ep in endpoints)) or "(none)"
        raise NotFoundError(f"trace {role} {text!r} is neither a pod, a service nor an IPv4 address; pods: {pods}")

    src = party(source, "--from")
    svc = _service(services, destination) if not (_is_ip(destination) and destination in by_ip) else None
    if svc is None or _pod(endpoints, destination) is not None and not _is_ip(destination):
        return Ends(src, [party(destination, "--to")], port=port, target_port=port)
    found = next((p for p in svc.ports if p.port == port and p.protocol.upper() == protocol.upper()), None)
    if found is None:
        ports = ", ".join(f"{p.port}/{p.protocol}" for p in svc.ports)
        raise NotFoundError(f"service {svc.namespace}/{svc.name} has no port {port}/{protocol.upper()}; "
                            f"ports: {ports}")
    backends = [pod_party(ep, audit) for name in svc.backends for ep in endpoints if ep.pod == name]
    return Ends(src, backends, f"{svc.namespace}/{svc.name}", port, found.target_port)


def trace(compiled: CompiledPolicy, ends: Ends, protocol: str, **request: Any) -> TraceResult:
    """:func:`trace_connection` or, for a service, :func:`trace_service` over resolved ``ends``."""
    if ends.service:
        return trace_service(compiled, ends.source, ends.destinations, ends.service, protocol, ends.port,
                             ends.target_port, **request)
    return trace_connection(compiled, ends.source, ends.destinations[0], protocol, ends.port, **request)


# ---- text ---------------------------------------------------------------------------------------

def _direction_line(d: Mapping[str, Any], end: str) -> str:
    name = f"{d['direction']} of {end}"
    if not d["judged"]:
        return f"  {name}: not judged ({d['note']})"
    if not d["reached"]:
        return f"  {name}: not reached"
    parts = [d["verdict"]]
    if d["drop_reason_desc"]:
        parts.append(d["drop_reason_desc"] + (" (audit mode: passes)" if d["verdict"] == AUDIT else ""))
    parts.append(f"match {d['match_type']}")
    if d["entry"]:
        parts.append(f"entry {d['entry']}")
    policies = d["denied_by"] or d["allowed_by"]
    if policies:
        parts.append(("denied by " if d["denied_by"] else "allowed by ") + ", ".join(policies))
    elif d["drop_reason_desc"] == POLICY_DENIED:
        parts.append("default deny from " + (", ".join(d["enforced_by"]) or "a policy"))
    elif not d["enforced"]:
        parts.append("no policy selects this direction")
    if d["proxy_port"] and d.get("dns_rules") is not None:
        parts.append(f"to the DNS proxy (port {d['proxy_port']}), names {' | '.join(d['dns_rules'])}")
    elif d["proxy_port"]:
        parts.append(f"to the L7 proxy (port {d['proxy_port']})")
    lines = [f"  {name}: " + "; ".join(parts)]
    lines += [f"    note: {note}" for note in d.get("notes", ())]
    return "\n".join(lines)


def format_trace(result: Mapping[str, Any]) -> str:
    """A :meth:`TraceResult.to_dict` as lines of text (what `workbench policy trace` prints)."""
    src, dst = result["source"], result["destination"]
    head = f"{src['name']} ({src['address']}, identity {src['identity']}) -> "
    head += (f"service {result['service']} -> " if result.get("service") else "")
    head += f"{dst['name']} ({dst['address']}, identity {dst['identity']}) {result['port']}/{result['protocol']}"
    verdict = result["verdict"] + (f" {result['drop_reason_desc']}" if result["drop_reason_desc"] else "")
    if result.get("http_code"):
        verdict += f" (HTTP {result['http_code']})"
    lines = [head, f"verdict: {verdict}"]
    lines.append(_direction_line(result["egress"], src["name"]))
    lines.append(_direction_line(result["ingress"], dst["name"]))
    l7 = result.get("l7")
    if l7:
        which = f", refused by the {l7['direction'].lower()} rules" if l7["direction"] else ""
        lines.append(f"  L7: {l7['method']} {l7['path']}: {l7['verdict']}{which}")
        for side in ("ingress", "egress"):
            if l7[f"{side}_rules"] is not None:
                lines.append(f"    {side} HTTP rules: {' | '.join(l7[f'{side}_rules'])}")
    for backend in result.get("backends", []):
        b = backend["destination"]
        reason = f" {backend['drop_reason_desc']}" if backend["drop_reason_desc"] else ""
        lines.append(f"  backend {b['name']} ({b['address']}:{backend['port']}): {backend['verdict']}{reason}")
    return "\n".join(lines)
