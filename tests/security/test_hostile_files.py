"""Hostile policy and manifest files against a real lab: alias bombs, deep nesting, binary data, size.

Each file goes through the CLI (``policy apply FILE`` on the running lab,
``lab up FILE`` for a new lab) and, as text, straight to the agent's
``policy.apply``. Every one must be refused with one line and a non-zero exit
code, leave the lab's policies and policy map exactly as they were, create no
lab, and cost the agent no real memory (its peak RSS is compared).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import workbench as wb
from workbench.errors import ValidationError
from workbench.lab.yamldocs import MAX_BYTES

from .conftest import lab_name

# Billion laughs: nine levels of ten aliases each decode to 10^9 strings.
LAUGHS = "".join(f"      {c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
POLICY_BOMB = f"""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: bomb
  annotations:
    laughs:
      a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]
{LAUGHS}spec:
  endpointSelector: {{matchLabels: {{class: deathstar}}}}
  ingress: [{{}}]
"""
MANIFEST_BOMB = f"""apiVersion: v1
kind: Pod
metadata:
  name: bomb
  annotations:
    laughs:
      a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]
{LAUGHS}spec:
  containers: [{{name: c, image: busybox}}]
"""
DEEP = 100_000
POLICY_DEEP = ("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: deep, annotations: {x: "
               + "[" * DEEP + "]" * DEEP + "}}\nspec: {endpointSelector: {}, ingress: [{}]}\n")
MANIFEST_DEEP = ("apiVersion: v1\nkind: Pod\nmetadata: {name: deep, annotations: {x: " + "{a: " * DEEP + "b"
                 + "}" * DEEP + "}}\nspec: {containers: [{name: c, image: busybox}]}\n")
BINARY = bytes(range(256)) * 64                                   # NUL bytes and every other byte
NOT_UTF8 = b"apiVersion: v1\nkind: Pod\nmetadata: {name: caf\xe9}\n"  # latin-1, no NUL
OVERSIZED = b"# padding\n" * (MAX_BYTES // 10 + 1)

FILES: dict[str, tuple[bytes, bytes]] = {       # name -> (policy file, manifest file)
    "alias_bomb": (POLICY_BOMB.encode(), MANIFEST_BOMB.encode()),
    "deep_nesting": (POLICY_DEEP.encode(), MANIFEST_DEEP.encode()),
    "binary": (BINARY, BINARY),
    "not_utf8": (NOT_UTF8, NOT_UTF8),
    "oversized": (OVERSIZED, OVERSIZED),
}


def peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def reset_peak_rss(pid: int) -> int:
    """Start the peak RSS afresh (the build's compiler peak would hide a spike) and return it."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return peak_rss_kib(pid)


def workbench_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, timeout=120)


def policy_state(lab) -> tuple[list, list]:
    entries = [{k: v for k, v in row.items() if k not in ("packets", "bytes")} for row in lab.call("bpf.policy.get")]
    return sorted(p["key"] for p in lab.call("policy.get")), entries


@pytest.fixture(scope="module")
def lab(starwars_lab):
    starwars_lab.policy.delete(all=True)
    starwars_lab.policy.apply(wb.example("rule1.yaml"))
    yield starwars_lab
    starwars_lab.policy.delete(all=True)


def one_line_failure(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode != 0 and run.stdout == "", (run.returncode, run.stdout)
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: "), run.stderr
    assert "Traceback" not in run.stderr
    return run.stderr


@pytest.mark.parametrize("case", list(FILES))
def test_policy_apply_refuses_hostile_files_and_changes_nothing(lab, tmp_path, case):
    before = policy_state(lab)
    pid = int(lab.status()["agent_pid"])
    peak_before = reset_peak_rss(pid)
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(FILES[case][0])
    message = one_line_failure(workbench_cli("policy", "apply", str(path), "--lab", lab.name))
    assert path.name in message or "policy" in message, message          # says where
    # the agent's own check: the same bytes as text, never read from the client's file
    with pytest.raises(ValidationError) as refused:
        lab.call("policy.apply", text=FILES[case][0].decode("latin-1"))
    assert len(str(refused.value).splitlines()) == 1
    assert policy_state(lab) == before
    assert lab.call("agent.ping")["lab"] == lab.name
    growth_mib = (peak_rss_kib(pid) - peak_before) / 1024
    assert growth_mib < 64, f"{case}: the agent's peak RSS grew by {growth_mib:.0f} MiB"


@pytest.mark.parametrize("case", list(FILES))
def test_lab_up_refuses_hostile_manifests_and_creates_nothing(tmp_path, case):
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(FILES[case][1])
    name = lab_name("sech")
    try:
        one_line_failure(workbench_cli("lab", "up", str(path), "--lab", name))
        assert name not in wb.Lab.known()
        assert not [ns for ns in os.listdir("/run/netns") if ns.startswith(f"wb-{name}-")]
    finally:
        wb.Lab(name).down()     # idempotent: removes whatever a failure left
