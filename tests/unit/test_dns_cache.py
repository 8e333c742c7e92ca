"""The FQDN cache (TTL, minimum TTL, bound, persistence) and the DNS proxy's answers it builds itself."""

from __future__ import annotations

import dns.message
import dns.rcode
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.agent.dns.cache import FqdnCache
from workbench.agent.dns.proxy import HEADER_BYTES, answer_facts, formerr, refused


def test_a_record_lives_for_its_ttl_and_the_address_goes_with_the_last_name():
    cache = FqdnCache()
    assert cache.learn("API.github.com.", [("192.0.2.20", 5)], now=0.0) == ["192.0.2.20"]
    assert cache.learn("alias.example.", [("192.0.2.20", 50)], now=0.0) == []      # known address
    assert cache.names_of("192.0.2.20") == ("alias.example", "api.github.com")
    assert cache.expire(now=5.0) == []              # the other name still holds it
    assert cache.names_of("192.0.2.20") == ("alias.example",)
    assert cache.expire(now=50.0) == ["192.0.2.20"]
    assert len(cache) == 0


def test_a_refresh_extends_and_a_shorter_answer_never_shortens():
    cache = FqdnCache()
    cache.learn("a.example", [("192.0.2.1", 10)], now=0.0)
    cache.learn("a.example", [("192.0.2.1", 2)], now=1.0)
    assert cache.expire(now=9.0) == []
    cache.learn("a.example", [("192.0.2.1", 10)], now=9.0)
    assert cache.expire(now=18.0) == [] and cache.expire(now=19.0) == ["192.0.2.1"]


def test_the_minimum_ttl_holds_short_answers():
    cache = FqdnCache(min_ttl=60)
    cache.learn("a.example", [("192.0.2.1", 1)], now=0.0)
    assert cache.records()[0].ttl == 60
    assert cache.expire(now=59.0) == [] and cache.expire(now=60.0) == ["192.0.2.1"]


def test_the_cache_is_bounded_and_counts_what_it_evicts():
    cache = FqdnCache(max_records=100)
    for i in range(250):
        cache.learn(f"n{i}.example", [(f"198.51.100.{i % 250}", 1000 + i)], now=0.0)
    assert len(cache) == 100 and cache.evicted == 150
    assert {r.name for r in cache.records()} == {f"n{i}.example" for i in range(150, 250)}   # longest-lived kept


def test_saved_records_load_and_expired_ones_are_skipped():
    cache = FqdnCache()
    cache.learn("a.example", [("192.0.2.1", 10)], now=0.0)
    cache.learn("b.example", [("192.0.2.2", 100)], now=0.0)
    again = FqdnCache()
    again.load(cache.to_json(), now=50.0)
    assert [r.name for r in again.records()] == ["b.example"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a.example", "b.example", "c.example"]),
                          st.sampled_from(["192.0.2.1", "192.0.2.2", "198.51.100.7"]),
                          st.integers(0, 30), st.integers(0, 30)), max_size=30),
       st.integers(0, 70))
def test_expiry_matches_a_plain_reference(learns, at):
    """Reference: a record (name, ip) lives until the latest (learnt + ttl) of its answers."""
    cache = FqdnCache()
    until: dict[tuple[str, str], int] = {}
    for name, ip, when, ttl in sorted(learns, key=lambda x: x[2]):
        cache.learn(name, [(ip, ttl)], now=float(when))
        until[(name, ip)] = max(until.get((name, ip), 0), when + ttl)
    cache.expire(now=float(at))
    assert {(r.name, r.ip) for r in cache.records()} == {k for k, t in until.items() if t > at}


def test_formerr_keeps_the_id_and_needs_a_header():
    assert formerr(b"\x12") is None
    answer = formerr(b"\xab\xcd\x01\x00" + b"\x00" * (HEADER_BYTES - 4) + b"garbage")
    assert answer is not None
    msg = dns.message.from_wire(answer)
    assert msg.id == 0xABCD and msg.rcode() == dns.rcode.FORMERR and msg.flags & 0x8000


def test_refused_answers_the_question():
    query = dns.message.make_query("support.github.com", "A")
    msg = dns.message.from_wire(refused(query))
    assert msg.id == query.id and msg.rcode() == dns.rcode.REFUSED and msg.question == query.question


def test_answer_facts_take_addresses_and_the_smallest_ttl():
    query = dns.message.make_query("api.github.com", "A")
    answer = dns.message.make_response(query)
    answer.answer.append(dns.rrset.from_text("api.github.com.", 30, "IN", "A", "192.0.2.20", "192.0.2.21"))
    answer.answer.append(dns.rrset.from_text("api.github.com.", 5, "IN", "A", "192.0.2.22"))
    assert answer_facts(answer) == (("192.0.2.20", "192.0.2.21", "192.0.2.22"), 5)
