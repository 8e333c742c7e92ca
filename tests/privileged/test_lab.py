"""The lab node on the real kernel: the star-wars demo with real traffic through real netns and programs."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from workbench.node import state
from workbench.node.inventory import lab_inventory

WORKBENCH = [sys.executable, "-m", "workbench"]
LANDING = ["curl", "-s", "-XPOST", "deathstar.default.svc.cluster.local/v1/request-landing"]


def wb(*args: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WORKBENCH, *args], capture_output=True, text=True, input=input, timeout=timeout)


def lab_name() -> str:
    return f"t{uuid.uuid4().hex[:7]}"


def assert_lab_gone(name: str) -> None:
    leftovers = lab_inventory(name)
    assert leftovers.empty(), leftovers.describe()
    assert not state.state_dir(name).exists()


@pytest.fixture(scope="module")
def demo() -> Iterator[str]:
    name = lab_name()
    try:
        proc = wb("lab", "up", "--name", name)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"lab {name} is up: 5 pods, 2 services" in proc.stdout   # with kube-system/kube-dns
        yield name
    finally:
        state.teardown(name)
        assert_lab_gone(name)


def endpoints(name: str) -> list[dict[str, object]]:
    proc = wb("endpoint", "list", "--name", name, "--json")
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout))


def test_endpoints_have_identities_ips_and_pods(demo: str) -> None:
    eps = {str(ep["pod"]).split("-")[0]: ep for ep in endpoints(demo)}
    rows = endpoints(demo)
    assert sorted(str(ep["pod"]).split("-")[0] for ep in rows) == ["deathstar", "deathstar", "kube", "tiefighter",
                                                                  "xwing"]
    deathstars = [ep for ep in rows if str(ep["pod"]).startswith("deathstar-")]
    assert deathstars[0]["identity"] == deathstars[1]["identity"]       # replicas share the identity
    ids = {eps[pod]["identity"] for pod in ("deathstar", "tiefighter", "xwing", "kube")}
    assert len(ids) == 4 and min(ids) >= 256                             # type: ignore[type-var]
    # the lab's DNS pod carries the labels Cilium policies select kube-dns by
    assert {"k8s:k8s-app=kube-dns", "k8s:io.kubernetes.pod.namespace=kube-system"} <= set(eps["kube"]["labels"])  # type: ignore[call-overload]
    assert "k8s:org=alliance" in eps["xwing"]["labels"]                  # type: ignore[operator]
    assert "k8s:io.kubernetes.pod.namespace=default" in eps["xwing"]["labels"]  # type: ignore[operator]
    assert all(str(ep["ipv4"]).startswith("10.244.") for ep in rows)
    assert all(re.fullmatch(r"lxc[0-9a-f]{11}", str(ep["lxc"])) for ep in rows)


def test_ipcache_and_endpoints_maps_hold_the_lab(demo: str) -> None:
    from workbench.datapath import build

    rows = endpoints(demo)
    maps = build.compile_object("maps_only.bpf.c", demo)
    try:
        for ep in rows:
            assert build.ipcache_lookup(maps, str(ep["ipv4"])) == ep["identity"]
            info = maps["endpoints"][maps["endpoints"].Key(int(ep["ifindex"]))]  # type: ignore[call-overload]
            assert (info.ep_id, info.identity, info.ipv4) == (ep["id"], ep["identity"], build.ipv4_be(str(ep["ipv4"])))
        assert build.ipcache_lookup(maps, "192.0.2.10") == 2      # world
        assert build.ipcache_lookup(maps, "192.0.2.1") == 1       # the node's side of the world link
        assert build.ipcache_lookup(maps, "169.254.1.1") == 1     # the pods' gateway on the node
    finally:
        maps.cleanup()


@pytest.mark.parametrize("ship", ["xwing", "tiefighter"])
def test_ship_lands_through_the_service_name(demo: str, ship: str) -> None:
    proc = wb("exec", "--name", demo, ship, "--", *LANDING)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "Ship landed\n"


def test_exhaust_port_and_api_description(demo: str) -> None:
    proc = wb("exec", "--name", demo, "tiefighter", "--", "curl", "-s", "-XPUT",
              "deathstar.default.svc.cluster.local/v1/exhaust-port")
    assert proc.stdout == "Panic: deathstar exploded\n"
    proc = wb("exec", "--name", demo, "xwing", "--", "curl", "-s", "deathstar/v1/")
    assert json.loads(proc.stdout)["name"] == "Death Star"


def test_both_replicas_receive_traffic(demo: str) -> None:
    script = "for i in $(seq 40); do curl -s deathstar.default.svc.cluster.local/v1/; echo; done"
    proc = wb("exec", "--name", demo, "xwing", "--", "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr
    decoder, text, hosts = json.JSONDecoder(), proc.stdout.strip(), []
    while text:
        answer, end = decoder.raw_decode(text)
        hosts.append(answer["hostname"])
        text = text[end:].strip()
    replicas = {str(ep["pod"]) for ep in endpoints(demo) if str(ep["pod"]).startswith("deathstar-")}
    assert len(hosts) == 40
    assert set(hosts) == replicas     # random per connection: 40 tries all on one replica is 2^-39


def test_application_sees_the_cluster_ip_as_peer(demo: str) -> None:
    svc = json.loads(wb("service", "list", "--name", demo, "--json").stdout)[0]
    code = ("import socket; s = socket.create_connection(('deathstar', 80), timeout=3); "
            "print(s.getpeername()[0], s.getpeername()[1])")
    proc = wb("exec", "--name", demo, "xwing", "--", sys.executable, "-c", code)
    assert proc.stdout.split() == [svc["cluster_ip"], "80"], proc.stderr


def test_world_is_reachable_and_sees_the_pod_address(demo: str) -> None:
    xwing = next(ep for ep in endpoints(demo) if ep["pod"] == "xwing")
    proc = wb("exec", "--name", demo, "xwing", "--", "curl", "-s", "-m", "3", "http://192.0.2.10/hello")
    answer = json.loads(proc.stdout)
    assert answer["path"] == "/hello" and answer["client"].startswith(f"{xwing['ipv4']}:")
    code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); "
            "s.sendto(b'ping', ('192.0.2.10', 80)); print(s.recvfrom(200)[0].decode())")
    proc = wb("exec", "--name", demo, "xwing", "--", sys.executable, "-c", code)
    assert proc.stdout.startswith(f"udp echo from {xwing['ipv4']}:") and proc.stdout.rstrip().endswith("ping")


def test_pods_route_only_lab_cidrs(demo: str) -> None:
    # `ip route get` resolves without sending: the pod has no way out of the lab.
    proc = wb("exec", "--name", demo, "xwing", "--", "ip", "route", "get", "8.8.8.8")
    assert proc.returncode != 0 and "unreachable" in proc.stderr.lower()
    proc = wb("exec", "--name", demo, "xwing", "--", "ip", "route", "get", "192.0.2.10")
    assert proc.returncode == 0 and "via 169.254.1.1" in proc.stdout
    # no external host of the demo is on 198.51.100.0/24, so pods have no route there
    proc = wb("exec", "--name", demo, "xwing", "--", "ip", "route", "get", "198.51.100.20")
    assert proc.returncode != 0 and "unreachable" in proc.stderr.lower()


def _lab_addresses(frame: bytes) -> bool:
    """Does an Ethernet frame carry an IPv4 packet from or to a lab range?"""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return False
    for addr in (frame[26:30], frame[30:34]):
        if (addr[:2] in (b"\x0a\xf4", b"\x0a\x60") or addr[:3] in (b"\xc0\x00\x02", b"\xc6\x33\x64")
                or addr == b"\xa9\xfe\x01\x01"):
            return True
    return False


def test_no_lab_packet_reaches_the_machines_interfaces(demo: str) -> None:
    """Capture on every interface of the host netns while the lab talks; no frame may carry a lab address."""
    sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))   # ETH_P_ALL
    sniffer.settimeout(0.2)
    marker = uuid.uuid4().hex.encode()
    seen: list[bytes] = []
    saw_marker = threading.Event()
    stop = threading.Event()

    def capture() -> None:
        while not stop.is_set():
            try:
                frame = sniffer.recv(65535)
            except TimeoutError:
                continue
            if marker in frame:
                saw_marker.set()
            if _lab_addresses(frame):
                seen.append(frame[:64])

    thread = threading.Thread(target=capture)
    thread.start()
    try:
        assert wb("connectivity", "test", "--name", demo).returncode == 0
        for ship in ("xwing", "tiefighter"):
            assert wb("exec", "--name", demo, ship, "--", *LANDING).stdout == "Ship landed\n"
        # The capture is not blind: a datagram on the host's loopback must show up in it.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(marker, ("127.0.0.1", 9))
        saw_marker.wait(2)
    finally:
        stop.set()
        thread.join()
        sniffer.close()
    assert saw_marker.is_set(), "the AF_PACKET capture saw nothing; the test would prove nothing"
    assert not seen, f"{len(seen)} lab frames on the machine's interfaces, first: {seen[0].hex()}"


def test_lab_up_twice_says_it_is_up(demo: str) -> None:
    proc = wb("lab", "up", "--name", demo)
    assert proc.returncode == 0
    assert f"lab {demo} is already up" in proc.stdout
    assert len(endpoints(demo)) == 5


def test_exec_missing_pod_lists_the_pods(demo: str) -> None:
    proc = wb("exec", "--name", demo, "deathstar", "--", "true")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: pod deathstar not found; pods: deathstar-")
    assert "tiefighter, xwing" in proc.stderr and "Traceback" not in proc.stderr


def test_exec_passes_stdin_exit_code_and_joins_the_pod_cgroup(demo: str) -> None:
    assert wb("exec", "--name", demo, "xwing", "--", "cat", input="through stdin\n").stdout == "through stdin\n"
    assert wb("exec", "--name", demo, "xwing", "--", "sh", "-c", "exit 7").returncode == 7
    proc = wb("exec", "--name", demo, "deploy/deathstar", "--", "cat", "/proc/self/cgroup")
    assert re.search(rf"^0::/wb/{demo}/deathstar-[a-z0-9]+-[a-z0-9]+$", proc.stdout, re.M), proc.stdout
    assert "10.244." in wb("exec", "--name", demo, "xwing", "--", "cat", "/etc/hosts").stdout


def test_connectivity_test_passes_with_json(demo: str) -> None:
    proc = wb("connectivity", "test", "--name", demo, "--json")
    assert proc.returncode == 0, proc.stdout
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    kinds = {(p["kind"], p["protocol"]) for p in report["probes"]}
    assert {("pod-to-pod", "TCP"), ("pod-to-service", "TCP"), ("pod-to-world", "TCP"),
            ("pod-to-world", "UDP")} <= kinds
    assert all(p["ok"] and p["as_expected"] for p in report["probes"])


def test_connectivity_test_fails_on_an_unexpected_result(demo: str) -> None:
    import workbench as wb_api

    lab = wb_api.Lab.connect(demo)
    report = lab.connectivity_test(expect=lambda probes: [p.kind != "pod-to-world" for p in probes])
    assert report.exit_code == 1
    assert {p.kind for p in report.unexpected} == {"pod-to-world"}


def test_python_api_and_magic_command_share_the_lab(demo: str) -> None:
    import workbench as wb_api
    from workbench.cli.commands import run

    lab = wb_api.Lab.connect(demo)
    frame = lab.endpoints
    assert list(frame.columns[:6]) == ["id", "identity", "labels", "ipv4", "pod", "namespace"]
    assert len(frame) == 5 and "xwing" in lab._repr_html_()
    assert lab.services.iloc[0]["cluster_ip"].startswith("10.96.")
    assert lab.exec("xwing", LANDING).stdout == "Ship landed\n"
    _, result = run(["endpoint", "list", "--name", demo])
    assert result.value().equals(frame)   # type: ignore[attr-defined]


def test_connect_to_a_missing_lab_says_so() -> None:
    import workbench as wb_api
    from workbench.errors import NotFoundError

    with pytest.raises(NotFoundError, match="lab tnothere is not up"):
        wb_api.Lab.connect("tnothere")


def test_bad_manifest_is_refused_before_anything_exists(tmp_path: Path) -> None:
    name = lab_name()
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(state.__file__).parents[1].joinpath("data/starwars.yaml").read_text()
                   .replace("containerPort: 80", "containerPort: http"))
    try:
        proc = wb("lab", "up", str(bad), "--name", name)
        assert proc.returncode == 1
        assert ("bad.yaml document 1 (Deployment/deathstar): spec.template.spec.containers[0].ports[0]"
                ".containerPort: must be an integer 1-65535, got 'http'") in proc.stderr
        assert_lab_gone(name)
    finally:
        state.teardown(name)


def test_lab_down_after_sigkill_of_the_agent_leaves_nothing() -> None:
    import os
    import signal

    name = lab_name()
    try:
        assert wb("lab", "up", "--name", name).returncode == 0
        agent_pid = int(state.pid_path(name).read_text())
        pod_pids = [int(p) for cg in state.lab_cgroup(name).iterdir() if cg.is_dir()
                    for p in (cg / "cgroup.procs").read_text().split()]
        assert len(pod_pids) >= 5          # agent, world echo, two deathstars, kube-dns
        os.kill(agent_pid, signal.SIGKILL)
        status = wb("lab", "status", "--name", name, "--json")
        assert status.returncode == 1 and json.loads(status.stdout)["status"] == "broken"
        proc = wb("lab", "down", "--name", name)
        assert proc.returncode == 0 and f"lab {name} removed" in proc.stdout
        assert_lab_gone(name)
        for pid in pod_pids:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
        again = wb("lab", "down", "--name", name)            # idempotent
        assert again.returncode == 0 and "is not up" in again.stdout
    finally:
        state.teardown(name)


@pytest.mark.parametrize("args", [["lab", "up"], ["lab", "down"], ["endpoint", "list"], ["exec"]])
def test_unprivileged_commands_fail_with_one_clear_line(demo: str, args: list[str]) -> None:
    args = [*args, "--name", demo] + (["xwing", "--", "true"] if args == ["exec"] else [])
    argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *WORKBENCH, *args]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "needs root" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_socket_lb_is_attached_to_every_pod_cgroup_and_nowhere_else(demo: str) -> None:
    from workbench.node import system

    expected = {("cgroup_inet4_connect", "sock4_connect"), ("cgroup_udp4_sendmsg", "sock4_sendmsg"),
                ("cgroup_udp4_recvmsg", "sock4_recvmsg"), ("cgroup_inet4_getpeername", "sock4_getpeername")}

    def attached(path: Path) -> set[tuple[str, str]]:
        out = subprocess.run(["bpftool", "-j", "cgroup", "show", str(path)], capture_output=True, text=True).stdout
        return {(p["attach_type"], p["name"]) for p in json.loads(out.strip() or "[]")}

    for ep in endpoints(demo):
        assert attached(state.pod_cgroup(demo, str(ep["pod"]))) == expected, ep["pod"]
    root = system.cgroup2_root()
    assert root is not None
    # the machine's own processes are never load-balanced: nothing on the root or the lab's parent cgroup
    assert not {name for _, name in attached(root)} & {name for _, name in expected}
    assert not attached(state.lab_cgroup(demo))
    pins = {p.name for p in (system.PIN_ROOT / demo).iterdir()}
    assert {"lb4_services", "lb4_backends", "lb4_sock_revnat", "sock4_connect"} <= pins


def test_lab_list_shows_the_running_lab(demo: str) -> None:
    proc = wb("lab", "list", "--json")
    assert proc.returncode == 0
    rows = {row["lab"]: row for row in json.loads(proc.stdout)}
    assert rows[demo]["status"] == "ready" and rows[demo]["pods"] == 5


def test_connectivity_test_expects_what_the_active_policy_allows() -> None:
    """With the getting-started L3/L4 policy, xwing->deathstar must fail and does: exit 0, not 1."""
    import workbench

    name = lab_name()
    policy = workbench.example("rule1.yaml")
    try:
        assert wb("lab", "up", "--name", name).returncode == 0
        applied = wb("policy", "apply", "--name", name, str(policy))
        assert applied.returncode == 0, applied.stderr
        proc = wb("connectivity", "test", "--name", name, "--json")
        report = json.loads(proc.stdout)
        assert proc.returncode == 0 and report["ok"], proc.stdout
        blocked = {(p["source"], p["kind"]) for p in report["probes"] if not p["expected"]}
        assert blocked == {("xwing", "pod-to-pod"), ("xwing", "pod-to-service")}
        assert all(p["ok"] == p["expected"] for p in report["probes"])
    finally:
        state.teardown(name)
        assert_lab_gone(name)
