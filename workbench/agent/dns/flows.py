"""DNS proxy queries -> the flow store's DNS rows (through the L7 flow recorder's batches)."""

from __future__ import annotations

from workbench.agent.dns.proxy import Query
from workbench.agent.l7.flows import DnsExchange


def to_exchange(query: Query) -> DnsExchange:
    """The flow layer's record of one finished query (see workbench.agent.l7.flows for the rows it gives)."""
    decision = query.decision
    answered_at = query.started_ns + (query.latency_ns or 0)
    return DnsExchange(
        client=query.client, server=query.server, query=query.name or ".", qtypes=query.qtypes,
        verdict=query.verdict, protocol=query.protocol,
        src_identity=decision.src_identity if decision else 0,
        dst_identity=decision.dst_identity if decision else 0,
        rcode=query.rcode, ips=query.ips, ttl=query.ttl, cnames=query.cnames,
        policies=decision.policies if decision else (), latency_ns=query.latency_ns,
        request_bytes=query.query_bytes, response_bytes=query.answer_bytes, direction="EGRESS",
        time_ns=answered_at)
