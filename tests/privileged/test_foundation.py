"""The foundation on the real kernel: preflight, setup idempotence, kernelspec, leak check."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKBENCH = [sys.executable, "-m", "workbench"]
EXPECTED_CHECKS = {
    "kernel", "btf", "bpf-jit", "privileges", "bpffs", "tracefs", "cgroup2", "bcc", "bpf-syscall",
    "kernel-headers", "map:lpm-trie", "map:lru-hash", "map:ringbuf", "prog:xdp-generic", "prog:xdp-native",
    "prog:tc-clsact", "prog:cgroup-skb", "prog:cgroup-sock-addr", "prog:tracepoint",
}


def test_status_json_reports_every_check_ok():
    proc = subprocess.run([*WORKBENCH, "status", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    by_name = {c["name"]: c for c in doc["checks"]}
    assert EXPECTED_CHECKS <= set(by_name)
    assert doc["ok"] is True
    failing = {n: c["detail"] for n, c in by_name.items() if c["status"] == "fail"}
    assert not failing


def test_status_unprivileged_names_the_missing_privilege():
    proc = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *WORKBENCH, "status"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "missing CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_status_without_bpffs_says_which_step_and_the_fix():
    # A private mount namespace: bpffs is unmounted only for this one command.
    script = f"umount /sys/fs/bpf && exec {sys.executable} -m workbench status"
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    line = next(line for line in proc.stdout.splitlines() if line.startswith("bpffs"))
    assert "FAIL" in line and "mount -t bpf bpf /sys/fs/bpf" in line and "make setup" in line


def test_setup_second_run_changes_nothing():
    krel = os.uname().release
    before = {p: os.readlink(p) for p in (f"/lib/modules/{krel}/build", f"/lib/modules/{krel}/source")}
    proc = subprocess.run(["bash", "scripts/setup.sh"], cwd=REPO, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "setup: ready", proc.stdout
    assert before == {p: os.readlink(p) for p in before}


def test_kernelspec_starts_a_kernel_with_the_extension_loaded(tmp_path):
    from jupyter_client.manager import start_new_kernel

    subprocess.run([*WORKBENCH, "kernel", "install", "--prefix", str(tmp_path)], check=True, capture_output=True)
    env = dict(os.environ, JUPYTER_PATH=str(tmp_path / "share" / "jupyter"))
    km, kc = start_new_kernel(kernel_name="ebpf-workbench", env=env)
    try:
        reply = kc.execute_interactive("r = %ebpf status\nprint(type(r).__name__, r.ok)", timeout=120)
        assert reply["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_leak_check_fails_a_run_that_leaves_a_netns(tmp_path):
    leaky = tmp_path / "test_leaky.py"
    name = f"wb-leakprobe-{os.getpid()}"
    leaky.write_text(textwrap.dedent(f"""
        from workbench.node import netlink
        def test_leaks():
            netlink.create_netns("{name}")
    """))
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_LEAK_CHECK"}  # the check must run here
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(leaky)],
                              cwd=tmp_path, capture_output=True, text=True, env=env)
        assert proc.returncode != 0
        assert "LEAK CHECK FAILED" in proc.stdout and name in proc.stdout
    finally:
        from workbench.node import netlink

        netlink.remove_netns(name)


def test_required_privileged_turns_a_skip_into_a_failure(tmp_path):
    (tmp_path / "privileged").mkdir()
    (tmp_path / "privileged" / "test_skips.py").write_text("import pytest\ndef test_s():\n    pytest.skip('no')\n")
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    env = dict(os.environ, WORKBENCH_REQUIRE_PRIVILEGED="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "privileged"],
                          cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and "1 failed" in proc.stdout
    env["WORKBENCH_REQUIRE_PRIVILEGED"] = "0"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "privileged"],
                          cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "1 skipped" in proc.stdout


@pytest.mark.parametrize("line", ["status"])
def test_ebpf_line_magic_returns_objects(line):
    from IPython.testing.globalipapp import get_ipython

    ip = get_ipython()
    ip.run_line_magic("load_ext", "workbench")
    report = ip.run_line_magic("ebpf", line)
    assert report.ok and "<table" in report._repr_html_()


@pytest.mark.parametrize("hide, expected", [
    ("umount /sys/fs/bpf", ["needs bpffs mounted at /sys/fs/bpf", "mount -t bpf bpf /sys/fs/bpf", "make setup"]),
    ("mount -t tmpfs none /lib/modules", ["needs kernel headers", "make setup"]),
])
def test_commands_say_which_setup_step_is_missing(hide, expected):
    # A private mount namespace hides the setup step from this one command only.
    script = f"{hide} && exec {sys.executable} -m workbench lab up --name nosetup"
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert all(text in proc.stderr for text in expected), proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
