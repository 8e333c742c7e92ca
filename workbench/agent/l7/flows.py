"""Proxy exchanges -> L7 flow rows in the agent's flow store (Hubble's http-/dns-request and -response).

An allowed request gives two rows, as Hubble shows them: the request
(client -> server, no code) and the response (server -> client, is_reply,
code and latency); both name the policies whose HTTP rules allowed it in
``*_allowed_by`` of the decision's direction. A denied request gives one
DROPPED row with code 403 and drop reason 133 (POLICY_DENIED: no rule allows
it), naming no policy; a malformed one an ERROR row with code 400 and no method.

DNS (:class:`DnsExchange`, from the agent's DNS proxy) follows what Hubble
shows for Cilium's DNS proxy: an allowed query gives a request row (client ->
server, the query and its types, no rcode) and a response row (server ->
client, is_reply, rcode, addresses, TTL), both naming the allowing policies;
a query the policy refuses gives one DROPPED request row with drop reason 133
(the client gets a REFUSED answer from the proxy, but Cilium records no
response flow for it); a query the proxy could not forward one ERROR request
row. Summaries are Hubble's: ``DNS Query api.github.com. A`` and
``DNS Answer "192.0.2.20" TTL: 30 (Proxy api.github.com. A)``.

Rows are appended in batches by :class:`FlowRecorder`'s thread, off the
request path: one enrichment per batch instead of one per row (a single
``FlowStore.add_l7`` call costs ~170 us, as much as the proxy's own work).
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.agent.l7.proxy import Exchange
from workbench.datapath import abi
from workbench.observe import schema
from workbench.observe.enrich import ip_to_int
from workbench.observe.metrics import DNS_RCODE_NAMES
from workbench.observe.store import without_dns

# The summary's words for an rcode (Hubble's packet library): the metrics' words, but for two.
SUMMARY_RCODE_NAMES = {**DNS_RCODE_NAMES, 9: "Server Not Authoritative for zone"}
SUMMARY_RCODE_NAMES.pop(11)
DNS_VERDICTS = ("FORWARDED", "DROPPED", "ERROR")
DNS_PROTOCOLS = ("UDP", "TCP")


@dataclass
class DnsExchange:
    """One DNS query the agent's DNS proxy handled, and what became of it.

    ``client`` asked ``server`` (both ``(ip, port)``) for ``query`` (as on the
    wire, with its trailing dot) of types ``qtypes``. ``verdict``: FORWARDED
    (allowed; ``rcode``, ``ips``, ``ttl`` describe the answer relayed back, or
    stay None/empty when none came), DROPPED (the policy refused the name) or
    ERROR (the proxy could not forward it). ``policies``: the policies that
    allowed it (``*_allowed_by`` of ``direction``; Cilium's DNS proxy sits on
    the endpoint's egress). ``rrtypes``: the answer's record types, by default
    CNAME per ``cnames`` and A/AAAA per address; they feed
    ``hubble_dns_response_types_total``. ``time_ns``: when the answer was sent
    (or the query refused); None is now.

    Example::

        >>> ex = DnsExchange(client=("10.200.0.11", 40000), server=("10.200.0.2", 53),
        ...                  query="api.github.com.", qtypes=("A",), rcode=0,
        ...                  ips=("192.0.2.20",), ttl=30)
        >>> [row.summary for row in dns_rows(ex, now=10**18)]
        ['DNS Query api.github.com. A', 'DNS Answer "192.0.2.20" TTL: 30 (Proxy api.github.com. A)']
    """

    client: tuple[str, int]
    server: tuple[str, int]
    query: str
    qtypes: tuple[str, ...] = ("A",)
    verdict: str = "FORWARDED"
    protocol: str = "UDP"
    src_identity: int = 0
    dst_identity: int = 0
    rcode: int | None = None
    ips: tuple[str, ...] = ()
    ttl: int | None = None
    cnames: tuple[str, ...] = ()
    rrtypes: tuple[str, ...] | None = None
    policies: tuple[str, ...] = ()
    latency_ns: int | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    direction: str = "EGRESS"
    time_ns: int | None = None

    def __post_init__(self) -> None:
        if self.verdict not in DNS_VERDICTS:
            raise ValueError(f"DNS verdict {self.verdict!r}: expected one of {', '.join(DNS_VERDICTS)}")
        if self.protocol not in DNS_PROTOCOLS:
            raise ValueError(f"DNS protocol {self.protocol!r}: expected UDP or TCP")
        if self.direction not in schema.DIRECTIONS:
            raise ValueError(f"direction {self.direction!r}: expected one of {', '.join(schema.DIRECTIONS)}")
        self.qtypes, self.ips, self.cnames = tuple(self.qtypes), tuple(self.ips), tuple(self.cnames)

    def answer_types(self) -> tuple[str, ...]:
        """The answer's record types: ``rrtypes`` when given, else CNAME per cname and A/AAAA per address."""
        if self.rrtypes is not None:
            return tuple(self.rrtypes)
        return tuple(["CNAME"] * len(self.cnames) + ["AAAA" if ":" in ip else "A" for ip in self.ips])


@dataclass
class _Row:
    time_ns: int
    src: tuple[str, int]
    dst: tuple[str, int]
    src_identity: int
    dst_identity: int
    verdict: str
    direction: str
    is_reply: bool
    method: str
    url: str | None
    code: int | None
    latency_ns: int | None
    bytes: int
    summary: str
    drop_reason: int = 0
    policies: tuple[str, ...] = ()
    protocol: str = "TCP"
    dns: _DnsFields | None = None   # DNS rows only


@dataclass
class _DnsFields:
    query: str
    qtypes: tuple[str, ...]
    rcode: int | None = None
    ips: tuple[str, ...] = ()
    ttl: int | None = None
    rrtypes: tuple[str, ...] = field(default_factory=tuple)


def exchange_rows(ex: Exchange, now: int | None = None) -> list[_Row]:
    """The flow rows of one exchange (see the module docstring)."""
    now = time.time_ns() if now is None else now
    d = ex.decision
    src_id, dst_id = (d.src_identity, d.dst_identity) if d else (0, 0)
    direction = d.direction if d else "INGRESS"
    method = ex.method if ex.method in schema.HTTP_METHODS else ""
    if ex.verdict == "FORWARDED":
        latency = "" if ex.latency_ns is None else f" {ex.latency_ns / 1e6:.0f}ms"
        policies = d.policies if d else ()
        return [
            _Row(now - (ex.latency_ns or 0), ex.client, ex.server, src_id, dst_id, "FORWARDED", direction, False,
                 method, ex.url, None, None, ex.request_bytes, f"HTTP/1.1 {method} {ex.url}", policies=policies),
            _Row(now, ex.server, ex.client, dst_id, src_id, "FORWARDED", direction, True, method, ex.url,
                 ex.code, ex.latency_ns, ex.response_bytes, f"HTTP/1.1 {ex.code}{latency} ({method} {ex.url})",
                 policies=policies),
        ]
    summary = f"HTTP/1.1 {ex.code} ({method} {ex.url})" if method else f"HTTP {ex.code} malformed request"
    # a denied request: no HTTP rule allows it, Cilium's POLICY_DENIED (no policy to name)
    reason = abi.DROP_POLICY_DENIED if ex.verdict == "DROPPED" else 0
    return [_Row(now, ex.client, ex.server, src_id, dst_id, ex.verdict, direction, False, method, ex.url,
                 ex.code, None, 0, summary, drop_reason=reason)]


def dns_summary(ex: DnsExchange, response: bool) -> str:
    """Hubble's summary of a DNS request or response row."""
    qtypes = ",".join(ex.qtypes)
    if not response:
        return f"DNS Query {ex.query} {qtypes}"
    rcode = ex.rcode or 0
    if rcode != 0:
        answer = f"RCode: {SUMMARY_RCODE_NAMES.get(rcode, 'Unknown')}"
    else:
        parts = []
        if ex.ips:
            parts.append(f'"{",".join(ex.ips)}"')
        if ex.cnames:
            parts.append(f'CNAMEs: "{",".join(ex.cnames)}"')
        answer = " ".join(parts)
    return f"DNS Answer {answer} TTL: {ex.ttl or 0} (Proxy {ex.query} {qtypes})"


def dns_rows(ex: DnsExchange, now: int | None = None) -> list[_Row]:
    """The flow rows of one DNS exchange (see the module docstring)."""
    now = (time.time_ns() if ex.time_ns is None else ex.time_ns) if now is None else now

    def row(at: int, reply: bool, verdict: str, dns: _DnsFields, **extra: Any) -> _Row:
        src, dst, src_id, dst_id = ((ex.server, ex.client, ex.dst_identity, ex.src_identity) if reply
                                    else (ex.client, ex.server, ex.src_identity, ex.dst_identity))
        return _Row(at, src, dst, src_id, dst_id, verdict, ex.direction, reply, method="", url=None, code=None,
                    latency_ns=ex.latency_ns if reply else None,
                    bytes=ex.response_bytes if reply else ex.request_bytes,
                    summary=dns_summary(ex, reply), protocol=ex.protocol, dns=dns, **extra)

    request = _DnsFields(ex.query, ex.qtypes)
    if ex.verdict != "FORWARDED":
        # Refused by policy (POLICY_DENIED, no policy to name) or not forwarded: the request only.
        reason = abi.DROP_POLICY_DENIED if ex.verdict == "DROPPED" else 0
        return [row(now, False, ex.verdict, request, drop_reason=reason)]
    rows = [row(now - (ex.latency_ns or 0), False, "FORWARDED", request, policies=ex.policies)]
    if ex.rcode is not None:   # an answer came back and was relayed
        answer = _DnsFields(ex.query, ex.qtypes, ex.rcode, ex.ips, ex.ttl, ex.answer_types())
        rows.append(row(now, True, "FORWARDED", answer, policies=ex.policies))
    return rows


def rows_of(ex: Exchange | DnsExchange, now: int | None = None) -> list[_Row]:
    """The flow rows of an HTTP or a DNS exchange."""
    return dns_rows(ex, now) if isinstance(ex, DnsExchange) else exchange_rows(ex, now)


def _set_code(store: Any, values: tuple[str, ...]) -> int:
    """A list of strings as the store interns list cells (-1: an empty list)."""
    return int(store.label_sets.code(tuple(values))) if values else -1


def _dns_columns(store: Any, rows: list[_Row]) -> dict[str, np.ndarray]:
    """The DNS ring columns of ``rows`` (caller holds the store's lock): absent on rows without DNS."""
    out = without_dns(len(rows))
    for i, r in enumerate(rows):
        d = r.dns
        if d is None:
            continue
        out["dns_query"][i] = store.names.code(("dns_query", d.query))
        out["dns_qtypes"][i] = _set_code(store, d.qtypes)
        out["dns_ips"][i] = _set_code(store, d.ips)
        out["dns_rrtypes"][i] = _set_code(store, d.rrtypes)
        if d.rcode is not None:
            out["dns_rcode"][i] = d.rcode
        if d.ttl is not None:
            out["dns_ttl"][i] = d.ttl
    return out


def append_rows(store: Any, rows: list[_Row]) -> None:
    """Append rows to a :class:`workbench.observe.store.FlowStore` as one enriched batch."""
    if not rows:
        return
    n = len(rows)
    base = {
        "time_ns": np.array([r.time_ns for r in rows], np.int64),
        "src_ip": np.array([ip_to_int(r.src[0]) for r in rows], np.uint32),
        "dst_ip": np.array([ip_to_int(r.dst[0]) for r in rows], np.uint32),
        "src_port": np.array([r.src[1] for r in rows], np.uint16),
        "dst_port": np.array([r.dst[1] for r in rows], np.uint16),
        "src_identity": np.array([r.src_identity for r in rows], np.uint32),
        "dst_identity": np.array([r.dst_identity for r in rows], np.uint32),
    }
    with store._lock:
        batch = store._enrich_common(base)
        batch.update({
            "verdict": np.array([schema.VERDICTS.index(r.verdict) for r in rows], np.int8),
            "drop_reason": np.array([r.drop_reason for r in rows], np.uint16),
            "event_type": np.full(n, schema.EVENT_TYPES.index("l7"), np.int8),
            "direction": np.array([schema.DIRECTIONS.index(r.direction) for r in rows], np.int8),
            "is_reply": np.array([int(r.is_reply) for r in rows], np.int8),
            "ip_version": np.full(n, 4, np.uint8),
            "protocol": np.array([schema.PROTOCOLS.index(r.protocol) for r in rows], np.int8),
            "tcp_flags": np.zeros(n, np.uint8),
            "match_type": np.full(n, -1, np.int8),
            "http_method": np.array([schema.HTTP_METHODS.index(r.method) if r.method else -1 for r in rows],
                                    np.int8),
            "http_url": np.array([-1 if r.url is None else store.names.code(("url", r.url)) for r in rows],
                                 np.int32),
            "http_code": np.array([-1 if r.code is None else r.code for r in rows], np.int16),
            "l7_latency_ns": np.array([-1 if r.latency_ns is None else r.latency_ns for r in rows], np.int64),
            "bytes": np.array([r.bytes for r in rows], np.int64),
            "summary": np.array([store.names.code(("summary", r.summary)) for r in rows], np.int32),
            "policies": np.array([store.policy_code(r.policies) for r in rows], np.int32),
            **_dns_columns(store, rows),
        })
        store._append(batch)


def record_exchange(store: Any, ex: Exchange | DnsExchange) -> None:
    """Append the rows of one exchange now (tests; the proxies go through :class:`FlowRecorder`)."""
    append_rows(store, rows_of(ex))


class FlowRecorder:
    """A thread that appends queued exchanges (HTTP or DNS) to a store in batches (at most ``interval`` late)."""

    def __init__(self, store: Any, interval: float = 0.02) -> None:
        self.store = store
        self.interval = interval
        self._queue: queue.SimpleQueue[Exchange | DnsExchange | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="l7-flows", daemon=True)
        self._thread.start()

    def put(self, ex: Exchange | DnsExchange) -> None:
        """Queue an exchange; its rows reach the store with the next batch."""
        self._queue.put(ex)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            time.sleep(self.interval)  # let a burst gather into one batch
            batch, stop = [first], False
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                rows = [row for ex in batch for row in rows_of(ex)]
                append_rows(self.store, rows)
            except Exception:
                traceback.print_exc()
            if stop:
                return

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=2)
