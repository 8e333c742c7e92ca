"""The DNS service of the lab agent: the transparent DNS proxy, the FQDN cache and toFQDNs identities.

Started after the policy and flow services it uses (agent/services.py).

- Decisions: a query from a pod is judged by the pod's EGRESS DNS rules for
  (the DNS server's identity, UDP/TCP, port) in the compiled policy
  (``CompiledPolicy.dns_rules``); no DNS rule for it (a redirect left over in
  conntrack after a policy delete) allows every name.
- Learning: an allowed answer's A records go into the :class:`FqdnCache`.
  Every cached address whose names match a toFQDNs selector in force gets a
  per-address identity (labels ``cidr:<ip>/32``, ``reserved:world`` and the
  ``fqdn:`` label of each matching selector, numbered from
  :data:`FQDN_IDENTITY_BASE`), which the policy service compiles like any
  other identity; the ipcache maps the address to it once the new policy is
  written. The proxy hands the answer to the pod only after that, so the
  pod's first connection to the address is already allowed.
- Expiry: once a second, records past their TTL go; an address no record
  names any more leaves the ipcache (it is "world" again) and the policy is
  recompiled without it. Established connections are untouched (conntrack).
- Persistence: the cache and the address -> identity numbers are saved in
  the lab's state dir, so a restarted agent keeps what was learned (and
  still expires it on time); the datapath's ipcache entries survive an agent
  kill by themselves.
- Local API: ``fqdn.cache`` (name, IP, TTL, expiry, identity) and ``dns.status``.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import dns.message
import dns.rdatatype

from workbench.agent.addresses import PodAddresses
from workbench.agent.context import LabContext
from workbench.agent.dns.cache import FqdnCache
from workbench.agent.dns.flows import to_exchange
from workbench.agent.dns.proxy import DnsProxy, Query, Resolver, Verdict
from workbench.agent.flows import FlowService
from workbench.agent.l7.flows import FlowRecorder
from workbench.agent.policy import PolicyService
from workbench.datapath import abi, build
from workbench.lab.model import Identity
from workbench.node import topology
from workbench.policy.compiler import DEFAULT_DNS_PROXY_PORT, CompiledPolicy
from workbench.policy.fqdn import FqdnSelector, fqdn_identity_labels, names_allowed
from workbench.policy.rules import PolicyDocument

# Per-address fqdn identities live in Cilium's local scope (1 << 24) like CIDR identities, in its upper
# half so that the two never meet (the compiler numbers CIDR identities from the bottom of the scope).
FQDN_IDENTITY_BASE = (1 << 24) | (1 << 23)
EXPIRY_INTERVAL = 1.0
CACHE_FILE = "fqdn-cache.json"


def fqdn_selectors_of(documents: list[PolicyDocument]) -> list[FqdnSelector]:
    """Every toFQDNs selector of ``documents``, once each."""
    found: dict[FqdnSelector, None] = {}
    for doc in documents:
        for spec in doc.specs:
            for rule in spec.rules:
                if rule.peers is not None:
                    found.update(dict.fromkeys(rule.peers.fqdns))
    return list(found)


def deciding_policies(compiled: CompiledPolicy, ep_id: int, identity: int, protocol: int,
                      port: int) -> tuple[str, ...]:
    """The policies of the egress allow entries that admit (identity, protocol, port) for ``ep_id``."""
    entries = compiled.allow_entries(ep_id, "egress", identity, protocol, port)
    return tuple(sorted({name for entry in entries for name in entry.rules}))


class DnsService(PodAddresses, Resolver):
    """Proxy + cache + fqdn identities of one lab (one per agent); see the module docstring."""

    def __init__(self, ctx: LabContext, policy: PolicyService, flows: FlowService,
                 port: int = DEFAULT_DNS_PROXY_PORT) -> None:
        PodAddresses.__init__(self, ctx.maps)
        self.ctx = ctx
        self.policy = policy
        self.flows = flows
        self.recorder = FlowRecorder(flows.store)
        self.port = port
        self._lock = threading.RLock()
        self.cache = FqdnCache(min_ttl=ctx.fqdn_min_ttl)
        self.path = ctx.dir / CACHE_FILE
        self._numbers: dict[str, int] = {}
        self._selected: dict[str, int] = {}      # address -> fqdn identity now in the ipcache
        self._pending: dict[str, int] = {}       # the same, as the compile in progress plans it
        self._identities: dict[int, tuple[str, ...]] = {}
        self._dirty = False
        self._rules_cache: dict[tuple[int, int, int, int], tuple[tuple[FqdnSelector, ...] | None,
                                                                 tuple[str, ...]]] = {}
        self._cached_for: object = None
        self._load()
        policy.identity_sources.append(self.fqdn_identities)
        policy.after_write.append(self._sync_ipcache)
        self.proxy = DnsProxy(topology.node_netns(ctx.lab), port, self)
        self.proxy.start()
        self._stop = threading.Event()
        self._expiry = threading.Thread(target=self._expire_loop, name="fqdn-expiry", daemon=True)
        self._expiry.start()
        # A restarted agent: the compiles that follow each endpoint's attach give the saved addresses
        # their identities back and take expired ones out of the ipcache (no compile here: before the
        # endpoints are attached it would write a policy without them). Without policies no compile
        # comes, so the ipcache is put right at once.
        if self._selected and not self.policy.documents:
            self._sync_ipcache(self.policy.compiled)
        self._publish_names()

    # -- persistence ---------------------------------------------------------------------
    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            saved = json.loads(self.path.read_text())
            self.cache.load(saved.get("records", []), now=time.time())
            self._numbers = {str(k): int(v) for k, v in saved.get("identities", {}).items()}
            # what the last agent put in the ipcache: the first sync removes what expired meanwhile
            self._selected = {str(k): int(v) for k, v in saved.get("in_ipcache", {}).items()}
        except (ValueError, TypeError, KeyError, OSError):
            self._numbers = {}     # a damaged file: start empty, names are learnt again as asked

    def _save(self) -> None:
        data = {"records": self.cache.to_json(), "identities": self._numbers, "in_ipcache": self._selected}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)

    def close(self) -> None:
        self._stop.set()
        self.proxy.close()
        self._expiry.join(timeout=3)
        self.recorder.close()
        with self._lock:
            if self._dirty:
                self._save()

    # -- identities for the policy service -----------------------------------------------------
    def _number(self, ip: str) -> int:
        if ip not in self._numbers:
            used = set(self._numbers.values())
            number = FQDN_IDENTITY_BASE + len(self._numbers)
            while number in used:
                number += 1
            self._numbers[ip] = number
            self._dirty = True
        return self._numbers[ip]

    def fqdn_identities(self, documents: list[PolicyDocument]) -> list[Identity]:
        """The identities of the cached addresses that a toFQDNs selector of ``documents`` selects.

        Called by the policy service for every compile (under its lock); what it plans here is put
        into the ipcache by :meth:`_sync_ipcache` once that compile is written.
        """
        selectors = fqdn_selectors_of(documents)
        with self._lock:
            planned: dict[str, int] = {}
            identities: list[Identity] = []
            if selectors:
                for ip, names in self.cache.names_by_ip().items():
                    matching = [s for s in selectors if any(s.matches(n) for n in names)]
                    if matching:
                        number = self._number(ip)
                        planned[ip] = number
                        labels = fqdn_identity_labels(ip, matching)
                        self._identities[number] = labels
                        identities.append(Identity(number, labels))
            self._pending = planned
            return identities

    def _sync_ipcache(self, compiled: CompiledPolicy) -> None:
        """After a policy write: the ipcache maps exactly the planned addresses to their fqdn identities."""
        with self._lock:
            pending = dict(self._pending)
            for ip, number in pending.items():
                if self._selected.get(ip) != number:
                    build.ipcache_set(self.ctx.maps, f"{ip}/32", number)
            for ip in set(self._selected) - set(pending):
                build.ipcache_delete(self.ctx.maps, f"{ip}/32")
            if pending != self._selected:
                self._dirty = True
            self._selected = pending

    # -- the proxy's questions ------------------------------------------------------------
    def decide(self, query: Query) -> Verdict:
        client = self.endpoint_at(query.client[0])
        dst_identity = self.identity_of(query.server[0])
        if client is None:       # not a pod: only pods' queries are redirected; nothing to judge
            return Verdict(True, self.identity_of(query.client[0]), dst_identity)
        protocol = abi.IPPROTO_UDP if query.protocol == "UDP" else abi.IPPROTO_TCP
        rules, policies = self._rules(client.id, dst_identity, protocol, query.server[1])
        allowed = rules is None or names_allowed(rules, query.name)
        return Verdict(allowed, client.identity, dst_identity, policies if allowed and rules is not None else ())

    def _rules(self, ep_id: int, identity: int, protocol: int,
               port: int) -> tuple[tuple[FqdnSelector, ...] | None, tuple[str, ...]]:
        """(DNS rules, the policies that hold them) for one client and server, cached per compiled policy:
        both scan the policy's entries, which a query should not pay for every time."""
        compiled = self.policy.compiled
        if compiled is not self._cached_for:
            self._rules_cache, self._cached_for = {}, compiled
        key = (ep_id, identity, protocol, port)
        found = self._rules_cache.get(key)
        if found is None:
            found = (compiled.dns_rules(ep_id, "egress", identity, protocol, port),
                     deciding_policies(compiled, ep_id, identity, protocol, port))
            self._rules_cache[key] = found
        return found

    async def answered(self, query: Query, answer: dns.message.Message) -> None:
        """Learn the answer's names; when a new address is selected by toFQDNs, allow it first."""
        if answer.rcode() != 0:
            return
        learned: list[tuple[str, list[tuple[str, int]]]] = []
        for rrset in answer.answer:
            if rrset.rdtype == dns.rdatatype.A:
                learned.append((rrset.name.to_text(), [(r.address, int(rrset.ttl)) for r in rrset]))
        if not learned:
            return
        now = time.time()
        with self._lock:
            for name, answers in learned:
                self.cache.learn(name, answers, now)
            self._dirty = True
            answered = {ip for _, answers in learned for ip, _ in answers}
            stale = [ip for ip in answered if self._labels_now(ip) != self._labels_in_force(ip)]
        self.flows.add_names({ip: (name,) for name, answers in learned for ip, _ in answers})
        if stale:
            # compile + write the new policy off the proxy's loop; the answer waits for it
            await asyncio.get_running_loop().run_in_executor(None, self.policy.refresh)

    def _labels_now(self, ip: str) -> tuple[str, ...]:
        """The fqdn identity labels ``ip`` should have under the policy in force (empty: none selects it)."""
        matching = [s for s in self.policy.compiled.fqdn_selectors
                    if any(s.matches(n) for n in self.cache.names_of(ip))]
        return fqdn_identity_labels(ip, matching) if matching else ()

    def _labels_in_force(self, ip: str) -> tuple[str, ...]:
        """The labels of the identity the ipcache gives ``ip`` now (empty: none)."""
        number = self._selected.get(ip)
        return self._identities.get(number, ()) if number is not None else ()

    def record(self, query: Query) -> None:
        self.recorder.put(to_exchange(query))

    # -- expiry ----------------------------------------------------------------------------
    def _expire_loop(self) -> None:
        while not self._stop.wait(EXPIRY_INTERVAL):
            try:
                self.expire_now()
            except Exception:   # the loop must go on; the agent log keeps the error
                traceback.print_exc()

    def expire_now(self, now: float | None = None) -> list[str]:
        """Drop expired records; addresses no longer named leave the ipcache. Returns those addresses."""
        with self._lock:
            gone = self.cache.expire(time.time() if now is None else now)
            affected = [ip for ip in gone if ip in self._selected]
            if gone:
                self._dirty = True
            if self._dirty:
                self._save()
                self._dirty = False
        if gone:
            self._publish_names()
        if affected:
            self.policy.refresh()
        return gone

    def _publish_names(self) -> None:
        """The flows' src_names/dst_names: what the cache knows per address now."""
        self.flows.set_names(self.cache.names_by_ip())

    # -- local API -------------------------------------------------------------------------
    def cache_rows(self) -> list[dict[str, Any]]:
        """``workbench fqdn cache list``: one row per (name, IP)."""
        now = time.time()
        with self._lock:
            return [{"name": r.name, "ip": r.ip, "ttl": r.ttl,
                     "expires": datetime.fromtimestamp(r.expires, UTC).isoformat(timespec="seconds"),
                     "expires_in": max(0, round(r.expires - now)), "source": r.source,
                     "identity": self._selected.get(r.ip)}
                    for r in self.cache.records()]

    def status(self) -> dict[str, Any]:
        return {**self.proxy.status(), "cache_records": len(self.cache), "cache_evicted": self.cache.evicted,
                "fqdn_identities": len(self._selected), "min_ttl": self.cache.min_ttl}

    def methods(self) -> dict[str, Callable[..., Any]]:
        return {"fqdn.cache": self.cache_rows, "dns.status": self.status}
