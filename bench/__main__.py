"""`make bench [QUICK=1]`: run every benchmark section, write bench/results/latest.json
plus a copy stamped with the date and machine, and a plot. ``--only S --merge`` re-measures
section S alone and replaces it in latest.json, keeping the other sections.

Sections are modules in bench/ with `run(quick: bool) -> dict`; a section whose
module is not there yet, or that fails, is recorded with its error so that the
other sections still report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import traceback
from pathlib import Path
from typing import Any

from bench.figures import SECTIONS, validate

RESULTS = Path(__file__).resolve().parent / "results"
SECTION_MODULES = {
    "datapath": "bench.datapath_bench",
    "attribution": "bench.attribution_bench",
    "policy_apply": "bench.policy_apply_bench",
    "ingest": "bench.ingest_bench",
    "lab": "bench.lab_bench",
    "l7": "bench.l7_bench",
    "flows_wire": "bench.flows_wire_bench",
    "dns": "bench.dns_bench",
}


def machine_facts() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"kernel": platform.release(), "cpu": cpu, "cores": os.cpu_count(),
            "hostname": platform.node(), "python": platform.python_version()}


def run_all(quick: bool, only: list[str] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                           "quick": quick, "machine": machine_facts()}
    for section in SECTIONS:
        if only and section not in only:
            doc[section] = {"skipped": "not selected"}
            continue
        try:
            module = importlib.import_module(SECTION_MODULES[section])
        except ModuleNotFoundError as err:
            doc[section] = {"error": f"not implemented yet ({err.name})"}
            continue
        print(f"bench: {section} ...", flush=True)
        try:
            doc[section] = module.run(quick=quick)
        except Exception as err:  # one broken section must not hide the others
            doc[section] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    return doc


def write(doc: dict[str, Any], run: dict[str, Any]) -> Path:
    """latest.json = ``doc``; the stamped copy = this ``run`` alone (they differ after --merge)."""
    RESULTS.mkdir(exist_ok=True)
    stamp = run["date"].replace(":", "").replace("+0000", "Z")
    latest = RESULTS / "latest.json"
    latest.write_text(json.dumps(doc, indent=2))
    (RESULTS / f"{stamp}-{run['machine']['hostname']}.json").write_text(json.dumps(run, indent=2))
    return latest


def merge_into_latest(doc: dict[str, Any], sections: list[str]) -> dict[str, Any]:
    """The committed latest.json with ``sections`` replaced by this run's; each notes when and where it ran.

    The other sections keep their own run (the top-level date and machine stay theirs).
    """
    latest = json.loads((RESULTS / "latest.json").read_text())
    remeasured = latest.setdefault("remeasured", {})
    for section in sections:
        latest[section] = doc[section]
        remeasured[section] = {"date": doc["date"], "quick": doc["quick"], "machine": doc["machine"]}
    return latest


def main() -> int:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--quick", action="store_true", help="a run under 5 minutes")
    parser.add_argument("--only", nargs="*", choices=SECTIONS)
    parser.add_argument("--merge", action="store_true",
                        help="with --only: replace those sections in results/latest.json, keep the others")
    args = parser.parse_args()
    if args.merge and not args.only:
        parser.error("--merge needs --only SECTION...")
    run = run_all(args.quick, args.only)
    doc = merge_into_latest(run, args.only) if args.merge else run
    path = write(doc, run)
    problems = validate(doc)
    from bench.plots import write_html

    plot = write_html(doc, path.with_suffix(".html"))
    print(f"bench: wrote {path} and {plot}")
    for p in problems:
        print(f"bench: schema problem: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
