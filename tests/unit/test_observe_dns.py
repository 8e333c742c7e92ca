"""DNS in flows, as Hubble shows it: the DNS proxy's rows (DnsExchange), the names the agent learned
(src_names / dst_names), every reader and writer of the new columns, the --fqdn / --dns-query filters
against a small reference, and the hubble_dns_* metrics (checked by promtool when it is installed)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pytest

from workbench.agent.l7.flows import DnsExchange, FlowRecorder, append_rows, dns_rows
from workbench.errors import ValidationError
from workbench.observe import render, schema, synthetic
from workbench.observe.archive import ContinuousArchiver, export_parquet, load_parquet
from workbench.observe.enrich import EnrichmentContext
from workbench.observe.filters import flows
from workbench.observe.ipc import from_ipc, to_ipc
from workbench.observe.metrics import metric_value, metrics_frame
from workbench.observe.store import FlowStore
from workbench.observe.synthetic import DNS_SERVER_IP, GITHUB_IP, TIEFIGHTER, WORLD_IP, XWING

NOW = 1_800_000_000_000_000_000
DNS_COLUMNS = ["dns_query", "dns_rcode", "dns_qtypes", "dns_ips", "dns_ttl", "src_names", "dst_names"]


def dns_store(**kwargs):
    """The demo's DNS exchanges, then the names they teach, then datapath traffic to those addresses."""
    store = FlowStore(context=synthetic.star_wars_context(), **kwargs)
    append_rows(store, [row for ex in synthetic.dns_exchanges(NOW) for row in dns_rows(DnsExchange(**ex))])
    store.context.update(names=synthetic.dns_names())
    store.ingest(synthetic.events([dict(src=XWING.ipv4, dst=GITHUB_IP, sport=41000, dport=443,
                                        direction="EGRESS", src_identity=XWING.identity, dst_identity=2),
                                   dict(src=WORLD_IP, dst=TIEFIGHTER.ipv4, sport=443, dport=41001, is_reply=True,
                                        tcp_flags=0x12, src_identity=2, dst_identity=TIEFIGHTER.identity)]))
    return store


@pytest.fixture
def frame():
    return dns_store().frame()


def as_lists(column):
    return [list(v) for v in column]


# -- schema --------------------------------------------------------------------------------------

def test_dns_columns_sit_between_l7_latency_and_bytes_in_order():
    at = schema.COLUMNS.index("l7_latency_ns")
    assert schema.COLUMNS[at + 1:at + 9] == [*DNS_COLUMNS, "bytes"]
    assert "icmp_type" not in schema.COLUMNS
    assert schema.FLOW_DTYPES["dns_rcode"] == pd.Int16Dtype() and schema.FLOW_DTYPES["dns_ttl"] == pd.UInt32Dtype()
    empty = schema.empty_flows()
    schema.validate_flows(empty)
    assert list(empty.columns) == schema.COLUMNS


def test_docs_list_the_columns_in_the_schemas_order():
    text = (Path(__file__).resolve().parents[2] / "docs" / "flows.md").read_text()
    documented = re.findall(r"^\| (\d+) \| `(\w+)` \|", text, flags=re.MULTILINE)
    assert [int(n) for n, _ in documented] == list(range(1, len(schema.COLUMNS) + 1))
    assert [name for _, name in documented] == schema.COLUMNS


# -- rows of the DNS proxy ----------------------------------------------------------------------

def test_an_allowed_query_is_a_request_and_a_response_row():
    ex = DnsExchange(client=(XWING.ipv4, 40101), server=(DNS_SERVER_IP, 53), query="api.github.com.",
                     qtypes=("A",), src_identity=258, dst_identity=2, rcode=0, ips=(GITHUB_IP,), ttl=30,
                     policies=("default/dns",), latency_ns=2_000_000, request_bytes=60, response_bytes=76,
                     time_ns=NOW)
    request, response = dns_rows(ex)
    assert (request.src, request.dst, request.is_reply, request.verdict) == (ex.client, ex.server, False, "FORWARDED")
    assert (request.src_identity, request.dst_identity, request.bytes) == (258, 2, 60)
    assert request.dns.query == "api.github.com." and request.dns.rcode is None and request.dns.ips == ()
    assert request.summary == "DNS Query api.github.com. A" and request.time_ns == NOW - 2_000_000
    assert (response.src, response.dst, response.is_reply, response.time_ns) == (ex.server, ex.client, True, NOW)
    assert (response.src_identity, response.dst_identity, response.bytes) == (2, 258, 76)
    assert (response.dns.rcode, response.dns.ips, response.dns.ttl, response.dns.rrtypes) == (0, (GITHUB_IP,), 30,
                                                                                              ("A",))
    assert response.summary == 'DNS Answer "192.0.2.20" TTL: 30 (Proxy api.github.com. A)'
    assert request.policies == response.policies == ("default/dns",)
    assert request.protocol == response.protocol == "UDP" and request.direction == "EGRESS"


def test_a_refused_query_is_one_dropped_request_as_cilium_records_it():
    ex = DnsExchange(client=(TIEFIGHTER.ipv4, 40202), server=(DNS_SERVER_IP, 53), query="evil.example.com.",
                     qtypes=("AAAA",), verdict="DROPPED", policies=("default/ignored",), time_ns=NOW)
    (row,) = dns_rows(ex)
    assert (row.verdict, row.drop_reason, row.is_reply, row.policies) == ("DROPPED", 133, False, ())
    assert row.dns.rcode is None and row.summary == "DNS Query evil.example.com. AAAA"


def test_error_and_unanswered_queries_are_request_rows_only():
    server = (DNS_SERVER_IP, 53)
    (error,) = dns_rows(DnsExchange(client=(XWING.ipv4, 1), server=server, query="a.", verdict="ERROR"))
    assert (error.verdict, error.drop_reason) == ("ERROR", 0)
    (unanswered,) = dns_rows(DnsExchange(client=(XWING.ipv4, 1), server=server, query="a.", protocol="TCP"))
    assert (unanswered.verdict, unanswered.protocol, unanswered.dns.rcode) == ("FORWARDED", "TCP", None)


@pytest.mark.parametrize(("kwargs", "summary"), [
    (dict(rcode=3, ttl=0), "DNS Answer RCode: Non-Existent Domain TTL: 0 (Proxy x.example. A)"),
    (dict(rcode=2), "DNS Answer RCode: Server Failure TTL: 0 (Proxy x.example. A)"),
    (dict(rcode=0, ips=("192.0.2.1", "192.0.2.2"), cnames=("y.example.",), ttl=5),
     'DNS Answer "192.0.2.1,192.0.2.2" CNAMEs: "y.example." TTL: 5 (Proxy x.example. A)'),
    (dict(rcode=0, ttl=7), "DNS Answer  TTL: 7 (Proxy x.example. A)"),   # an empty answer, as Hubble prints it
])
def test_response_summaries_read_like_hubble(kwargs, summary):
    ex = DnsExchange(client=(XWING.ipv4, 1), server=(DNS_SERVER_IP, 53), query="x.example.", **kwargs)
    assert dns_rows(ex)[1].summary == summary


def test_answer_types_default_to_the_answer_records():
    ex = DnsExchange(client=(XWING.ipv4, 1), server=(DNS_SERVER_IP, 53), query="x.", qtypes=("A", "AAAA"), rcode=0,
                     ips=("192.0.2.1", "2001:db8::1"), cnames=("y.",))
    assert ex.answer_types() == ("CNAME", "A", "AAAA")
    assert DnsExchange(client=("10.0.0.1", 1), server=("10.0.0.2", 53), query="x.", rrtypes=("MX",),
                       rcode=0).answer_types() == ("MX",)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(verdict="ALLOWED"), "DNS verdict"), (dict(protocol="SCTP"), "DNS protocol"),
    (dict(direction="OUT"), "direction"),
])
def test_exchange_values_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DnsExchange(client=("10.0.0.1", 1), server=("10.0.0.2", 53), query="x.", **kwargs)


def test_store_rows_carry_every_dns_value(frame):
    dns = frame[frame.dns_query.notna()].reset_index(drop=True)
    assert len(dns) == 7 and set(dns.event_type) == {"l7"}
    assert dns.dns_query.tolist() == ["api.github.com."] * 2 + ["www.example.org."] * 2 + \
        ["nope.example.org."] * 2 + ["evil.example.com."]
    assert dns.protocol.tolist() == ["UDP", "UDP", "TCP", "TCP", "UDP", "UDP", "UDP"]
    assert dns.is_reply.tolist() == [False, True, False, True, False, True, False]
    assert dns.dns_rcode.tolist() == [pd.NA, 0, pd.NA, 0, pd.NA, 3, pd.NA]
    assert dns.dns_ttl.tolist() == [pd.NA, 30, pd.NA, 300, pd.NA, 0, pd.NA]
    assert as_lists(dns.dns_qtypes) == [["A"]] * 6 + [["AAAA"]]
    assert as_lists(dns.dns_ips) == [[], [GITHUB_IP], [], [WORLD_IP], [], [], []]
    assert dns.verdict.tolist() == ["FORWARDED"] * 6 + ["DROPPED"]
    assert dns.drop_reason.tolist() == [0] * 6 + [133]
    assert dns.traffic_direction.unique().tolist() == ["EGRESS"]
    assert as_lists(dns.egress_allowed_by) == [["default/allow-github-dns"]] * 4 + [[]] * 3
    assert dns.http_url.isna().all() and dns.http_code.isna().all() and dns.http_method.isna().all()
    assert dns.l7_latency_ns.tolist() == [pd.NA, 1_200_000, pd.NA, 900_000, pd.NA, 700_000, pd.NA]
    assert dns.dst_pod.tolist()[1] == "xwing" and dns.src_pod.tolist()[0] == "xwing"
    others = frame[frame.dns_query.isna()]
    assert others.dns_rcode.isna().all() and others.dns_ttl.isna().all()
    assert (others.dns_qtypes.list.len() == 0).all() and (others.dns_ips.list.len() == 0).all()


def test_the_recorder_takes_both_exchange_kinds():
    from workbench.agent.l7.proxy import Exchange

    store = FlowStore(context=synthetic.star_wars_context())
    recorder = FlowRecorder(store, interval=0.01)
    try:
        recorder.put(DnsExchange(**synthetic.dns_exchanges(NOW)[0]))
        recorder.put(Exchange(client=(XWING.ipv4, 2), server=("10.200.0.13", 80), method="GET",
                              url="http://deathstar/v1/", code=200, verdict="FORWARDED", latency_ns=1000,
                              decision=None))
    finally:
        recorder.close()
    frame = store.frame()
    assert frame.summary.tolist()[:2] == ["DNS Query api.github.com. A",
                                          'DNS Answer "192.0.2.20" TTL: 30 (Proxy api.github.com. A)']
    assert frame.http_method.tolist()[2:] == ["GET", "GET"] and frame.dns_query.tolist()[2:] == [np.nan, np.nan]


# -- names ---------------------------------------------------------------------------------------

def test_rows_enriched_after_names_are_learned_carry_them(frame):
    dns = frame[frame.dns_query.notna()]
    assert (dns.src_names.list.len() == 0).all() and (dns.dst_names.list.len() == 0).all()  # learned later
    trace = frame[frame.dns_query.isna()].reset_index(drop=True)
    assert as_lists(trace.dst_names) == [["api.github.com"], []]
    assert as_lists(trace.src_names) == [[], ["www.example.org"]]


def test_names_are_hubbles_and_merge_and_clear():
    ctx = EnrichmentContext()
    ctx.update(names={GITHUB_IP: ["API.GitHub.com.", "api.github.com"]})
    assert ctx.names == {GITHUB_IP: ("api.github.com",)}
    ctx.add_names({GITHUB_IP: ["www.github.com."], WORLD_IP: ["example.org"]})
    assert ctx.names == {GITHUB_IP: ("api.github.com", "www.github.com"), WORLD_IP: ("example.org",)}
    version = ctx.tables.version
    ctx.add_names({GITHUB_IP: ["api.github.com"]})          # nothing new: no rebuild
    assert ctx.tables.version == version
    store = FlowStore(context=ctx)
    store.ingest(synthetic.events([dict(src=WORLD_IP, dst=GITHUB_IP)]))
    ctx.update(names={})
    store.ingest(synthetic.events([dict(src=WORLD_IP, dst=GITHUB_IP)]))
    out = store.frame()
    assert as_lists(out.dst_names) == [["api.github.com", "www.github.com"], []]
    assert as_lists(out.src_names) == [["example.org"], []]


def test_names_enrich_a_large_batch_in_bulk():
    ctx = synthetic.star_wars_context()
    ctx.update(names=synthetic.dns_names())
    store = FlowStore(capacity=200_000, context=ctx)
    events = synthetic.random_events(200_000, seed=9)
    store.ingest(events)
    out = store.frame()
    world = out.dst_ip == WORLD_IP
    assert world.sum() > 10_000
    assert (out.dst_names[world].list.len() == 1).all() and (out.dst_names[~world].list.len() == 0).all()
    assert set(out.dst_names[world].list[0]) == {"www.example.org"}


# -- readers and writers -------------------------------------------------------------------------

def test_ipc_and_json_and_parquet_round_trips_keep_the_dns_columns(frame, tmp_path):
    pd.testing.assert_frame_equal(from_ipc(to_ipc(frame)), frame)
    pd.testing.assert_frame_equal(render.read_json_lines(render.to_json_lines(frame)), frame)
    path = export_parquet(frame, tmp_path / "dns.parquet")
    pd.testing.assert_frame_equal(load_parquet(path), frame)


def test_json_lines_name_the_dns_fields(frame):
    records = [json.loads(line) for line in render.to_json_lines(frame).splitlines()]
    assert all(list(r) == schema.COLUMNS for r in records)
    answer = records[1]
    assert {k: answer[k] for k in DNS_COLUMNS} == {
        "dns_query": "api.github.com.", "dns_rcode": 0, "dns_qtypes": ["A"], "dns_ips": [GITHUB_IP],
        "dns_ttl": 30, "src_names": [], "dst_names": []}
    assert records[0]["dns_rcode"] is None and records[0]["dns_ttl"] is None and records[0]["dns_ips"] == []
    assert records[-2]["dst_names"] == ["api.github.com"] and records[-2]["dns_query"] is None


def test_plain_readers_see_the_dns_columns(frame, tmp_path):
    path = export_parquet(frame, tmp_path / "dns.parquet")
    plain = pd.read_parquet(path)
    assert list(plain.columns) == schema.COLUMNS
    assert [list(x) for x in plain.dns_ips] == as_lists(frame.dns_ips)
    assert plain.dns_query.dropna().tolist() == frame.dns_query.dropna().tolist()
    rows = duckdb.sql(f"SELECT dns_query, dns_rcode, dns_ttl, dns_ips FROM read_parquet('{path}') "
                      "WHERE dns_rcode IS NOT NULL ORDER BY time").fetchall()
    assert rows == [("api.github.com.", 0, 30, [GITHUB_IP]), ("www.example.org.", 0, 300, [WORLD_IP]),
                    ("nope.example.org.", 3, 0, [])]
    table = pl.read_parquet(path)
    assert table.columns == schema.COLUMNS
    assert table["dns_ttl"].dtype == pl.UInt32 and table["dns_rcode"].dtype == pl.Int16
    assert table["dst_names"].to_list() == as_lists(frame.dst_names)
    assert table.filter(pl.col("dns_qtypes").list.contains("AAAA"))["verdict"].to_list() == ["DROPPED"]


def test_the_archive_writes_the_dns_columns(tmp_path):
    store = FlowStore(context=synthetic.star_wars_context())
    archiver = ContinuousArchiver(store, tmp_path / "archive", flush_rows=1, flush_seconds=0.05)
    try:
        append_rows(store, [row for ex in synthetic.dns_exchanges(NOW) for row in dns_rows(DnsExchange(**ex))])
        store.context.update(names=synthetic.dns_names())
        store.ingest(synthetic.events([dict(src=XWING.ipv4, dst=GITHUB_IP, dport=443)]))
    finally:
        archiver.close()
    back = load_parquet(tmp_path / "archive")
    expected = store.frame()
    expected.attrs.pop("seq")
    pd.testing.assert_frame_equal(back, expected, check_categorical=False)
    assert as_lists(back.dst_names)[-1] == ["api.github.com"]


# -- text output ---------------------------------------------------------------------------------

def test_compact_lines_read_like_hubble(frame):
    lines = render.format_compact(frame).splitlines()
    tail = [line.split(": ", 1)[1] for line in lines]
    assert tail[0] == ("default/xwing:40101 (ID:258) -> 10.200.0.2:53 (ID:0) dns-request FORWARDED "
                       "(DNS Query api.github.com. A) (allowed by default/allow-github-dns)")
    # a reply is printed from the client's side, as Hubble flips it
    assert tail[1].startswith("default/xwing:40101 (ID:258) <- 10.200.0.2:53 (ID:0) dns-response FORWARDED "
                              '(DNS Answer "192.0.2.20" TTL: 30 (Proxy api.github.com. A))')
    assert tail[6] == ("default/tiefighter:40202 (ID:259) -> 10.200.0.2:53 (ID:0) dns-request DROPPED "
                       "(DNS Query evil.example.com. AAAA)")
    assert "-> api.github.com:443 (world) " in tail[7]          # no pod: the names, as Hubble prints them
    assert tail[8].startswith("default/tiefighter:41001 (ID:259) <- www.example.org:443 (world) ")


def test_table_shows_dns_types_and_names(frame):
    lines = render.format_table(frame).splitlines()
    assert re.search(r"dns-request\s+FORWARDED\s+DNS Query api\.github\.com\. A$", lines[1])
    assert re.search(r"dns-response\s+FORWARDED\s+DNS Answer RCode: Non-Existent Domain", lines[6])
    assert "api.github.com:443" in lines[8]


# -- filters -------------------------------------------------------------------------------------

def reference_fqdn(pattern: str, name: str) -> bool:
    """Hubble's FQDN pattern, matched character by character (no regex): "*" is any run of [-.0-9a-z]."""
    pattern = pattern.strip()
    pattern = (pattern[:-1] if pattern.endswith(".") else pattern).lower()
    allowed = set("-.0123456789abcdefghijklmnopqrstuvwxyz")

    def match(p: int, n: int) -> bool:
        if p == len(pattern):
            return n == len(name)
        if pattern[p] == "*":
            return match(p + 1, n) or (n < len(name) and name[n] in allowed and match(p, n + 1))
        return n < len(name) and name[n] == pattern[p] and match(p + 1, n + 1)
    return match(0, 0)


NAMES = {GITHUB_IP: ("api.github.com", "gh-cdn_1.github.io"), WORLD_IP: ("www.example.org",),
         "192.0.2.30": ("a.b.example.org", "github.com")}


@pytest.fixture
def names_frame():
    ctx = synthetic.star_wars_context()
    ctx.update(names=NAMES)
    store = FlowStore(context=ctx)
    ips = [XWING.ipv4, TIEFIGHTER.ipv4, *NAMES]
    store.ingest(synthetic.events([dict(src=a, dst=b, sport=1000 + i) for i, (a, b) in
                                   enumerate((a, b) for a in ips for b in ips if a != b)]))
    return store.frame()


@pytest.mark.parametrize("pattern", ["api.github.com", "API.GitHub.com.", "*.github.com", "*github*", "*",
                                     "*.example.org", "www.*.org", "github.com", "*_1.github.io", "nothing.at.all"])
@pytest.mark.parametrize("side", ["from_fqdn", "to_fqdn", "fqdn"])
def test_fqdn_filters_match_the_reference(names_frame, pattern, side):
    def hits(names) -> bool:
        return any(reference_fqdn(pattern, str(n)) for n in names)
    src = np.array([hits(v) for v in names_frame.src_names])
    dst = np.array([hits(v) for v in names_frame.dst_names])
    expected = {"from_fqdn": src, "to_fqdn": dst, "fqdn": src | dst}[side]
    got = flows(names_frame, **{side: pattern})
    assert len(got) == expected.sum()
    assert got.src_port.tolist() == names_frame.src_port[expected].tolist()


def test_fqdn_filters_select_the_expected_rows(names_frame):
    assert set(flows(names_frame, to_fqdn="*.github.com").dst_ip) == {GITHUB_IP}
    assert set(flows(names_frame, to_fqdn=["github.com", "www.example.org"]).dst_ip) == {"192.0.2.30", WORLD_IP}
    assert len(flows(names_frame, fqdn="*")) == len(names_frame) - 2      # xwing <-> tiefighter have no names


@pytest.mark.parametrize("pattern", ["a b", "", "x..", "api.github.com/x", "(a|b)"])
def test_bad_fqdn_patterns_are_errors(names_frame, pattern):
    with pytest.raises(ValidationError, match="fqdn"):
        flows(names_frame, fqdn=pattern)


@pytest.mark.parametrize("regex", [r"github", r"^nope\.", r"\.org\.$", r"example", r"^$", r"EVIL"])
def test_dns_query_filter_matches_the_reference(frame, regex):
    expected = [isinstance(q, str) and re.search(regex, q) is not None for q in frame.dns_query]
    got = flows(frame, dns_query=regex)
    assert got.time.tolist() == frame.time[expected].tolist()


def test_dns_filters_combine_with_the_others(frame):
    assert len(flows(frame, dns_query=["github", "evil"], verdict="DROPPED")) == 1
    assert len(flows(frame, dns_query="github", protocol="UDP", from_pod="xwing")) == 1
    with pytest.raises(ValidationError, match="invalid regular expression"):
        flows(frame, dns_query="(")


def cli(*argv):
    return subprocess.run([sys.executable, "-m", "workbench", *argv], capture_output=True, text=True)


def test_observe_flags_filter_an_archive(frame, tmp_path):
    help_text = cli("observe", "--help").stdout
    for flag in ("--fqdn", "--from-fqdn", "--to-fqdn", "--dns-query"):
        assert flag in help_text
    path = export_parquet(frame, tmp_path / "dns.parquet")
    proc = cli("observe", "--input-file", str(path), "--dns-query", "example", "--all", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    back = render.read_json_lines(proc.stdout)
    assert back.dns_query.tolist() == ["www.example.org."] * 2 + ["nope.example.org."] * 2 + ["evil.example.com."]
    proc = cli("observe", "--input-file", str(path), "--to-fqdn", "*.github.com", "--all")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    assert "default/xwing:41000 (ID:258) -> api.github.com:443 (world)" in line
    proc = cli("observe", "--input-file", str(path), "--fqdn", "bad pattern")
    assert proc.returncode == 1 and "fqdn" in proc.stderr


# -- metrics -------------------------------------------------------------------------------------

def test_dns_metrics_count_hubbles_labels():
    store = dns_store()
    m = metrics_frame(store.metrics.exposition())
    assert metric_value(m, "hubble_dns_queries_total", rcode="", qtypes="A", ips_returned="0") == 3
    assert metric_value(m, "hubble_dns_queries_total", rcode="Policy denied", qtypes="AAAA",
                        ips_returned="0") == 1
    assert metric_value(m, "hubble_dns_queries_total") == 4
    assert metric_value(m, "hubble_dns_responses_total", rcode="No Error", qtypes="A", ips_returned="1") == 2
    assert metric_value(m, "hubble_dns_responses_total", rcode="Non-Existent Domain", qtypes="A",
                        ips_returned="0") == 1
    assert metric_value(m, "hubble_dns_responses_total") == 3
    assert metric_value(m, "hubble_dns_response_types_total", type="A", qtypes="A") == 2
    assert metric_value(m, "hubble_dns_response_types_total", type="CNAME", qtypes="A") == 1
    assert metric_value(m, "hubble_dns_response_types_total") == 3
    assert metric_value(m, "hubble_flows_processed_total", type="L7", subtype="DNS", verdict="FORWARDED") == 6
    assert metric_value(m, "hubble_flows_processed_total", type="L7", subtype="DNS", verdict="DROPPED") == 1
    assert metric_value(m, "hubble_flows_processed_total", type="L7", subtype="HTTP") == 0


def test_dns_metrics_equal_the_frame_for_many_exchanges():
    rng = np.random.default_rng(5)
    store = FlowStore(capacity=10_000, context=synthetic.star_wars_context())
    exchanges = []
    for i in range(500):
        verdict = ["FORWARDED", "DROPPED", "ERROR"][rng.choice(3, p=[0.8, 0.15, 0.05])]
        answered = verdict == "FORWARDED" and rng.random() < 0.9
        rcode = int(rng.choice([0, 0, 0, 2, 3])) if answered else None
        ips = tuple(f"192.0.2.{j}" for j in range(int(rng.integers(0, 3)))) if rcode == 0 else ()
        exchanges.append(DnsExchange(client=(XWING.ipv4, 30000 + i), server=(DNS_SERVER_IP, 53),
                                     query=f"h{i % 7}.example.", qtypes=(str(rng.choice(["A", "AAAA"])),),
                                     verdict=verdict, rcode=rcode, ips=ips, ttl=60 if answered else None))
    for start in range(0, 500, 50):        # several batches, as the recorder appends them
        append_rows(store, [row for ex in exchanges[start:start + 50] for row in dns_rows(ex)])
    df = store.frame()
    m = metrics_frame(store.metrics.exposition())
    dns = df[df.dns_query.notna()]
    rcode = np.where(dns.verdict == "DROPPED", "Policy denied", "")
    queries = dns.assign(rcode=rcode, qtypes=dns.dns_qtypes.list[0], ips=dns.dns_ips.list.len().astype(str))
    requests = queries[(queries.is_reply == False) | (queries.verdict == "DROPPED")]  # noqa: E712
    for (r, q, n), count in requests.groupby(["rcode", "qtypes", "ips"]).size().items():
        assert metric_value(m, "hubble_dns_queries_total", rcode=r, qtypes=q, ips_returned=n) == count
    replies = queries[queries.is_reply == True]  # noqa: E712
    names = {0: "No Error", 2: "Server Failure", 3: "Non-Existent Domain"}
    for (code, q, n), count in replies.groupby(["dns_rcode", "qtypes", "ips"]).size().items():
        assert metric_value(m, "hubble_dns_responses_total", rcode=names[code], qtypes=q, ips_returned=n) == count
    assert metric_value(m, "hubble_dns_queries_total") == len(requests) == 500
    assert metric_value(m, "hubble_dns_response_types_total") == replies.dns_ips.list.len().sum()


def promtool() -> str | None:
    """$PROMTOOL, the one `make setup` unpacks next to the venv's python, or one on PATH."""
    beside = Path(sys.executable).parent / "promtool"
    return os.environ.get("PROMTOOL") or (str(beside) if beside.exists() else None) or shutil.which("promtool")


# CI (WORKBENCH_REQUIRE_PRIVILEGED=1) has run `make setup`, which installs promtool: there it must run.
@pytest.mark.skipif(promtool() is None and os.environ.get("WORKBENCH_REQUIRE_PRIVILEGED") != "1",
                    reason="promtool is not installed (make setup unpacks it from Debian's prometheus package)")
def test_promtool_accepts_the_exposition_with_dns_metrics():
    store = dns_store()
    text = store.metrics.exposition()
    assert b"hubble_dns_response_types_total" in text
    proc = subprocess.run([str(promtool()), "check", "metrics"], input=text, capture_output=True)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
