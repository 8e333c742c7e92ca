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
        # address -> names: what a DNS answer and every flow batch ask, without a scan of all records
        self._names: dict[str, set[str]] = {}
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._records)

    def learn(self, name: str, answers: Iterable[tuple[str, int]], now: float) -> list[str]:
        """Add or refresh ``name`` -> each (ip, ttl); returns the addresses that were not known before."""
        name = normal_name(name)
        new: list[str] = []
        for ip, ttl in answers:
            kept = max(int(ttl), self.min_ttl)
            record = self._records.get((name, ip))
            expires = now + kept
            if ip not in self._names and ip not in new:
                new.append(ip)
            if record is None or record.expires < expires:
                self._add(FqdnRecord(name, ip, kept, expires))
        self._bound()
        return new

    def _add(self, record: FqdnRecord) -> None:
        self._records[(record.name, record.ip)] = record
        self._names.setdefault(record.ip, set()).add(record.name)

    def _remove(self, key: tuple[str, str]) -> None:
        name, ip = key
        del self._records[key]
        names = self._names[ip]
        names.discard(name)
        if not names:
            del self._names[ip]

    def _bound(self) -> None:
        if len(self._records) <= self.max_records:
            return
        by_expiry = sorted(self._records.values(), key=lambda r: r.expires)
        for record in by_expiry[:len(self._records) - self.max_records]:
            self._remove((record.name, record.ip))
            self.evicted += 1

    def expire(self, now: float) -> list[str]:
        """Drop the records past their expiry; returns the addresses that no record names any more."""
        before = self.addresses()
        for key in [k for k, r in self._records.items() if r.expires <= now]:
            self._remove(key)
        return sorted(before - self.addresses())

    def addresses(self) -> set[str]:
        return set(self._names)

    def names_of(self, ip: str) -> tuple[str, ...]:
        """The names that resolve to ``ip`` now, sorted."""
        return tuple(sorted(self._names.get(ip, ())))

    def names_by_ip(self) -> dict[str, tuple[str, ...]]:
        return {ip: tuple(sorted(names)) for ip, names in self._names.items()}

    def records(self) -> list[FqdnRecord]:
        return sorted(self._records.values(), key=lambda r: (r.name, r.ip))

    def to_json(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.records()]

    def load(self, rows: Iterable[dict[str, Any]], now: float) -> None:
        """Records saved by an earlier agent; the expired ones are skipped."""
        for row in rows:
            record = FqdnRecord(**row)
            if record.expires > now:
                self._add(record)
