"""Which policies allow an HTTP request: the proxy's side of flow attribution.

The compiled policy merges the HTTP rules of every policy that allows a map
key (``CompiledPolicy.l7``), which is what the proxy needs to decide but not
enough to say *who* allowed a request. This module compiles each applied
policy on its own (once per compiled policy, on the first L7 request) and asks
each the proxy's question: a policy allows the request when its own HTTP
rules for (endpoint, direction, peer, port) match it, or when it allows that
key at L3/L4 (Cilium's wildcard: every request passes). The proxy attributes
an allowed request to those policies; a denied one to none.

Example::

    >>> attributor = Attributor(lambda: documents, endpoints, identities, namespaces)   # doctest: +SKIP
    >>> attributor.allowed_by(compiled, 3, "ingress", 258, 80, "POST", "/v1/request-landing", {})  # doctest: +SKIP
    ('default/rule1',)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

from workbench.lab.model import Direction, Endpoint, Identity
from workbench.policy.compiler import CompiledPolicy, compile_policies
from workbench.policy.l7 import request_allowed
from workbench.policy.ports import PORT_BITS
from workbench.policy.rules import PolicyDocument

ANY_PEER = 0


def allows_key(compiled: CompiledPolicy, ep_id: int, direction: Direction, identity: int, port: int) -> bool:
    """True when an allow entry of ``compiled`` matches a TCP connection (the datapath's two lookups)."""
    for entry in compiled.entries_for(ep_id, direction):
        if entry.deny or entry.identity not in (identity, ANY_PEER) or entry.protocol not in (0, 6):
            continue
        if entry.protocol == 0 or (port >> (PORT_BITS - entry.port_prefix)) == \
                (entry.port >> (PORT_BITS - entry.port_prefix)):
            return True
    return False


class Attributor:
    """Per-policy compiles of the applied policy, kept until the policy changes."""

    def __init__(self, documents: Callable[[], Mapping[str, PolicyDocument]],
                 endpoints: Callable[[], Sequence[Endpoint]], identities: Callable[[], Sequence[Identity]],
                 namespaces: Callable[[], Mapping[str, Mapping[str, str]]]) -> None:
        self._documents = documents
        self._endpoints = endpoints
        self._identities = identities
        self._namespaces = namespaces
        self._lock = threading.Lock()
        self._for: object = None
        self._alone: dict[str, CompiledPolicy] = {}

    def _each(self, compiled: CompiledPolicy) -> dict[str, CompiledPolicy]:
        with self._lock:
            if compiled is not self._for:
                endpoints, identities = list(self._endpoints()), list(self._identities())
                namespaces = self._namespaces()
                self._alone = {
                    key: compile_policies([doc], endpoints, identities, namespaces,
                                          previous_cidr_identities=compiled.cidr_identities)
                    for key, doc in self._documents().items() if key in compiled.documents}
                self._for = compiled
            return self._alone

    def allowed_by(self, compiled: CompiledPolicy, ep_id: int, direction: Direction, identity: int, port: int,
                   method: str, path: str, headers: dict[str, str]) -> tuple[str, ...]:
        """The keys of the policies that allow this request on their own, sorted."""
        found = []
        for key, alone in self._each(compiled).items():
            rules = alone.http_rules(ep_id, direction, identity, port)
            if rules is None:
                if allows_key(alone, ep_id, direction, identity, port):
                    found.append(key)   # an L3/L4 allow of this policy: every request passes it
            elif request_allowed(rules, method, path, headers):
                found.append(key)
        return tuple(sorted(found))
