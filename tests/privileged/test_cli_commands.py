"""Every `workbench` leaf command, run as a process against one star-wars lab of this module's own.

Each test runs the commands through :func:`cli` (``python -m workbench ...``) and checks
the exit code and what the command printed or changed in the lab: the policy a
``--dry-run`` did not apply, the AUDIT verdict of a packet audit mode let through,
the exit code 1 of `connectivity test` when the live map contradicts the policy.
tests/unit/test_cli_coverage.py reads the literal command words of every ``cli(...)``
call here (and every ``"-m", "workbench"`` list elsewhere) and fails when a leaf
command of the parser is run by no test.

The tests run in file order and share the lab: rule1 is applied by one test and
used by the next ones; the last test takes the lab down with the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import workbench as wb
from tests.privileged.policydocs import cnp

URL = "deathstar.default.svc.cluster.local/v1/request-landing"
RULE1 = wb.example("rule1.yaml")
# rule1 turned around: the alliance may land, the empire may not (a candidate for replay)
ALLIANCE_ONLY = cnp("rule1", """
    endpointSelector: {matchLabels: {org: empire, class: deathstar}}
    ingress:
    - fromEndpoints: [{matchLabels: {org: alliance}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
    """, namespace="default")
XWING_FROM_TIEFIGHTER = cnp("onlyxwing", """
    endpointSelector: {matchLabels: {class: xwing}}
    ingress:
    - fromEndpoints: [{matchLabels: {class: tiefighter}}]
    """, namespace="default")


def cli(*args: str, expect: int | None = 0, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m workbench ARGS``; its exit code must be ``expect`` (None: any)."""
    proc = subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True,
                          timeout=timeout)
    if expect is not None:
        assert proc.returncode == expect, (args, proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    return proc


def cli_json(*args: str, expect: int = 0) -> Any:
    return json.loads(cli(*args, "--json", expect=expect).stdout)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """The first truthy value of ``predicate`` within ``timeout`` seconds, else its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


@pytest.fixture(scope="module")
def lab() -> Iterator[str]:
    name = f"cmd{uuid.uuid4().hex[:6]}"
    try:
        up = cli("lab", "up", "--lab", name).stdout
        assert f"lab {name} is up: 5 pods, 2 services, 7 identities" in up, up   # the demo and kube-system/kube-dns
        yield name
    finally:
        wb.Lab(name).down()    # idempotent: the CLI's `lab down` test normally did it already


@pytest.fixture(scope="module")
def pods(lab: str) -> dict[str, dict[str, Any]]:
    """The lab's endpoints by pod name (from `endpoint list --json`)."""
    return {ep["pod"]: ep for ep in cli_json("endpoint", "list", "--lab", lab)}


def deathstars(pods: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(p for p in pods if p.startswith("deathstar-"))


def curl(lab: str, pod: str, target: str = URL, seconds: int = 3) -> subprocess.CompletedProcess[str]:
    return cli("exec", "--lab", lab, pod, "--", "curl", "-s", "-m", str(seconds), "-XPOST", target, expect=None)


def flows(lab: str, *filters: str) -> list[dict[str, Any]]:
    out = cli("observe", "--lab", lab, *filters, "--all", "-o", "json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# ---- the node and the lab's life ---------------------------------------------------------------

def test_status_reports_a_ready_node() -> None:
    report = cli_json("status")
    assert report["ok"] is True
    assert {"kernel", "privileges"} <= {check["name"] for check in report["checks"]}


def test_kernel_install_writes_a_kernelspec_for_this_python(tmp_path: Path) -> None:
    out = cli("kernel", "install", "--prefix", str(tmp_path)).stdout
    spec = tmp_path / "share" / "jupyter" / "kernels" / "ebpf-workbench" / "kernel.json"
    assert f"in {spec.parent}" in out
    assert json.loads(spec.read_text())["argv"][0] == sys.executable


def test_lab_up_twice_keeps_the_running_lab(lab: str) -> None:
    again = cli_json("lab", "up", "--lab", lab)
    assert again["already_up"] is True and again["status"]["pods"] == 5


def test_lab_status_and_list(lab: str) -> None:
    status = cli_json("lab", "status", "--lab", lab)
    assert status["status"] == "ready" and status["lab"] == lab and status["pods"] == 5
    assert lab in {row["lab"] for row in cli_json("lab", "list")}
    absent = f"cmdgone{uuid.uuid4().hex[:6]}"
    assert cli("lab", "status", "--lab", absent, expect=1).returncode == 1   # not up: exit 1


def test_endpoint_service_and_identity_lists_agree(lab: str, pods: dict[str, dict[str, Any]]) -> None:
    assert len(pods) == 5 and {"xwing", "tiefighter", "kube-dns"} <= set(pods) and len(deathstars(pods)) == 2
    services = cli_json("service", "list", "--lab", lab)
    assert [(s["namespace"], s["name"]) for s in services] == [("default", "deathstar"), ("kube-system", "kube-dns")]
    assert (services[1]["cluster_ip"], services[1]["backends"]) == ("10.96.0.10", ["kube-dns"])
    assert sorted(services[0]["backends"]) == deathstars(pods)
    identities = {row["id"]: row["labels"] for row in cli_json("identity", "list", "--lab", lab)}
    assert identities[1] == ["reserved:host"] and identities[2] == ["reserved:world"]
    assert identities[4] == ["reserved:health"]
    assert len(identities) == 7
    assert "k8s:k8s-app=kube-dns" in identities[pods["kube-dns"]["identity"]]
    for pod, org in (("xwing", "alliance"), ("tiefighter", "empire")):
        assert f"k8s:org={org}" in identities[pods[pod]["identity"]]
        assert f"k8s:class={pod}" in identities[pods[pod]["identity"]]
    text = cli("identity", "list", "--lab", lab).stdout
    assert text.startswith("ID") and "reserved:world" in text


def test_exec_runs_in_the_pod_with_its_exit_code(lab: str) -> None:
    landed = curl(lab, "tiefighter")
    assert landed.returncode == 0 and landed.stdout.strip() == "Ship landed"
    assert cli("exec", "--lab", lab, "xwing", "--", "sh", "-c", "exit 3", expect=None).returncode == 3


# ---- policy: dry run, apply, what it means, what it did ---------------------------------------

def test_policy_apply_dry_run_applies_nothing(lab: str, pods: dict[str, dict[str, Any]]) -> None:
    assert cli_json("policy", "get", "--lab", lab) == []
    assert cli("policy", "get", "--lab", lab).stdout.strip() == "no policies"
    rows = cli_json("policy", "apply", str(RULE1), "--dry-run", "--lab", lab)
    assert {r["pod"].split("/")[-1] for r in rows} == set(deathstars(pods))
    assert {r["change"] for r in rows} == {"+", "enforce"}                 # 4 new entries, ingress enforced
    assert len([r for r in rows if r["change"] == "+"]) == 4
    assert cli_json("policy", "get", "--lab", lab) == []                  # nothing applied
    assert cli_json("bpf", "policy", "get", "--lab", lab) == []
    assert curl(lab, "xwing").stdout.strip() == "Ship landed"             # and nothing enforced


def test_policy_apply_then_get(lab: str) -> None:
    out = cli("policy", "apply", str(RULE1), "--lab", lab).stdout
    assert out.startswith("applied default/rule1: 4 map entries, 2 enforced endpoint directions")
    [policy] = cli_json("policy", "get", "--lab", lab)
    assert (policy["name"], policy["namespace"], policy["kind"], policy["entries"]) == \
        ("rule1", "default", "CiliumNetworkPolicy", 4)
    assert policy["raw"]["metadata"]["name"] == "rule1"                   # the document, in --json only
    text = cli("policy", "get", "--lab", lab).stdout
    assert "rule1" in text and "metadata" not in text
    assert curl(lab, "tiefighter").stdout.strip() == "Ship landed"
    assert curl(lab, "xwing", seconds=2).returncode != 0


def test_policy_explain_from_the_cli_and_python(lab: str, pods: dict[str, dict[str, Any]]) -> None:
    first = deathstars(pods)[0]
    rows = cli_json("policy", "explain", "--pod", first, "--lab", lab)
    allowed = {pods["tiefighter"]["identity"], pods[first]["identity"]}   # org=empire: tiefighter, deathstar
    assert {r["identity"] for r in rows} == allowed
    assert all(r["pod"] == f"default/{first}" and r["direction"] == "ingress" and r["verdict"] == "allow"
               and r["protocol"] == "TCP" and int(r["port"]) == 80 and r["rules"] == ["default/rule1"]
               for r in rows)
    assert cli_json("policy", "explain", "--direction", "egress", "--lab", lab) == []
    assert cli("policy", "explain", "--pod", "xwing", "--lab", lab).stdout.strip() == "no policy entries"
    assert "pod nosuch not found" in cli("policy", "explain", "--pod", "nosuch", "--lab", lab, expect=1).stderr
    frame = wb.Lab(lab).policy.explain(first)
    assert sorted(frame.identity) == sorted(r["identity"] for r in rows)
    assert set(frame.verdict) == {"allow"} and set(frame.pod) == {f"default/{first}"}
    assert len(wb.Lab(lab).policy.explain()) == 4 and wb.Lab(lab).policy.explain(direction="egress").empty


def test_bpf_policy_get_and_its_pod_filter(lab: str, pods: dict[str, dict[str, Any]]) -> None:
    everything = cli_json("bpf", "policy", "get", "--lab", lab)
    assert len(everything) == 4 and {e["pod"] for e in everything} == {f"default/{p}" for p in deathstars(pods)}
    assert sum(e["packets"] for e in everything) > 0                    # tiefighter's landing was counted
    for pod in deathstars(pods):
        for spelling in (pod, f"default/{pod}"):
            rows = cli_json("bpf", "policy", "get", "--pod", spelling, "--lab", lab)
            assert len(rows) == 2 and {r["pod"] for r in rows} == {f"default/{pod}"}
            assert {r["endpoint"] for r in rows} == {pods[pod]["id"]}
    assert cli("bpf", "policy", "get", "--pod", "xwing", "--lab", lab).stdout.strip() == "the policy map is empty"
    assert "pod nosuch not found" in cli("bpf", "policy", "get", "--pod", "nosuch", "--lab", lab, expect=1).stderr


def test_policy_rules_count_the_landing(lab: str) -> None:
    [rule] = cli_json("policy", "rules", "--lab", lab)
    assert (rule["policy"], rule["rule"], rule["action"], rule["ports"]) == \
        ("default/rule1", "spec.ingress[0]", "allow", "80/TCP")
    assert rule["packets"] > 0 and rule["bytes"] > 0


def test_policy_trace_names_the_verdict(lab: str) -> None:
    xwing = cli_json("policy", "trace", "--from", "xwing", "--to", "deathstar", "--port", "80", "--lab", lab)
    assert (xwing["verdict"], xwing["drop_reason_desc"]) == ("DROPPED", "POLICY_DENIED")
    tie = cli("policy", "trace", "--from", "tiefighter", "--to", "deathstar", "--port", "80", "--lab", lab)
    assert "verdict: FORWARDED" in tie.stdout and "default/rule1" in tie.stdout


def test_observe_policy_shows_what_rule1_allowed(lab: str) -> None:
    allowed = wait_for(lambda: flows(lab, "--policy", "default/rule1", "--from-pod", "tiefighter"))
    assert allowed and all("default/rule1" in f["ingress_allowed_by"] for f in allowed)
    assert {f["verdict"] for f in allowed} == {"FORWARDED"}
    # xwing's drop is rule1's default deny: no rule names it, so --policy does not select it
    assert flows(lab, "--policy", "default/rule1", "--from-pod", "xwing") == []
    assert flows(lab, "--from-pod", "xwing", "--verdict", "DROPPED", "--type", "drop")


def test_policy_replay_shows_the_verdicts_a_candidate_would_change(lab: str, tmp_path: Path) -> None:
    candidate = tmp_path / "alliance.yaml"
    candidate.write_text(ALLIANCE_ONLY)
    rows = cli_json("policy", "replay", str(candidate), "--lab", lab)
    changes = {(r["src"].split("/")[-1].split(":")[0], r["verdict_now"], r["verdict_candidate"]) for r in rows}
    assert ("tiefighter", "FORWARDED", "DROPPED") in {c for c in changes if c[0] == "tiefighter"}
    assert ("xwing", "DROPPED", "FORWARDED") in {c for c in changes if c[0] == "xwing"}
    assert [p["name"] for p in cli_json("policy", "get", "--lab", lab)] == ["rule1"]   # nothing applied


def deathstar_peers(docs: list[dict[str, Any]]) -> str:
    [policy] = [d for d in docs if d["spec"]["endpointSelector"]["matchLabels"].get("class") == "deathstar"]
    return json.dumps(policy["spec"]["ingress"])


def test_policy_suggest_allows_what_passed(lab: str, tmp_path: Path) -> None:
    out = cli("policy", "suggest", "--namespace", "default", "--lab", lab).stdout
    assert "kind: CiliumNetworkPolicy" in out
    # both landed: tiefighter under rule1, xwing before it (the dry-run test)
    peers = deathstar_peers(cli_json("policy", "suggest", "--namespace", "default", "--lab", lab)["policies"])
    assert '"class": "tiefighter"' in peers and '"class": "xwing"' in peers and '"port": "80"' in peers
    # from tiefighter's flows only, xwing is no peer
    archive = tmp_path / "tiefighter.parquet"
    cli("flows", "export", str(archive), "--from-pod", "tiefighter", "--lab", lab)
    docs = cli_json("policy", "suggest", "--input-file", str(archive), "--lab", lab)["policies"]
    peers = deathstar_peers(docs)
    assert '"class": "tiefighter"' in peers and "xwing" not in peers


# ---- audit mode, the live map, connectivity test -----------------------------------------------

def test_policy_audit_lets_xwing_land_reported_as_audit(lab: str, pods: dict[str, dict[str, Any]]) -> None:
    assert curl(lab, "xwing", seconds=2).returncode != 0
    for pod in deathstars(pods):
        assert cli_json("policy", "audit", "on", "--pod", pod, "--lab", lab)["endpoints"] == [pod]
    try:
        assert curl(lab, "xwing").stdout.strip() == "Ship landed"
        audited = wait_for(lambda: flows(lab, "--from-pod", "xwing", "--verdict", "AUDIT"))
        assert audited and {f["dst_pod"] for f in audited} <= set(deathstars(pods))
        trace = cli_json("policy", "trace", "--from", "xwing", "--to", deathstars(pods)[0], "--port", "80",
                         "--lab", lab)
        assert trace["destination"]["audit"] is True
    finally:
        out = cli("policy", "audit", "off", "--lab", lab).stdout
    assert out.startswith("audit mode off for ") and "xwing" in out
    assert curl(lab, "xwing", seconds=2).returncode != 0                  # enforced again


def test_connectivity_test_passes_then_fails_on_a_live_map_deny(lab: str, pods: dict[str, dict[str, Any]]) -> None:
    report = cli_json("connectivity", "test", "--lab", lab)
    assert report["ok"] is True and all(p["as_expected"] for p in report["probes"])
    assert any(p["source"] == "xwing" and p["expected"] is False for p in report["probes"])  # rule1 known
    target = deathstars(pods)[0]
    address = pods[target]["ipv4"]
    policy = wb.Lab(lab).policy
    # a deny in the live map that rule1 knows nothing of: the packet is dropped, the probe is unexpected
    assert policy.map.deny(target, "ingress", peer="tiefighter", protocol="TCP", port=80)["deny"]["pod"] == target
    try:
        assert curl(lab, "tiefighter", f"http://{address}/v1/request-landing", seconds=2).returncode != 0
        other = pods[deathstars(pods)[1]]["ipv4"]
        assert curl(lab, "tiefighter", f"http://{other}/v1/request-landing").stdout.strip() == "Ship landed"
        failed = cli("connectivity", "test", "--lab", lab, "--json", expect=1)
        unexpected = [p for p in json.loads(failed.stdout)["probes"] if not p["as_expected"]]
        assert ("tiefighter", "pod-to-pod", target, 80, "TCP") in \
            {(p["source"], p["kind"], p["destination"], p["port"], p["protocol"]) for p in unexpected}
        assert all(p["source"] == "tiefighter" and p["ok"] is False and p["expected"] is True for p in unexpected)
        assert "UNEXPECTED" in cli("connectivity", "test", "--lab", lab, expect=1).stdout
    finally:
        # the deny took the key of rule1's allow entry (same pod, peer, port): removing it leaves neither,
        # applying rule1 again writes its entries back
        policy.map.remove(target, "ingress", peer="tiefighter", protocol="TCP", port=80)
        cli("policy", "apply", str(RULE1), "--lab", lab)
    assert len(policy.map.query("action == 'allow'")) == 4
    assert "all 14 probes behaved as expected" in cli("connectivity", "test", "--lab", lab).stdout


def test_policy_delete_by_name_and_all(lab: str, tmp_path: Path) -> None:
    assert "policy nosuch not found" in cli("policy", "delete", "nosuch", "--lab", lab, expect=1).stderr
    assert cli("policy", "delete", "rule1", "--lab", lab).stdout.strip() == "deleted default/rule1"
    assert cli_json("policy", "get", "--lab", lab) == [] and cli_json("bpf", "policy", "get", "--lab", lab) == []
    assert curl(lab, "xwing").stdout.strip() == "Ship landed"
    extra = tmp_path / "extra.yaml"
    extra.write_text(XWING_FROM_TIEFIGHTER)
    cli("policy", "apply", str(RULE1), str(extra), "--lab", lab)
    assert len(cli_json("policy", "get", "--lab", lab)) == 2
    deleted = cli_json("policy", "delete", "--all", "--lab", lab)["deleted"]
    assert sorted(deleted) == ["default/onlyxwing", "default/rule1"]
    assert cli_json("policy", "get", "--lab", lab) == []
    assert "needs NAME" in cli("policy", "delete", "--lab", lab, expect=1).stderr


def test_policy_map_deny_drops_a_real_packet(lab: str, pods: dict[str, dict[str, Any]]) -> None:
    policy = wb.Lab(lab).policy
    assert policy.map.empty                                              # no policy left: all passes
    target = deathstars(pods)[1]
    url = f"http://{pods[target]['ipv4']}/v1/request-landing"
    assert curl(lab, "xwing", url).stdout.strip() == "Ship landed"
    policy.map.deny("xwing", "egress", peer=target, protocol="TCP", port=80)
    try:
        [row] = policy.map.to_dict(orient="records")
        assert (row["pod"], row["direction"], row["action"], row["identity"], row["port"]) == \
            ("default/xwing", "egress", "deny", pods[target]["identity"], 80)
        assert curl(lab, "xwing", url, seconds=2).returncode != 0
        drops = wait_for(lambda: flows(lab, "--from-pod", "xwing", "--verdict", "DROPPED",
                                       "--traffic-direction", "egress"))
        assert drops and {f["drop_reason_desc"] for f in drops} == {"POLICY_DENY"}
        assert wait_for(lambda: int(policy.map.packets.sum())) > 0        # the deny entry counted them
    finally:
        policy.map.remove("xwing", "egress", peer=target, protocol="TCP", port=80)
    assert policy.map.empty
    assert curl(lab, "xwing", url).stdout.strip() == "Ship landed"


# ---- flows and metrics, then down --------------------------------------------------------------

def test_observe_flows_export_and_metrics(lab: str, tmp_path: Path) -> None:
    from workbench.observe.archive import load_parquet

    recent = cli("observe", "--lab", lab, "--last", "3", "-o", "json").stdout.splitlines()
    assert len(recent) == 3 and all("verdict" in json.loads(line) for line in recent)
    out = tmp_path / "flows.parquet"
    wrote = cli("flows", "export", str(out), "--lab", lab).stdout
    rows = int(wrote.split()[1])
    assert wrote.startswith("wrote ") and rows > 0 and len(load_parquet(out)) == rows
    metrics = cli("metrics", "--lab", lab).stdout
    assert "hubble_flows_processed_total" in metrics and 'reason="POLICY_DENIED"' in metrics


def test_lab_down_removes_the_lab(lab: str) -> None:
    out = cli("lab", "down", "--lab", lab).stdout
    assert out.startswith(f"lab {lab} removed (")
    assert cli("lab", "down", "--lab", lab).stdout.strip() == f"lab {lab} is not up"
    assert lab not in {row["lab"] for row in cli_json("lab", "list")}
    cli("lab", "status", "--lab", lab, expect=1)
