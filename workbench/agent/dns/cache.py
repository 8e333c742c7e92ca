"""The names the DNS proxy learned: (name, IP) with the answer's TTL, as Cilium's FQDN cache. Pure: no kernel.

An allowed answer adds or refreshes one record per (name, address); a record
lives for its TTL, or for the lab's minimum TTL when the answer's is shorter
(Cilium's ``--tofqdns-min-ttl``). Expiry hands back the addresses no live
record names any more, so the service can take their fqdn identities out of
the ipcache. The cache is bounded: past ``max_records`` the records closest to
expiry go first, and every eviction is counted.

Example::

    >>> cache = FqdnCache(min_ttl=0)
    >>> cache.learn("api.github.com", [("192.0.2.20", 30)], now=100.0)
    ['192.0.2.20']
    >>> cache.names_of("192.0.2.20")
    ('api.github.com',)
    >>> cache.expire(now=131.0)
    ['192.0.2.20']
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_MAX_RECORDS = 65536


def normal_name(name: str) -> str:
    """Lower case, no trailing dot: how names are kept and matched."""
    return name.rstrip(".").lower()


@dataclass
class FqdnRecord:
    """One learned (name, address): the TTL the answer carried and when it expires (epoch seconds)."""

    name: str
    ip: str
    ttl: int
    expires: float
    source: str = "dns-proxy"


class FqdnCache:
    """(name, IP) records with expiry; see the module docstring."""

    def __init__(self, min_ttl: int = 0, max_records: int = DEFAULT_MAX_RECORDS) -> None:
        self.min_ttl = min_ttl
        self.max_records = max_records
        self._records: dict[tuple[str, str], FqdnRecord] = {}
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._records)

    def learn(self, name: str, answers: Iterable[tuple[str, int]], now: float) -> list[str]:
        """Add or refresh ``name`` -> each (ip, ttl); returns the addresses that were not known before."""
        name = normal_name(name)
        known = self.addresses()
        new: list[str] = []
        for ip, ttl in answers:
            kept = max(int(ttl), self.min_ttl)
            record = self._records.get((name, ip))
            expires = now + kept
            if record is None or record.expires < expires:
                self._records[(name, ip)] = FqdnRecord(name, ip, kept, expires)
            if ip not in known and ip not in new:
                new.append(ip)
        self._bound()
        return new

    def _bound(self) -> None:
        if len(self._records) <= self.max_records:
            return
        by_expiry = sorted(self._records.values(), key=lambda r: r.expires)
        for record in by_expiry[:len(self._records) - self.max_records]:
            del self._records[(record.name, record.ip)]
            self.evicted += 1

    def expire(self, now: float) -> list[str]:
        """Drop the records past their expiry; returns the addresses that no record names any more."""
        before = self.addresses()
        for key in [k for k, r in self._records.items() if r.expires <= now]:
            del self._records[key]
        return sorted(before - self.addresses())

    def addresses(self) -> set[str]:
        return {ip for _, ip in self._records}

    def names_of(self, ip: str) -> tuple[str, ...]:
        """The names that resolve to ``ip`` now, sorted."""
        return tuple(sorted({name for name, addr in self._records if addr == ip}))

    def names_by_ip(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, set[str]] = {}
        for name, ip in self._records:
            out.setdefault(ip, set()).add(name)
        return {ip: tuple(sorted(names)) for ip, names in out.items()}

    def records(self) -> list[FqdnRecord]:
        return sorted(self._records.values(), key=lambda r: (r.name, r.ip))

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.records()]

    def load(self, rows: Iterable[dict[str, Any]], now: float) -> None:
        """Records saved by an earlier agent; the expired ones are skipped."""
        for row in rows:
            record = FqdnRecord(**row)
            if record.expires > now:
                self._records[(record.name, record.ip)] = record
