"""Terminal tables: labels abbreviated as `cilium endpoint list` does, every line within the terminal width,
-o wide and --json keep everything."""

from __future__ import annotations

import pandas as pd
import pytest

from workbench.cli.commands import TableResult
from workbench.cli.lab import endpoint_view
from workbench.cli.policy import SECTION, bpf_policy_view, entries_view
from workbench.cli.tables import fit_widths, format_table, short_labels, wrap_cell
from workbench.client.frames import endpoints_frame, identities_frame, services_frame
from workbench.client.policy import BPF_POLICY_COLUMNS
from workbench.policy.views import COLUMNS as EXPLAIN_COLUMNS

NAMESPACE_LABELS = ["k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=default",
                    "k8s:io.kubernetes.pod.namespace=default"]
INTERNAL = "k8s:io.cilium.k8s.policy.serviceaccount=deathstar-serviceaccount"


def labels_of(name: str, org: str) -> list[str]:
    return sorted([f"k8s:app.kubernetes.io/name={name}", f"k8s:class={name}", f"k8s:org={org}",
                   "k8s:app.kubernetes.io/part-of=a-rather-long-application-name-for-wrapping", INTERNAL,
                   *NAMESPACE_LABELS])


def endpoint_records() -> list[dict[str, object]]:
    pods = [("deathstar-6b8nhlw9fn-pvj8g", "deathstar", "empire"), ("tiefighter", "tiefighter", "empire"),
            ("xwing-with-a-pod-name-longer-than-a-column-should-be", "xwing", "alliance")]
    return [{"id": i + 1, "identity": 256 + i, "labels": labels_of(app, org), "ipv4": f"10.244.0.{10 + i}",
             "pod": pod, "namespace": "default", "ingress_enforcement": i == 0, "egress_enforcement": False,
             "app": app, "lxc": f"lxc{i:012x}", "ifindex": 3 + i} for i, (pod, app, org) in enumerate(pods)]


def bpf_policy_frame() -> pd.DataFrame:
    rows = [{"endpoint": 1, "pod": "default/deathstar-6b8nhlw9fn-pvj8g", "direction": "ingress", "identity": ident,
             "labels": labels_of(name, "empire"), "protocol": "TCP", "port": 8080, "port_end": 8087,
             "action": "allow", "match_type": "L3-L4", "proxy_port": 10080, "packets": 123456, "bytes": 98765432,
             "rules": ["default/rule1", "default/a-second-policy-with-a-long-name"]}
            for ident, name in ((256, "deathstar"), (257, "tiefighter"))]
    rows.append({**rows[0], "endpoint": 2, "pod": "default/xwing", "direction": "egress", "identity": 2,
                 "labels": ["reserved:world"], "protocol": "ANY", "port": 0, "port_end": 0, "proxy_port": 0})
    return pd.DataFrame(rows, columns=BPF_POLICY_COLUMNS)


def explain_frame() -> pd.DataFrame:
    rows = [{"ep_id": 1, "pod": "default/deathstar-6b8nhlw9fn-pvj8g", "direction": "ingress", "identity": 257,
             "peer_labels": labels_of("tiefighter", "empire"), "protocol": "TCP", "port": "80", "verdict": "allow",
             "match_type": "L3-L4", "rules": ["default/rule1"],
             "http": ["http(method=POST, path=/v1/request-landing)"]},
            {"ep_id": 1, "pod": "default/deathstar-6b8nhlw9fn-pvj8g", "direction": "egress", "identity": None,
             "peer_labels": [], "protocol": "", "port": "", "verdict": "default-deny", "match_type": "none",
             "rules": [], "http": []}]
    return pd.DataFrame(rows, columns=EXPLAIN_COLUMNS)


def assert_fits(text: str, width: int) -> None:
    too_long = [line for line in text.splitlines() if len(line) > width]
    assert not too_long, f"{len(too_long)} lines longer than {width}: {too_long[:3]}"


def test_labels_are_abbreviated_as_cilium_endpoint_list_does() -> None:
    shown = short_labels(labels_of("xwing", "alliance") + ["reserved:world", "cidr:192.0.2.0/24", "any:team=x"])
    assert shown == ["app.kubernetes.io/name=xwing", "app.kubernetes.io/part-of=a-rather-long-application-name-for-"
                     "wrapping", "class=xwing", "org=alliance", "reserved:world", "cidr:192.0.2.0/24", "team=x",
                     "ns=default"]


def test_cells_wrap_after_separators_and_lose_nothing() -> None:
    label = "app.kubernetes.io/part-of=a-rather-long-application-name-for-wrapping"
    lines = wrap_cell(label, 20)
    assert lines[0] == "app.kubernetes.io/" and all(len(line) <= 20 for line in lines)
    assert "".join(lines) == label
    assert wrap_cell("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]     # no separator: cut
    assert wrap_cell("a\nb", None) == ["a", "b"]


def test_widest_columns_shrink_first_and_small_ones_keep_their_width() -> None:
    widths = fit_widths([2, 8, 60, 11, 40], [2, 8, 6, 4, 3], 70)
    assert sum(widths) <= 70 and widths[:2] == [2, 8] and widths[3] == 11 and widths[2] == widths[4]
    assert fit_widths([3, 4], [3, 4], 80) == [3, 4]
    squeezed = fit_widths([20] * 10, [12] * 10, 50)      # the header words do not fit: they break too
    assert sum(squeezed) <= 50


@pytest.mark.parametrize("width", [80, 200])
def test_every_table_fits_the_terminal(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    services = [{"name": "deathstar", "namespace": "default", "cluster_ip": "10.96.0.10",
                 "ports": [{"port": 80, "target_port": 8080, "protocol": "TCP"}],
                 "selector": {"org": "empire", "class": "deathstar", "app.kubernetes.io/name": "deathstar"},
                 "backends": [f"deathstar-6b8nhlw9fn-{suffix}" for suffix in ("pvj8g", "5nd55", "x9x9x")]}]
    identities = [{"id": 2, "labels": ["reserved:world"]}] + [
        {"id": 256 + i, "labels": r["labels"]} for i, r in enumerate(endpoint_records())]
    tables = [TableResult(endpoints_frame(endpoint_records()), terminal_view=endpoint_view),
              TableResult(identities_frame(identities)), TableResult(services_frame(services)),
              TableResult(bpf_policy_frame(), terminal_view=bpf_policy_view, sections=SECTION),
              TableResult(explain_frame(), terminal_view=entries_view, sections=SECTION)]
    for table in tables:
        text = table.format_text()
        assert_fits(text, width)
        assert "k8s:" not in text and "io.cilium" not in text and "serviceaccount" not in text
    endpoint_text = tables[0].format_text()
    assert "ns=default" in endpoint_text and "lxc0" not in endpoint_text
    if width == 200:   # room for every label on a line of its own
        assert "app.kubernetes.io/part-of=a-rather-long-application-name-for-wrapping" in endpoint_text


def test_wide_keeps_every_column_and_full_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    frame = endpoints_frame(endpoint_records())
    text = TableResult(frame, wide=True, terminal_view=endpoint_view).format_text()
    assert all(f"  {label}" in text for label in labels_of("tiefighter", "empire"))
    assert "lxc000000000000" in text and "IFINDEX" in text and "INGRESS ENFORCEMENT" in text
    bpf = TableResult(bpf_policy_frame(), wide=True, terminal_view=bpf_policy_view, sections=SECTION).format_text()
    assert "default/a-second-policy-with-a-long-name" in bpf and "PORT END" in bpf and "(endpoint" not in bpf


def test_json_keeps_the_agents_records() -> None:
    records = endpoint_records()
    table = TableResult(endpoints_frame(records), terminal_view=endpoint_view)
    assert table.to_json()[0]["labels"] == records[0]["labels"]
    assert table.to_json()[0]["lxc"] == records[0]["lxc"] and table.to_json()[1]["ingress_enforcement"] is False


def test_terminal_views_show_endpoints_ports_and_enforcement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    bpf = TableResult(bpf_policy_frame(), terminal_view=bpf_policy_view, sections=SECTION).format_text()
    assert bpf.splitlines()[0] == "default/deathstar-6b8nhlw9fn-pvj8g (endpoint 1)"
    assert "8080-8087/TCP" in bpf and "default/xwing (endpoint 2)" in bpf and "  ANY  " in bpf
    assert bpf.count("DIRECTION") == 2          # the header again in each endpoint's section
    explain = TableResult(explain_frame(), terminal_view=entries_view, sections=SECTION).format_text()
    assert "80/TCP" in explain and "default-deny" in explain and "257" in explain and "nan" not in explain
    endpoints = TableResult(endpoints_frame(endpoint_records()), terminal_view=endpoint_view).format_text()
    first_row = endpoints.splitlines()[1].split()
    assert first_row[:5] == ["1", "deathstar-6b8nhlw9fn-pvj8g", "256", "10.244.0.10", "ingress"]


def test_missing_values_and_float_ids_read_as_pandas_users_expect() -> None:
    frame = pd.DataFrame([{"identity": 256, "labels": ["k8s:a=b"]}, {"identity": None, "labels": ["reserved:world"]}])
    assert frame.identity.dtype == float            # what pandas makes of an id column with a gap
    assert format_table(frame, 80).split("\n") == ["IDENTITY  LABELS", "256       a=b", "          reserved:world"]
