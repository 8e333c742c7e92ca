"""The CLI against a real lab: tables fit an 80-column terminal, and $WORKBENCH_LAB chooses the lab."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

import workbench as wb

WORKBENCH = [sys.executable, "-m", "workbench"]


@pytest.fixture(scope="module")
def lab() -> Iterator[wb.Lab]:
    lab = wb.Lab.up(name=f"c{uuid.uuid4().hex[:6]}")
    try:
        lab.policy.apply(wb.example("rule1-l7.yaml"))    # entries for bpf policy get and policy explain
        yield lab
    finally:
        lab.down()


def workbench(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "WORKBENCH_LAB"}
    proc = subprocess.run([*WORKBENCH, *args], capture_output=True, text=True, timeout=120,
                          env={**environment, **env})
    assert proc.returncode == 0, proc.stderr
    return proc


def longest_line(text: str) -> int:
    return max(len(line) for line in text.splitlines())


@pytest.mark.parametrize("command", [["endpoint", "list"], ["identity", "list"], ["service", "list"],
                                     ["bpf", "policy", "get"], ["policy", "get"], ["policy", "explain"]],
                         ids=" ".join)
def test_tables_fit_80_columns(lab: wb.Lab, command: list[str]) -> None:
    text = workbench(*command, "--lab", lab.name, COLUMNS="80").stdout
    assert longest_line(text) <= 80, text
    assert "k8s:" not in text


def test_endpoint_list_in_80_columns_and_wide(lab: wb.Lab) -> None:
    text = workbench("endpoint", "list", "-l", lab.name, COLUMNS="80").stdout
    assert longest_line(text) <= 80 and text.startswith("ID  POD")
    for pod in ("xwing", "tiefighter"):
        assert f"  {pod}  " in text
    assert "class=xwing" in text and "ns=default" in text and "io.kubernetes.pod.namespace" not in text
    wide = workbench("endpoint", "list", "-l", lab.name, "-o", "wide", COLUMNS="80").stdout
    assert "k8s:io.kubernetes.pod.namespace=default" in wide and "LXC" in wide and longest_line(wide) > 80


def test_workbench_lab_environment_variable_chooses_the_lab(lab: wb.Lab) -> None:
    found = json.loads(workbench("endpoint", "list", "--json", WORKBENCH_LAB=lab.name).stdout)
    assert sorted(ep["pod"] for ep in found) == sorted(lab.endpoints["pod"])
    text = workbench("endpoint", "list", WORKBENCH_LAB=lab.name, COLUMNS="80").stdout
    assert "xwing" in text and longest_line(text) <= 80
    other = subprocess.run([*WORKBENCH, "endpoint", "list", "--lab", "tnotalab"], capture_output=True, text=True,
                           env={**os.environ, "WORKBENCH_LAB": lab.name})
    assert other.returncode == 1 and "lab tnotalab is not up" in other.stderr    # the flag over the environment
