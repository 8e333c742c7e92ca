"""`lab up` time: the star-wars demo (target < 5 s warm) and a 50-pod lab (target < 30 s).

Each sample is one `lab up` (agent start, topology, compiles, apps ready) in a
fresh lab, followed by `lab down`, also timed. No assertions here: the numbers
go to bench/results and the plot.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench.figures import figure


def pods_manifest(pods: int) -> str:
    """A lab of ``pods`` pods: 40% echo servers behind a service, the rest idle clients."""
    servers = max(1, pods * 2 // 5)
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {servers}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: web, image: example.org/web, ports: [{{containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: client}}
spec:
  replicas: {pods - servers}
  selector: {{matchLabels: {{app: client}}}}
  template:
    metadata: {{labels: {{app: client}}}}
    spec:
      containers: [{{name: client, image: example.org/client}}]
"""


def measure_lab_up(manifest: str | None, repeats: int) -> dict[str, Any]:
    """Median/min/max of `lab up` and `lab down` seconds over ``repeats`` fresh labs."""
    from workbench.client.lifecycle import start_lab, stop_lab
    from workbench.lab.manifests import parse_manifests, read_manifest_files
    from workbench.node.state import teardown

    spec = read_manifest_files([]) if manifest is None else parse_manifests([manifest])
    up, down, build = [], [], []
    for _ in range(repeats):
        name = f"b{uuid.uuid4().hex[:7]}"
        try:
            t0 = time.monotonic()
            outcome = start_lab(spec, name)
            up.append(time.monotonic() - t0)
            build.append(float(outcome.status["build_seconds"]))
            t0 = time.monotonic()
            stop_lab(name)
            down.append(time.monotonic() - t0)
        finally:
            teardown(name)
    return {"pods": len(spec.pods), "up": figure(up, "s", higher_is_better=False),
            "agent_build": figure(build, "s", higher_is_better=False),
            "down": figure(down, "s", higher_is_better=False)}


# One BCC compile of an entry file, in a fresh process so that its peak memory is its own.
COMPILE_SCRIPT = """
import json, sys, time
from workbench.datapath import build
t0 = time.monotonic()
build.compile_inlined(sys.argv[1], sys.argv[2], [])
seconds = time.monotonic() - t0
# VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork+exec.
hwm_kib = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "max_rss_mib": hwm_kib / 1024}))
"""


def measure_compile(entry: str, repeats: int) -> dict[str, Any]:
    """Seconds and peak RSS (MiB) of compiling and loading ``bpf/<entry>`` with BCC."""
    import json
    import subprocess
    import sys

    from workbench.datapath.build import remove_pins

    seconds, memory = [], []
    for _ in range(repeats):
        lab = f"c{uuid.uuid4().hex[:7]}"
        try:
            out = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, entry, lab], capture_output=True,
                                 text=True, check=True).stdout
        finally:
            remove_pins(lab)
        sample = json.loads(out.strip().splitlines()[-1])
        seconds.append(sample["seconds"])
        memory.append(sample["max_rss_mib"])
    return {"seconds": figure(seconds, "s", higher_is_better=False),
            "max_rss": figure(memory, "MiB", higher_is_better=False)}


def run(quick: bool = False) -> dict[str, Any]:
    """Bench section `lab`: the demo and a 50-pod lab, and the BCC compiles a lab needs."""
    return {
        "demo": measure_lab_up(None, 2 if quick else 5),
        "pods50": measure_lab_up(pods_manifest(50), 1 if quick else 3),
        "bcc_compile": {entry.split(".")[0]: measure_compile(entry, 2 if quick else 3)
                        for entry in ("lxc.bpf.c", "sock.bpf.c")},
        "targets": {"demo_up_s": 5.0, "pods50_up_s": 30.0},
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))
