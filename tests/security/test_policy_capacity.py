"""Policies too big for the lab: refused in one line, within seconds, with the enforced policy untouched.

The policy map holds a fixed number of entries. A policy that needs more is
refused while compiling, at the first rule after which it cannot fit, so the
answer comes after reading the text once, not after compiling all of it; text
over the Kubernetes API server's 3 MiB request limit is refused before parsing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import workbench as wb
from workbench.lab.yamldocs import MAX_BYTES

WORKBENCH = [sys.executable, "-m", "workbench"]
RULES = 40_000   # distinct ports for both deathstar replicas: 80k keys, more than the map's 65,536


def _cli(lab: wb.Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WORKBENCH, *args, "--lab", lab.name], capture_output=True, text=True, timeout=120)


def _enforced_state(lab: wb.Lab) -> tuple[list[Any], list[Any]]:
    policies = json.loads(_cli(lab, "policy", "get", "--json").stdout)
    entries = json.loads(_cli(lab, "bpf", "policy", "get", "--json").stdout)
    return policies, [(e["endpoint"], e["direction"], e["identity"], e["protocol"], e["port"], e["action"])
                      for e in entries]


def _big_policy(path: Path) -> Path:
    rules = [{"toPorts": [{"ports": [{"port": str(1 + i)}]}]} for i in range(RULES)]
    doc = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "too-big"},
           "spec": {"endpointSelector": {"matchLabels": {"class": "deathstar"}}, "ingress": rules}}
    path.write_text(json.dumps(doc, separators=(",", ":")))
    assert path.stat().st_size < MAX_BYTES
    return path


def test_a_policy_over_the_map_capacity_is_refused_at_the_rule_that_overflows(starwars_lab: wb.Lab,
                                                                              tmp_path: Path) -> None:
    lab = starwars_lab
    assert _cli(lab, "policy", "apply", str(wb.example("rule1.yaml"))).returncode == 0
    before = _enforced_state(lab)
    started = time.monotonic()
    run = _cli(lab, "policy", "apply", str(_big_policy(tmp_path / "big.json")))
    took = time.monotonic() - started
    assert run.returncode == 1, run
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert "policy document 1 (CiliumNetworkPolicy too-big): spec.ingress[" in lines[0]
    assert "entries the policy map holds" in lines[0]
    # stopped where it overflowed (2 replicas x 32,768 ports fill 65,536), not at the end of the text
    index = int(lines[0].split("spec.ingress[")[1].split("]")[0])
    assert index < RULES - 1
    print(f"refused in {took:.1f} s at rule {index}")
    assert _enforced_state(lab) == before
    assert lab.exec("tiefighter", ["curl", "-s", "-m", "5", "-XPOST",
                                   "deathstar.default.svc.cluster.local/v1/request-landing"]).stdout == "Ship landed\n"


def test_text_over_the_size_limit_is_refused_before_parsing(starwars_lab: wb.Lab, tmp_path: Path) -> None:
    lab = starwars_lab
    before = _enforced_state(lab)
    path = tmp_path / "huge.yaml"
    path.write_text("a: " + "x" * MAX_BYTES + "\n")
    run = _cli(lab, "policy", "apply", str(path))
    assert run.returncode == 1 and "Traceback" not in run.stderr, run
    assert run.stderr.strip() == f"error: huge.yaml: {path.stat().st_size:,} bytes is more than the " \
                                 f"{MAX_BYTES:,} a document may have"
    assert _enforced_state(lab) == before
