"""L7 (HTTP) rules of CiliumNetworkPolicy: ``toPorts[].rules.http[]``.

Cilium semantics kept here:

- ``method``, ``path`` and ``host`` are extended regular expressions matched
  against the *whole* value (Envoy's ``safe_regex`` is a full match): ``/v1/``
  does not match ``/v1/x``; write ``/v1/.*`` for a prefix. ``path`` is matched
  against the request target as sent (path plus query).
- ``headers``: ``"Name"`` (present) or ``"Name: value"`` (exact value);
  header names are case-insensitive.
- A request is allowed when any rule matches it; an empty rule ``{}``
  matches every request (visibility without restriction).
- L7 rules need an explicit ``protocol: TCP`` on every port of their
  ``toPorts`` item (ANY or UDP is refused), and are refused in deny sections.
- ``rules.dns`` (:mod:`workbench.policy.fqdn`) is the other L7 protocol; one
  ``toPorts`` item has HTTP or DNS rules, never both (Cilium's union).

Regular expressions have RE2 semantics, as in Envoy: matching takes time
linear in the input (no backtracking, so no pattern can stall the proxy), and
what RE2 does not support (lookaround, backreferences) is refused. They are
compiled when the policy is applied, so a bad one is refused with its field
path and nothing is applied.

Example::

    >>> rule = HttpRule(method="POST", path="/v1/request-landing")
    >>> rule.matches("POST", "/v1/request-landing", {}), rule.matches("PUT", "/v1/exhaust-port", {})
    (True, False)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import re2

from workbench.policy.fields import DocRef, Fields, join
from workbench.policy.fqdn import FqdnSelector, parse_fqdn_selector

_HTTP_FIELDS = {"method", "path", "host", "headers"}
_HTTP_UNSUPPORTED = {
    "headerMatches": "headerMatches (mismatch actions, secrets) is not supported; use headers",
}
_RULES_UNSUPPORTED = {
    "kafka": "Kafka L7 rules are not supported (HTTP and DNS only)",
    "l7proto": "generic L7 protocols are not supported (HTTP and DNS only)",
    "l7": "generic L7 rules are not supported (HTTP and DNS only)",
}


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False   # errors come back as exceptions, with the pattern's field path


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> Any:
    """The RE2 program of ``pattern`` (linear-time matching; raises re2.error for what RE2 refuses)."""
    return re2.compile(pattern, options=_RE2_OPTIONS)


@dataclass(frozen=True)
class HttpRule:
    """One ``http`` rule; empty fields match anything."""

    method: str = ""
    path: str = ""
    host: str = ""
    headers: tuple[tuple[str, str | None], ...] = ()

    def matches(self, method: str, path: str, headers: dict[str, str]) -> bool:
        """True when the request (``headers`` keyed by lower-case name) satisfies every field."""
        if self.method and not _compiled(self.method).fullmatch(method):
            return False
        if self.path and not _compiled(self.path).fullmatch(path):
            return False
        if self.host and not _compiled(self.host).fullmatch(headers.get("host", "")):
            return False
        for name, value in self.headers:
            have = headers.get(name.lower())
            if have is None or (value is not None and have != value):
                return False
        return True

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in (("method", self.method), ("path", self.path), ("host", self.host)) if v]
        parts += [f"header {n}" + (f"={v}" if v is not None else "") for n, v in self.headers]
        return "http(" + (", ".join(parts) or "any") + ")"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in (("method", self.method), ("path", self.path),
                                                  ("host", self.host)) if v}
        if self.headers:
            out["headers"] = [n if v is None else f"{n}: {v}" for n, v in self.headers]
        return out


ALLOW_ALL = HttpRule()


def _regex(doc: DocRef, path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise doc.error(path, f"must be a regular expression string, got {value!r}")
    try:
        _compiled(value)
    except re2.error as err:
        reason = err.args[0].decode(errors="replace") if err.args and isinstance(err.args[0], bytes) else str(err)
        raise doc.error(path, f"invalid regular expression {value!r} (RE2 syntax): {reason}") from None
    return value


def _header(doc: DocRef, path: str, value: Any) -> tuple[str, str | None]:
    if not isinstance(value, str) or not value.strip():
        raise doc.error(path, f'must be "Name" or "Name: value", got {value!r}')
    name, sep, rest = value.partition(":")
    name = name.strip()
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
        raise doc.error(path, f"{name!r} is not a valid HTTP header name")
    return name, rest.strip() if sep else None


def parse_http_rule(doc: DocRef, path: str, value: Any) -> HttpRule:
    if value is None:
        return ALLOW_ALL
    fields = Fields(doc, path, value, allowed=_HTTP_FIELDS, unsupported=_HTTP_UNSUPPORTED)
    method = _regex(doc, fields.at("method"), fields.value["method"]) if fields.has("method") else ""
    req_path = _regex(doc, fields.at("path"), fields.value["path"]) if fields.has("path") else ""
    host = _regex(doc, fields.at("host"), fields.value["host"]) if fields.has("host") else ""
    headers = tuple(_header(doc, item_path, item) for item_path, item in fields.items("headers"))
    return HttpRule(method, req_path, host, headers)


def parse_l7_rules(doc: DocRef, path: str, value: Any) -> tuple[HttpRule, ...]:
    """``toPorts[i].rules`` -> its HTTP rules (an empty ``http: []`` allows every request)."""
    http, _dns = parse_port_rules(doc, path, value)
    if http is None:
        raise doc.error(join(path, "dns"), "DNS rules are not allowed here (HTTP only)")
    return http


def parse_port_rules(doc: DocRef, path: str,
                     value: Any) -> tuple[tuple[HttpRule, ...] | None, tuple[FqdnSelector, ...] | None]:
    """``toPorts[i].rules`` -> (HTTP rules, DNS rules): exactly one of them is not None.

    ``http: []`` allows every request. ``dns: []`` is refused: Cilium versions
    disagree on it (older ones proxy every name, newer ones read it as no L7
    rule at all), so the policy says which it means.
    """
    fields = Fields(doc, path, value, allowed={"http", "dns"}, unsupported=_RULES_UNSUPPORTED)
    has_http, has_dns = "http" in fields.value, "dns" in fields.value
    if has_http and has_dns:
        raise doc.error(path, "has both http and dns rules (one L7 protocol per toPorts item, as in Cilium)",
                        hint="write two toPorts items")
    if has_dns:
        items = fields.items("dns")
        if not items:
            raise doc.error(fields.at("dns"), "an empty dns list names no rule",
                            hint='write [{matchPattern: "*"}] to proxy every name, or drop rules for plain L4')
        return None, tuple(parse_fqdn_selector(doc, item_path, item) for item_path, item in items)
    if not has_http:
        raise doc.error(path, "needs http or dns rules (the L7 protocols supported)")
    items = fields.items("http")
    if not items:
        return (ALLOW_ALL,), None
    return tuple(parse_http_rule(doc, item_path, item) for item_path, item in items), None


def request_allowed(rules: tuple[HttpRule, ...] | list[HttpRule], method: str, path: str,
                    headers: dict[str, str]) -> bool:
    """Any rule matching allows (rules are a union, as in Cilium)."""
    return any(rule.matches(method, path, headers) for rule in rules)
