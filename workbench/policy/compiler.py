"""Typed rules + the lab's endpoints and identities -> policy-map entries. Pure: no kernel.

Selectors become sets of numeric identities (0 = any peer); port ranges become
prefix blocks; CIDRs get local identities the datapath puts in its ipcache.
Deny precedence is resolved here (see :func:`resolve_deny`), so the writer can
store the entries as they are. Two lookup schemes give the right verdict on
them (the unit tests check both): (a) look up the peer's identity first and
identity 0 (any peer) only on a miss, the entry found decides; (b) look up
both, a deny from either wins, else an allow from either admits (what
bpf/lib/policy.h does). Within one identity a specific protocol beats
protocol 0 and a longer port prefix beats a shorter one (an LPM over protocol
then port bits). No entry: drop if (ep, direction) is in ``enforced``, else pass — deny
entries also apply to a direction that is not default-deny (Cilium's
``enableDefaultDeny: false``).

Example::

    >>> from workbench.lab.model import Endpoint, Identity
    >>> docs = load_documents({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
    ...     "metadata": {"name": "all-in"}, "spec": {"endpointSelector": {},
    ...     "ingress": [{"fromEntities": ["all"]}]}})
    >>> ident = Identity(256, ("k8s:app=a", "k8s:io.kubernetes.pod.namespace=default"))
    >>> ep = Endpoint(1, "a", "default", "10.0.0.1", 256, ident.labels, {"app": "a"}, "wb-x-a", "lxc1")
    >>> compiled = compile_policies(docs, [ep], [ident], {"default": {}})
    >>> [(e.ep_id, e.direction, e.identity) for e in compiled.entries], sorted(compiled.enforced)
    ([(1, 'ingress', 0)], [(1, 'ingress')])
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from workbench.datapath import abi
from workbench.errors import ValidationError
from workbench.lab.model import (
    FIRST_CLUSTER_IDENTITY,
    ID_HEALTH,
    ID_HOST,
    ID_WORLD,
    NAMESPACE_LABEL,
    RESERVED_IDENTITIES,
    Direction,
    Endpoint,
    Identity,
    PolicyEntry,
)
from workbench.policy.cidr import (
    LOCAL_IDENTITY_SCOPE,
    WORLD_PREFIX,
    CIDRRule,
    allocate_cidr_identities,
    cidr_labels,
)
from workbench.policy.documents import load_documents
from workbench.policy.fields import DocRef
from workbench.policy.fqdn import ALLOW_ALL_NAMES, FqdnSelector, fqdn_identity_prefix
from workbench.policy.l7 import ALLOW_ALL, HttpRule
from workbench.policy.ports import PORT_BITS, block_range, port_blocks
from workbench.policy.rules import Peers, PolicyDocument, PolicyRule
from workbench.policy.selectors import namespace_labels, split_label

ID_ANY = 0
ID_REMOTE_NODE = 6  # Cilium's reserved remote-node; no lab address maps to it

# The lab's L7 proxy listens on this port in the node netns; entries with L7 rules carry it.
DEFAULT_PROXY_PORT = 10080
# The agent's DNS proxy: allow entries with DNS rules (rules.dns) carry this port instead.
DEFAULT_DNS_PROXY_PORT = 10053

# A port given with "any protocol" in a live map edit means these (Cilium's ANY with SCTP enabled).
ANY_PORT_PROTOCOLS = (abi.IPPROTO_TCP, abi.IPPROTO_UDP, abi.IPPROTO_SCTP)
LIVE_EDIT_RULE = "live-edit"

__all__ = ["DEFAULT_DNS_PROXY_PORT", "DEFAULT_PROXY_PORT", "CompiledPolicy", "compile_policies", "entry_key", "live_edit",
           "load_documents", "map_entries", "resolve_deny"]

EntryKey = tuple[int, Direction, int, int, int, int]  # ep, direction, identity, protocol, port, prefix


@dataclass
class CompiledPolicy:
    """What the datapath writer needs, plus what explains it.

    ``entries``: policy-map entries (sorted); ``enforced``: (ep_id, direction)
    pairs that are default-deny; ``cidr_identities``: prefix -> identity for
    the ipcache (always includes 0.0.0.0/0 -> 2); ``identity_labels``: labels
    of every identity an entry names; ``endpoint_names``: ep_id -> "ns/pod";
    ``documents``: keys of the compiled documents; ``l7``: for every allow
    key that redirects to the proxy, the HTTP rules a request must match
    (``ALLOW_ALL`` among them when an L3/L4 rule allows the same key too);
    ``cidr_notes``: for (ep_id, direction, identity) selected through a CIDR
    rule, what that rule means for pods (:data:`~workbench.policy.cidr.K8S_IPBLOCK`
    or :data:`~workbench.policy.cidr.CILIUM_CIDR`).

    DNS: ``dns`` holds, for every allow key that redirects to the DNS proxy,
    the names a query may ask for (:data:`~workbench.policy.fqdn.ALLOW_ALL_NAMES`
    among them when an L3/L4 rule allows the same key too); ``fqdn_selectors``
    every ``toFQDNs`` selector of the documents (the agent labels an address
    from a DNS answer with those matching the name asked); ``cidr_identities``
    also maps the /32 of every fqdn identity given to the compile, so the
    ipcache resolves the address to it; ``notes``: (ep_id, direction) -> lines
    that explain what the entries cannot show (a ``toFQDNs`` rule that learns
    nothing).
    """

    entries: list[PolicyEntry] = field(default_factory=list)
    enforced: set[tuple[int, Direction]] = field(default_factory=set)
    cidr_identities: dict[str, int] = field(default_factory=lambda: {WORLD_PREFIX: ID_WORLD})
    identity_labels: dict[int, tuple[str, ...]] = field(default_factory=dict)
    endpoint_names: dict[int, str] = field(default_factory=dict)
    documents: tuple[str, ...] = ()
    l7: dict[EntryKey, tuple[HttpRule, ...]] = field(default_factory=dict)
    cidr_notes: dict[tuple[int, Direction, int], tuple[str, ...]] = field(default_factory=dict)
    # Where each rule went, for `policy rules` and `policy trace`: (policy key, rule path such as
    # "spec.ingress[0]") -> the entry keys that rule produced, before deny resolution and slot expansion
    # (workbench.policy.rules_view maps them onto the live map's slots).
    rule_keys: dict[tuple[str, str], set[EntryKey]] = field(default_factory=dict)
    # (ep_id, direction) -> the policies that make it default-deny (the "why" of a POLICY_DENIED drop)
    enforced_by: dict[tuple[int, Direction], set[str]] = field(default_factory=dict)
    dns: dict[EntryKey, tuple[FqdnSelector, ...]] = field(default_factory=dict)
    fqdn_selectors: tuple[FqdnSelector, ...] = ()
    notes: dict[tuple[int, Direction], tuple[str, ...]] = field(default_factory=dict)

    def dns_rules(self, ep_id: int, direction: Direction, identity: int, protocol: int,
                  port: int) -> tuple[FqdnSelector, ...] | None:
        """The names a DNS query of endpoint ``ep_id`` to ``identity`` on ``protocol``/``port`` may ask for.

        The DNS proxy asks this for (client endpoint, "egress", identity of the
        DNS server, 17 or 6, 53). None when no DNS rule restricts it (the query
        is not for the DNS proxy). Mirrors the datapath's two lookups (the
        peer's identity and any peer): every allow entry that matches
        contributes its DNS rules, and one without DNS rules (an L3/L4 allow
        covering the same query) contributes :data:`ALLOW_ALL_NAMES`, as
        Cilium's wildcard does; :func:`~workbench.policy.fqdn.names_allowed`
        judges a name against the result.
        """
        found: list[FqdnSelector] = []
        restricted = False
        for entry in self.allow_entries(ep_id, direction, identity, protocol, port):
            rules = self.dns.get(entry_key(entry))
            if rules is None:
                found.append(ALLOW_ALL_NAMES)
                continue
            restricted = True
            found.extend(rules)
        return tuple(dict.fromkeys(found)) if restricted else None

    def http_rules(self, ep_id: int, direction: Direction, identity: int,
                   port: int) -> tuple[HttpRule, ...] | None:
        """The HTTP rules for a TCP connection from/to ``identity`` on ``port`` of endpoint ``ep_id``.

        None when no L7 rule restricts it (not proxied, or an L3/L4 allow covers
        it: Cilium's wildcard). Mirrors the datapath's two lookups (the peer's
        identity and any peer): every allow entry that matches contributes.
        """
        found: list[HttpRule] = []
        restricted = False
        for entry in self.allow_entries(ep_id, direction, identity, abi.IPPROTO_TCP, port):
            rules = self.l7.get(entry_key(entry))
            if rules is None:
                return None  # an L3/L4 allow for this peer and port: every request passes
            restricted = True
            found.extend(rules)
        return tuple(dict.fromkeys(found)) if restricted else None

    def allow_entries(self, ep_id: int, direction: Direction, identity: int, protocol: int,
                      port: int) -> list[PolicyEntry]:
        """The allow entries a new connection of ``ep_id`` with ``identity`` on ``protocol``/``port`` meets in
        the datapath's two lookups (the peer's identity and any peer), whatever their prefix length."""
        def port_in(entry: PolicyEntry) -> bool:
            shift = PORT_BITS - entry.port_prefix
            return not entry.protocol or (port >> shift) == (entry.port >> shift)

        return [e for e in self.entries
                if (e.ep_id, e.direction) == (ep_id, direction) and not e.deny
                and e.identity in (identity, ID_ANY) and e.protocol in (0, protocol) and port_in(e)]

    def entries_for(self, ep_id: int, direction: Direction | None = None) -> list[PolicyEntry]:
        return [e for e in self.entries if e.ep_id == ep_id and direction in (None, e.direction)]

    def entries_from(self, document_key: str) -> list[PolicyEntry]:
        """The entries a document ("default/rule1") contributed to."""
        return [e for e in self.entries if document_key in e.rules]


def compile_policies(documents: Iterable[PolicyDocument], endpoints: list[Endpoint],
                     identities: list[Identity], namespaces: Mapping[str, Mapping[str, str]], *,
                     previous_cidr_identities: Mapping[str, int] | None = None,
                     proxy_port: int = DEFAULT_PROXY_PORT, max_entries: int | None = None,
                     dns_proxy_port: int = DEFAULT_DNS_PROXY_PORT) -> CompiledPolicy:
    """Compile validated documents against the lab's endpoints and identities.

    ``namespaces`` maps namespace name -> its labels (``kubernetes.io/metadata.name``
    is implied). Allow entries with L7 (HTTP) rules get ``proxy_port``, those
    with DNS rules ``dns_proxy_port``; one key reached by both is refused (as
    Cilium refuses two L7 protocols on one port). ``previous_cidr_identities`` (the last compile's
    ``cidr_identities``) keeps CIDR identity numbers stable across recompiles.
    ``identities`` may include fqdn identities (labels from
    :func:`~workbench.policy.fqdn.fqdn_identity_labels`, numbered from
    ``1 << 24``): ``toFQDNs`` selectors select them by their ``fqdn:`` labels,
    and like CIDR identities they are ``world`` and lie in the CIDR rules that
    contain their address.
    ``max_entries`` (the policy map's capacity) stops the compile with a one-line
    error at the first rule after which the policy cannot fit, instead of
    compiling all of a policy that the map will refuse anyway: every distinct key
    becomes at least one map entry, so the count of keys so far is a lower bound.
    """
    documents = list(documents)
    pod_prefixes = {f"{ep.ipv4}/32" for ep in endpoints}
    fqdn_prefixes = _fqdn_prefixes(identities, pod_prefixes)
    cidr_ids = allocate_cidr_identities(
        (c for d in documents for s in d.specs for r in s.rules if r.peers for c in r.peers.cidrs),
        previous_cidr_identities, exclude=pod_prefixes | fqdn_prefixes.keys(), taken=fqdn_prefixes.values())
    universe = _identity_universe(endpoints, identities)
    # CIDR identities are labelled reserved:world too, so a selector on that label selects every external
    # address, also one inside a prefix that some other policy names (as the world entity does).
    selectable = {**universe, **{n: cidr_labels(p) for p, n in cidr_ids.items() if n >= LOCAL_IDENTITY_SCOPE}}
    # An fqdn identity is the address's CIDR identity as far as CIDR rules and world go (Cilium's are the same).
    ipcache_ids = {**cidr_ids, **fqdn_prefixes}
    resolver = _PeerResolver(
        {n: _with_namespace_labels(labels, namespaces) for n, labels in selectable.items()}, ipcache_ids, endpoints)

    enforced: set[tuple[int, Direction]] = set()
    sources: dict[tuple[EntryKey, bool], set[str]] = defaultdict(set)
    # per allow key: the HTTP rules of its L7 rules, ALLOW_ALL when an L3/L4 rule also allows it
    http: dict[EntryKey, list[HttpRule]] = defaultdict(list)
    dns: dict[EntryKey, list[FqdnSelector]] = defaultdict(list)
    l7_by: dict[EntryKey, str] = {}   # the first L7 rule of a key, "policy rule-path", for the conflict error
    fqdn_rules: list[tuple[str, PolicyRule, list[Endpoint]]] = []
    plain: set[EntryKey] = set()
    cidr_notes: dict[tuple[int, Direction, int], set[str]] = defaultdict(set)
    distinct_keys: set[EntryKey] = set()
    rule_keys: dict[tuple[str, str], set[EntryKey]] = defaultdict(set)
    enforced_by: dict[tuple[int, Direction], set[str]] = defaultdict(set)
    for doc in documents:
        doc_key = doc.key
        for spec in doc.specs:
            subjects = [ep for ep in endpoints
                        if spec.subject.matches(_with_namespace_labels(ep.labels, namespaces))]
            for ep in subjects:
                enforced.update((ep.id, d) for d in spec.enforce)
                for d in spec.enforce:
                    enforced_by[(ep.id, d)].add(doc_key)
            for rule in spec.rules:
                produced = rule_keys[(doc_key, rule.path)]
                if rule.peers is not None and rule.peers.fqdns:
                    fqdn_rules.append((doc_key, rule, subjects))
                keys = _rule_keys(rule, resolver)
                named_here = rule.direction == "ingress" and any(p.name for p in rule.ports)
                if rule.direction == "egress":
                    keys += _egress_named_keys(rule, resolver)   # the peers' ports: the same for every subject
                notes = resolver.cidr_meaning(rule.peers)
                for ep in subjects:
                    # an ingress named port is the subject's own port of that name
                    ep_keys = keys + _ingress_named_keys(rule, resolver, ep) if named_here else keys
                    for identity, meanings in notes.items():
                        cidr_notes[(ep.id, rule.direction, identity)].update(meanings)
                    for key in ep_keys:
                        key_of_ep: EntryKey = (ep.id, *key)  # type: ignore[assignment]
                        sources[(key_of_ep, rule.deny)].add(doc_key)
                        distinct_keys.add(key_of_ep)
                        produced.add(key_of_ep)
                        if rule.deny:
                            continue
                        if rule.http is None and rule.dns is None:
                            plain.add(key_of_ep)
                            continue
                        _check_one_l7_protocol(doc, rule, key_of_ep, http, dns, l7_by)
                        if rule.http is not None:
                            http[key_of_ep].extend(rule.http)
                        else:
                            dns[key_of_ep].extend(rule.dns or ())
                if max_entries is not None and len(distinct_keys) > max_entries:
                    raise _too_many_entries(doc, rule, max_entries)

    l7 = {k: tuple(dict.fromkeys(rules + ([ALLOW_ALL] if k in plain else []))) for k, rules in http.items()}
    names = {k: tuple(dict.fromkeys(rules + ([ALLOW_ALL_NAMES] if k in plain else []))) for k, rules in dns.items()}

    def proxy_of(key: EntryKey) -> int:
        return proxy_port if key in l7 else dns_proxy_port if key in names else 0

    entries = map_entries(resolve_deny(
        PolicyEntry(k[0], k[1], k[2], k[3], k[4], k[5], deny=deny, rules=tuple(sorted(rules)),
                    proxy_port=0 if deny else proxy_of(k))
        for (k, deny), rules in sources.items()))
    kept = {entry_key(e) for e in entries if not e.deny}
    l7 = {k: v for k, v in l7.items() if k in kept}
    names = {k: v for k, v in names.items() if k in kept}
    labels = {e.identity: universe.get(e.identity, ()) for e in entries}
    for prefix, number in cidr_ids.items():
        if number in labels or number >= LOCAL_IDENTITY_SCOPE:
            labels[number] = cidr_labels(prefix)
    for number in fqdn_prefixes.values():
        labels[number] = universe[number]
    labels[ID_ANY] = ("reserved:any",) if ID_ANY in labels else ()
    labels = {k: v for k, v in labels.items() if v}
    selected = {(e.ep_id, e.direction, e.identity) for e in entries}
    return CompiledPolicy(
        entries=entries, enforced=enforced, cidr_identities=ipcache_ids, identity_labels=labels,
        endpoint_names={ep.id: f"{ep.namespace}/{ep.pod}" for ep in endpoints},
        documents=tuple(d.key for d in documents), l7=l7,
        cidr_notes={k: tuple(sorted(v)) for k, v in cidr_notes.items() if k in selected and v},
        rule_keys=dict(rule_keys), enforced_by=dict(enforced_by), dns=names,
        fqdn_selectors=tuple(dict.fromkeys(f for _, rule, _ in fqdn_rules if rule.peers for f in rule.peers.fqdns)),
        notes=_fqdn_notes(fqdn_rules, names, rule_keys))


def _fqdn_prefixes(identities: Iterable[Identity], pod_prefixes: set[str]) -> dict[str, int]:
    """The /32 of every fqdn identity given -> its number (a pod's own address keeps the pod's identity)."""
    found: dict[str, int] = {}
    for ident in identities:
        prefix = fqdn_identity_prefix(ident.labels)
        if prefix is not None and prefix not in pod_prefixes:
            found[prefix] = ident.id
    return found


def _check_one_l7_protocol(doc: PolicyDocument, rule: PolicyRule, key: EntryKey,
                           http: Mapping[EntryKey, list[HttpRule]], dns: Mapping[EntryKey, list[FqdnSelector]],
                           l7_by: dict[EntryKey, str]) -> None:
    """One map key goes to one proxy: HTTP rules and DNS rules for the same key are refused (as in Cilium)."""
    other = dns if rule.http is not None else http
    if key in other:
        where = DocRef(doc.index, doc.kind, doc.key, doc.source)
        mine, theirs = ("HTTP", "DNS") if rule.http is not None else ("DNS", "HTTP")
        raise where.error(rule.path, f"{mine} rules for a peer and port that {l7_by[key]} gives {theirs} rules "
                                     "(one L7 protocol per port, as in Cilium)",
                          hint="use different ports or peers for HTTP and DNS")
    l7_by.setdefault(key, f"{doc.key} {rule.path}")


def _fqdn_notes(fqdn_rules: list[tuple[str, PolicyRule, list[Endpoint]]],
                names: Mapping[EntryKey, tuple[FqdnSelector, ...]],
                rule_keys: Mapping[tuple[str, str], set[EntryKey]]) -> dict[tuple[int, Direction], tuple[str, ...]]:
    """What a toFQDNs rule does not show in entries: it learns nothing without a DNS rule, or nothing yet."""
    proxied = {(k[0], k[1]) for k in names}
    notes: dict[tuple[int, Direction], list[str]] = defaultdict(list)
    for doc_key, rule, subjects in fqdn_rules:
        selectors = ", ".join(str(f) for f in rule.peers.fqdns) if rule.peers else ""
        produced = {k[0] for k in rule_keys.get((doc_key, rule.path), set())}
        for ep in subjects:
            if (ep.id, "egress") not in proxied:
                text = (f"{doc_key} {rule.path}: toFQDNs ({selectors}) selects only addresses from DNS answers "
                        "that a rules.dns allow lets through the DNS proxy; no egress rule with rules.dns selects "
                        "this pod, so it learns nothing")
            elif ep.id not in produced:
                text = f"{doc_key} {rule.path}: toFQDNs ({selectors}) selects no address yet (no DNS answer matched)"
            else:
                continue
            if text not in notes[(ep.id, "egress")]:
                notes[(ep.id, "egress")].append(text)
    return {k: tuple(v) for k, v in notes.items()}


def _too_many_entries(doc: PolicyDocument, rule: PolicyRule, max_entries: int) -> ValidationError:
    where = DocRef(doc.index, doc.kind, doc.name, doc.source)
    return where.error(rule.path, f"the policies need more than the {max_entries:,} entries the policy map holds "
                                  "(counting stopped at this rule)",
                       hint="select fewer endpoints or peers, or merge port lists into ranges")


def _identity_universe(endpoints: list[Endpoint], identities: list[Identity]) -> dict[int, tuple[str, ...]]:
    """Every identity a selector may match: reserved ones, the endpoints' and the given ones."""
    universe: dict[int, tuple[str, ...]] = dict(RESERVED_IDENTITIES)
    universe[ID_REMOTE_NODE] = ("reserved:remote-node",)
    for ep in endpoints:
        universe.setdefault(ep.identity, tuple(ep.labels))
    for ident in identities:
        universe[ident.id] = tuple(ident.labels)
    return universe


def _with_namespace_labels(labels: Iterable[str], namespaces: Mapping[str, Mapping[str, str]]) -> tuple[str, ...]:
    """A pod's labels plus its namespace's labels (as Cilium's identity labels carry them)."""
    labels = tuple(labels)
    for label in labels:
        source, key, value = split_label(label)
        if source == "k8s" and key == NAMESPACE_LABEL:
            extra = namespace_labels(value, dict(namespaces.get(value, {})))
            return tuple(sorted(set(labels) | set(extra)))
    return labels


class _PeerResolver:
    """Selectors, entities and CIDRs -> sets of numeric identities."""

    def __init__(self, universe: dict[int, tuple[str, ...]], cidr_ids: dict[str, int],
                 endpoints: Sequence[Endpoint] = ()) -> None:
        self.labels = universe
        self.parsed = {n: [split_label(label) for label in labels] for n, labels in universe.items()}
        self.cidr_ids = cidr_ids
        self.endpoints = list(endpoints)
        self.by_identity: dict[int, list[Endpoint]] = defaultdict(list)
        for ep in self.endpoints:
            self.by_identity[ep.identity].append(ep)
        self._cache: dict[Peers, set[int]] = {}
        self._notes: dict[Peers, dict[int, set[str]]] = {}
        cluster = {n for n in universe if FIRST_CLUSTER_IDENTITY <= n < LOCAL_IDENTITY_SCOPE}
        world = {ID_WORLD} | set(cidr_ids.values())
        self.entities: dict[str, set[int]] = {
            "all": {ID_ANY}, "world": world, "world-ipv4": world, "host": {ID_HOST},
            "health": {ID_HEALTH}, "remote-node": {ID_REMOTE_NODE},
            "cluster": cluster | {ID_HOST, ID_HEALTH},
        }

    def resolve(self, peers: Peers | None) -> set[int]:
        if peers is None:
            return {ID_ANY}
        # Large policies repeat the same peers rule after rule: resolve each once.
        if peers not in self._cache:
            self._cache[peers] = self._resolve(peers)
        return self._cache[peers]

    def _resolve(self, peers: Peers) -> set[int]:
        ids: set[int] = set()
        for selector in peers.selectors:
            ids.update(n for n, labels in self.parsed.items() if selector.matches_parsed(labels))
        for fqdn in peers.fqdns:
            # addresses learned from DNS carry the label of every toFQDNs selector that matched their name
            ids.update(n for n, labels in self.labels.items() if fqdn.label in labels)
        for entity in peers.entities:
            ids.update(self.entities[entity])
        for cidr in peers.cidrs:
            ids.update(self._cidr_identities(cidr))
        return ids

    def _cidr_identities(self, cidr: CIDRRule) -> set[int]:
        """The CIDR identities in range; for a Kubernetes ipBlock also the pod identities in range.

        The policy map knows identities, not addresses, and pods with one label
        set share an identity: an identity is selected only when every pod that
        has it is in range (never more than the ipBlock admits; docs/policy.md).
        """
        ids = {n for prefix, n in self.cidr_ids.items() if cidr.selects(prefix)}
        if cidr.pods:
            ids.update(n for n, eps in self.by_identity.items() if all(cidr.contains(ep.ipv4) for ep in eps))
        return ids

    def cidr_meaning(self, peers: Peers | None) -> dict[int, set[str]]:
        """Identity -> the meanings of the CIDR rules of ``peers`` that select it (for explain)."""
        if peers is None or not peers.cidrs:
            return {}
        if peers not in self._notes:
            notes: dict[int, set[str]] = defaultdict(set)
            for cidr in peers.cidrs:
                for n in self._cidr_identities(cidr):
                    notes[n].add(cidr.meaning)
            self._notes[peers] = dict(notes)
        return self._notes[peers]

    def endpoints_of(self, identities: set[int]) -> list[Endpoint]:
        """The lab's pods that have one of ``identities`` (every pod for 0, any peer)."""
        if ID_ANY in identities:
            return self.endpoints
        return [ep for n in sorted(identities) for ep in self.by_identity.get(n, [])]


RuleKey = tuple[Direction, int, int, int, int]   # direction, identity, protocol, port, prefix


def _rule_keys(rule: PolicyRule, resolver: _PeerResolver) -> list[RuleKey]:
    """(direction, identity, protocol, port, prefix) for every peer x numeric port block of a rule.

    No ports: any port. Named ports are resolved per pod (:func:`_ingress_named_keys`,
    :func:`_egress_named_keys`); a rule with only named ports has no keys here.
    """
    l4 = [(0, 0, 0)] if not rule.ports else [
        (p.protocol, port, prefix) for p in rule.ports for port, prefix in p.blocks()]
    return [(rule.direction, ident, *block) for ident in sorted(resolver.resolve(rule.peers))
            for block in l4]


def _resolve_name(ep: Endpoint, name: str, protocol: int) -> int | None:
    """The port a pod's containerPort named ``name`` has, if its protocol is ``protocol``."""
    found = ep.named_ports.get(name)
    if found is None or abi.POLICY_PROTOCOLS.get(found[1]) != protocol:
        return None
    return found[0]


def _ingress_named_keys(rule: PolicyRule, resolver: _PeerResolver, ep: Endpoint) -> list[RuleKey]:
    """Ingress: a named port is the subject pod's own container port of that name (none: no entry)."""
    keys: list[RuleKey] = []
    for port_range in rule.ports:
        port = _resolve_name(ep, port_range.name, port_range.protocol) if port_range.name else None
        if port is not None:
            keys += [(rule.direction, ident, port_range.protocol, port, PORT_BITS)
                     for ident in sorted(resolver.resolve(rule.peers))]
    return keys


def _egress_named_keys(rule: PolicyRule, resolver: _PeerResolver) -> list[RuleKey]:
    """Egress: a named port is each peer pod's container port of that name, keyed by the pod's identity.

    Peers that are no pods (world, CIDRs, host) have no named ports. Pods that
    share an identity share its entries: each port the name has on one of them.
    """
    named = [p for p in rule.ports if p.name]
    if not named:
        return []
    keys: set[RuleKey] = set()
    for ep in resolver.endpoints_of(resolver.resolve(rule.peers)):
        for port_range in named:
            port = _resolve_name(ep, port_range.name, port_range.protocol)
            if port is not None:
                keys.add((rule.direction, ep.identity, port_range.protocol, port, PORT_BITS))
    return sorted(keys)


def _block(entry: PolicyEntry) -> tuple[int, int]:
    return (0, 0) if entry.protocol == 0 else (entry.port, entry.port_prefix)


def _intersect(allow: PolicyEntry, deny: PolicyEntry) -> EntryKey | None:
    """The most specific key matching packets both entries match, or None if they are disjoint."""
    if ID_ANY not in (allow.identity, deny.identity) and allow.identity != deny.identity:
        return None
    if 0 not in (allow.protocol, deny.protocol) and allow.protocol != deny.protocol:
        return None
    (a_port, a_len), (d_port, d_len) = _block(allow), _block(deny)
    short = min(a_len, d_len)
    if (a_port >> (PORT_BITS - short)) != (d_port >> (PORT_BITS - short)):
        return None  # prefix blocks are nested or disjoint: compare on the shorter prefix
    port, prefix = (a_port, a_len) if a_len >= d_len else (d_port, d_len)
    protocol = allow.protocol or deny.protocol
    if protocol == 0:
        port, prefix = 0, 0
    return (allow.ep_id, allow.direction, allow.identity or deny.identity, protocol, port, prefix)


def resolve_deny(entries: Iterable[PolicyEntry]) -> list[PolicyEntry]:
    """Make "deny wins" hold under most-specific-match lookups.

    For every allow entry and deny entry of the same endpoint and direction that
    overlap, add a deny entry for their intersection (the more specific peer,
    protocol and port block). When that intersection is the allow's own key,
    the allow is replaced. Afterwards, for any packet, the most specific
    matching entry is a deny whenever some deny matches; deny entries carry the
    deny policies' names only, since those decide the verdict.
    """
    allows: dict[EntryKey, PolicyEntry] = {}
    denies: dict[EntryKey, PolicyEntry] = {}
    for entry in entries:
        key = entry_key(entry)
        table = denies if entry.deny else allows
        if key in table:
            entry = PolicyEntry(*key, deny=entry.deny, proxy_port=entry.proxy_port or table[key].proxy_port,
                                rules=tuple(sorted(set(table[key].rules) | set(entry.rules))))
        table[key] = entry
    by_scope: dict[tuple[int, Direction], list[PolicyEntry]] = defaultdict(list)
    for entry in denies.values():
        by_scope[(entry.ep_id, entry.direction)].append(entry)
    extra: dict[EntryKey, set[str]] = defaultdict(set)
    for key, allow in list(allows.items()):
        for deny in by_scope.get((allow.ep_id, allow.direction), []):
            both = _intersect(allow, deny)
            if both is None:
                continue
            extra[both].update(deny.rules)
            if both == key:
                del allows[key]
                break
    for key, rules in extra.items():
        old = denies.get(key)
        merged = set(rules) | (set(old.rules) if old else set())
        denies[key] = PolicyEntry(*key, deny=True, rules=tuple(sorted(merged)))
    result = list(allows.values()) + list(denies.values())
    return sorted(result, key=lambda e: (e.ep_id, e.direction, e.identity, e.protocol, e.port,
                                         e.port_prefix, e.deny))


def entry_key(entry: PolicyEntry) -> EntryKey:
    """An entry's map key: (ep_id, direction, identity, protocol, port, port_prefix)."""
    return (entry.ep_id, entry.direction, entry.identity, entry.protocol, entry.port, entry.port_prefix)


# ---- the policy map's slots ------------------------------------------------------------------------


def _slot_entries(entry: PolicyEntry) -> list[PolicyEntry]:
    """One entry in slot form: a port with ANY becomes one entry per protocol, ports block-aligned."""
    if entry.shadowed:  # the allow it stands for: precedence is decided again
        entry = replace(entry, deny=False, shadowed=False)
    if entry.protocol == abi.PROTO_ANY and entry.port_prefix == 0:
        return [replace(entry, port=0)]
    protocols = ANY_PORT_PROTOCOLS if entry.protocol == abi.PROTO_ANY else (entry.protocol,)
    first = block_range(entry.port, entry.port_prefix)[0] if entry.port_prefix else 0
    return [replace(entry, protocol=proto, port=first) for proto in protocols]


def _merge(old: PolicyEntry, new: PolicyEntry) -> PolicyEntry:
    """Two entries with one key: deny wins, sources are united, an allow keeps its proxy port."""
    deny = old.deny or new.deny
    return replace(old, deny=deny, proxy_port=0 if deny else old.proxy_port or new.proxy_port,
                   rules=tuple(sorted(set(old.rules) | set(new.rules))))


def map_entries(entries: Iterable[PolicyEntry]) -> list[PolicyEntry]:
    """Entries -> exactly the policy-map slots to write, with deny precedence decided here.

    - a port with protocol 0 (ANY) becomes one slot per TCP, UDP, SCTP; a port is
      its block's first port, and protocol 0 means port 0;
    - entries with equal keys merge: deny wins, rules are united;
    - an allow under a covering deny of the same endpoint, direction and peer
      identity (a shorter prefix) becomes a deny marked ``shadowed``, since the
      map's longest-prefix lookup would otherwise return the allow. The datapath
      looks up the peer and "any peer" both and lets a deny from either win, so
      denies of other identities need no slot here.

    Shadowed entries given in count as the allows they stand for, so a live edit
    can read the map back, change it and plan it again.

    Example::

        >>> slots = map_entries([PolicyEntry(1, "ingress", 300, 0, 0, 0, deny=True),
        ...                      PolicyEntry(1, "ingress", 300, 6, 80, 16)])
        >>> [(e.protocol, e.deny, e.shadowed) for e in slots]
        [(0, True, False), (6, True, True)]
    """
    slots: dict[EntryKey, PolicyEntry] = {}
    for entry in entries:
        for slot in _slot_entries(entry):
            key = entry_key(slot)
            slots[key] = _merge(slots[key], slot) if key in slots else slot
    denies: dict[tuple[int, Direction, int], list[PolicyEntry]] = defaultdict(list)
    for slot in slots.values():
        if slot.deny:
            denies[(slot.ep_id, slot.direction, slot.identity)].append(slot)
    for key, slot in slots.items():
        if not slot.deny and any(_intersect(slot, deny) == key
                                 for deny in denies[(slot.ep_id, slot.direction, slot.identity)]):
            slots[key] = replace(slot, deny=True, shadowed=True, proxy_port=0)
    return sorted(slots.values(), key=lambda e: (entry_key(e), e.deny))


MapEditOp = Literal["allow", "deny", "remove"]


def live_edit(op: MapEditOp, ep_id: int, direction: Direction, identity: int = ID_ANY, protocol: int = 0,
              port: int = 0, end_port: int | None = None,
              proxy_port: int = 0) -> Callable[[Sequence[PolicyEntry]], tuple[list[PolicyEntry], int]]:
    """A live edit of the policy map as a plan: the map's entries -> (the slots to write, keys removed).

    ``identity`` 0 = any peer, ``protocol`` 0 = any, ``port``..``end_port`` a
    range (prefix blocks). "allow"/"deny" add the entries (deny wins over any
    allow it covers); "remove" takes away the entries with exactly these keys
    (a port with protocol 0 removes its TCP, UDP and SCTP keys), allow or deny,
    and an allow a removed deny shadowed comes back. The writer runs the plan
    against the active map (:meth:`~workbench.datapath.policymap.PolicyMapWriter.edit`).

    Example::

        >>> plan = live_edit("deny", 3, "ingress", identity=300)
        >>> slots, removed = plan([PolicyEntry(3, "ingress", 300, 6, 80, 16)])
        >>> [(e.protocol, e.deny, e.shadowed) for e in slots], removed
        ([(0, True, False), (6, True, True)], 0)
    """
    if op not in ("allow", "deny", "remove"):
        raise ValidationError(f"map edit operation {op!r} must be allow, deny or remove")
    blocks = port_blocks(port, port if end_port is None else end_port) if port or end_port is not None \
        else [(0, 0)]
    edit = [PolicyEntry(ep_id, direction, identity, protocol, first, prefix, deny=op == "deny",
                        proxy_port=proxy_port if op == "allow" else 0, rules=(LIVE_EDIT_RULE,))
            for first, prefix in blocks]

    def plan(current: Sequence[PolicyEntry]) -> tuple[list[PolicyEntry], int]:
        if op != "remove":
            return map_entries([*current, *edit]), 0
        wanted = {entry_key(slot) for slot in map_entries(edit)}
        kept = [e for e in current if entry_key(e) not in wanted]
        return map_entries(kept), len(current) - len(kept)

    return plan

