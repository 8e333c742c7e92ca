"""The shipped recording and `wb.Lab.replay()` outside any tutorial, as a reader's own cells would use it.

Each check runs in a fresh Python process: replay mode is a per-process switch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pandas as pd

from workbench.observe import ipc
from workbench.observe.schema import COLUMNS
from workbench.replay.playback import Playback
from workbench.replay.recording import DEFAULT_RECORDING, Recording

MAX_BYTES = 5 * 1024 * 1024


def test_the_shipped_recording_loads_is_small_and_its_flows_follow_the_schema():
    recording = Recording.load()
    meta = recording.meta
    assert {"recorded_at", "kernel", "workbench_version", "cpu"} <= set(meta)
    assert sorted(recording.tutorials) == sorted(p.stem for p in (DEFAULT_RECORDING.parents[2] / "notebooks")
                                                 .glob("[0-9][0-9]-*.ipynb"))
    size = sum(f.stat().st_size for f in DEFAULT_RECORDING.rglob("*") if f.is_file())
    assert size < MAX_BYTES, size
    flow_payloads = {e["payload"] for _, e in recording.entries()
                     if e.get("kind") == "call" and e.get("method") == "flows.query" and e.get("payload")}
    assert flow_payloads and all(name.endswith(".parquet") for name in flow_payloads)
    for name in flow_payloads:                     # parquet with the flow schema, as any reader sees it
        assert list(pd.read_parquet(DEFAULT_RECORDING / "payloads" / name).columns) == COLUMNS
        assert list(ipc.from_ipc(recording.payload(name)).columns) == COLUMNS   # validated dtypes too
    stages = [tuple(s["policies"]) for s in meta["stages"]]
    assert () in stages and ("default/rule1",) in stages    # no policy, then rule1 (and the later ones)
    assert "<lab>" in (DEFAULT_RECORDING / "02-observe.jsonl").read_text()   # no run's lab name is kept


def run_replayed(code: str) -> dict:
    script = "import json, workbench as wb\nlab = wb.Lab.replay(name='mine')\n" + textwrap.dedent(code)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_views_flows_with_any_filter_metrics_and_the_policy_map():
    out = run_replayed("""
        eps = lab.endpoints
        drops = lab.flows(verdict="DROPPED")
        xwing = lab.flows(from_pod="xwing", to_port=80)
        metrics = lab.metrics()
        smap = lab.service_map()
        print(json.dumps({"pods": sorted(eps.pod), "drops": len(drops), "drop_verdicts": sorted(set(drops.verdict)),
                          "xwing_src": sorted(set(xwing.src_pod.astype(str))), "xwing_ports": sorted(set(xwing.dst_port)),
                          "metrics": int((metrics.name == "hubble_flows_processed_total").sum()),
                          "services": sorted(lab.services.name), "map_rows": len(lab.policy.map),
                          "smap": type(smap).__name__}))
    """)
    assert "xwing" in out["pods"] and "tiefighter" in out["pods"] and "kube-dns" in out["pods"]
    assert out["drops"] > 0 and out["drop_verdicts"] == ["DROPPED"]
    assert out["xwing_src"] == ["xwing"] and out["xwing_ports"] == [80]
    assert out["metrics"] > 0 and "deathstar" in out["services"] and out["smap"] in ("Figure", "FigureWidget")


def test_what_needs_a_kernel_fails_in_one_line():
    out = run_replayed("""
        answers = {}
        for name, act in [("exec", lambda: lab.exec("xwing", "cat /etc/shadow")),
                          ("apply", lambda: lab.policy.apply("apiVersion: cilium.io/v2\\nkind: CiliumNetworkPolicy\\n"
                                                             "metadata: {name: nope}\\nspec: {endpointSelector: {}}\\n"))]:
            try:
                act()
                answers[name] = "no error"
            except wb.WorkbenchError as err:
                answers[name] = str(err)
        print(json.dumps(answers))
    """)
    for name, message in out.items():
        assert message.startswith("replay mode: needs a lab node (root + eBPF)"), (name, message)
        assert "\n" not in message


def test_dry_run_trace_and_replay_are_computed_for_a_policy_nobody_recorded():
    out = run_replayed("""
        text = (wb.example("rule1.yaml").read_text()).replace("name: rule1", "name: rule1-copy")
        dry = lab.policy.apply(text, dry_run=True)
        traced = lab.policy.trace("xwing", "tiefighter", 80)
        changed = lab.policy.replay(text, lab.flows(), add=True)
        print(json.dumps({"summary": dry["summary"], "dry": dry["dry_run"], "trace": traced["verdict"],
                          "changed": int(changed.attrs["changed"]), "judged": int(changed.attrs["judged"])}))
    """)
    assert out["dry"] is True and "entries" in out["summary"]
    assert out["trace"] in ("FORWARDED", "DROPPED")
    assert out["judged"] > 0


def test_applying_a_recorded_policy_switches_to_its_stage_and_says_so():
    out = run_replayed("""
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            applied = lab.policy.apply(wb.example("rule1.yaml"))
        print(json.dumps({"applied": applied.get("applied"), "said": [str(w.message) for w in caught]}))
    """)
    assert out["applied"] == ["default/rule1"]
    assert any("switched to the recorded stage" in said for said in out["said"])


def test_the_dashboard_plays_the_recorded_flows_back_in_time():
    times = pd.to_datetime(["2026-12-01T00:00:00Z", "2026-12-01T00:00:01Z", "2026-12-01T00:00:30Z"])
    frame = pd.DataFrame({"time": times, "n": [1, 2, 3]})
    now = [0.0]
    play = Playback(frame, max_gap=2.0, clock=lambda: now[0])
    assert list(play(None).n) == [1]                  # the first flow at once
    now[0] = 1.0
    assert list(play(1).n) == [2] and play(1).attrs["seq"] == 2
    now[0] = 2.5                                      # a 29 s quiet stretch plays as 2 s
    assert list(play(2).n) == []
    now[0] = 3.0
    assert list(play(2).n) == [3]


def test_policy_cell_magic_dry_run_in_replay_mode():
    out = run_replayed("""
        from IPython.testing.globalipapp import get_ipython
        ip = get_ipython()
        ip.run_line_magic("load_ext", "workbench")
        text = wb.example("rule1.yaml").read_text().replace("name: rule1", "name: rule1-candidate")
        outcome = ip.run_cell_magic("policy", "--dry-run --lab mine", text)
        print(json.dumps({"dry": outcome["dry_run"], "html": "dry run" in outcome._repr_html_(),
                          "replayed": len(outcome.get("replay") or [])}))
    """)
    assert out["dry"] is True and out["html"]
