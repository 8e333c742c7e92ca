"""A full archive disk is loud and harmless: a real lab archives onto a 64 KiB tmpfs that is full.

The flood (policy-denied UDP datagrams between two lab pods, never off the
machine) must still be ingested, and ``flows.status``, ``lab status`` (text and
--json) and the Prometheus metrics must name the error and count the rows the
archive dropped. When room comes back the archive writes again by itself.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import workbench as wb
from tests.security.conftest import lab_name
from tests.waiting import wait_until
from workbench.observe.metrics import metric_value, metrics_frame

FLOOD_SECONDS = 2.0
# Runs in the tiefighter pod: UDP datagrams to a deathstar pod port that rule1 denies, for N seconds.
FLOOD = r"""
import socket, sys, time
target, seconds = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = failed = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(256):
        try:
            s.sendto(b"x", (target, 9999))
            sent += 1
        except OSError:
            failed += 1
print(sent, failed)
"""


@pytest.fixture
def full_tmpfs() -> Iterator[tuple[Path, Path]]:
    """A 64 KiB tmpfs under a unique temp dir, filled to the last byte by a filler file; unmounted afterwards."""
    mount = Path(tempfile.mkdtemp(prefix="wb-arch-tmpfs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "wb-arch-test", str(mount)], check=True)
    try:
        filler = mount / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC
        finally:
            os.close(fd)
        (mount / "flows").mkdir()
        yield mount, filler
    finally:
        if subprocess.run(["umount", str(mount)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)   # a straggling writer: detach anyway
        mount.rmdir()


def counts(lab: wb.Lab) -> tuple[int, int]:
    status = lab.call("flows.status")
    return int(status["seen"]), int(status["lost_events"])


def settled_counts(lab: wb.Lab) -> tuple[int, int]:
    """(seen, lost) once two reads a poll interval apart agree: nothing of an earlier step is still coming."""
    previous = counts(lab)
    for _ in range(30):
        time.sleep(1.1)
        now = counts(lab)
        if now == previous:
            return now
        previous = now
    raise AssertionError(f"the flow counters never settled (last {previous})")


def test_a_full_archive_disk_is_reported_counted_and_never_stops_ingest(full_tmpfs: tuple[Path, Path]):
    mount, filler = full_tmpfs
    archive = mount / "flows"
    lab = wb.Lab.up(name=lab_name("arch"), archive_dir=str(archive), flow_capacity=1_000_000)
    try:
        lab.policy.apply(wb.example("rule1.yaml"))   # deathstar ingress: only TCP/80 from the empire
        endpoints = lab.endpoints
        deathstar = str(endpoints[endpoints.pod.str.startswith("deathstar")].ipv4.iloc[0])
        seen0, lost0 = settled_counts(lab)   # the counters are polled every second

        out = lab.exec("tiefighter", [sys.executable, "-c", FLOOD, deathstar, str(FLOOD_SECONDS)],
                       check=True, timeout=60).stdout
        sent, _failed = (int(x) for x in out.split())
        assert sent > 1000, f"the flood sent only {sent} datagrams"
        def covered() -> tuple[int, int] | None:   # the reader drains, the lost-event counter is polled
            seen, lost_now = counts(lab)
            return (seen, lost_now) if (seen - seen0) + (lost_now - lost0) >= sent else None

        wait_until(covered, 15, f"an event for each of the {sent} datagrams, ingested or lost")
        seen1, lost1 = settled_counts(lab)   # the lost counter is polled: let its last update land
        ingested, lost = seen1 - seen0, lost1 - lost0
        print(f"flood: {sent} datagrams sent, {ingested} events ingested, {lost} lost by the ring")

        # Every datagram was dropped by policy: at least one event each, ingested or counted as lost.
        assert ingested + lost >= sent, (ingested, lost, sent)
        # The full disk does not collapse ingest: the ring loses less than a tenth of what the flood made.
        assert lost * 10 <= ingested + lost, f"ingest collapsed: {lost} lost vs {ingested} ingested of {sent} sent"
        denied = lab.flows(from_pod="tiefighter", to_port=9999, verdict="DROPPED", last=10_000_000)
        assert len(denied) >= min(sent, ingested) // 2, (len(denied), sent, ingested)

        # flows.status: the error, one line, naming the file; the archive's own drop counter.
        status = wait_until(lambda: (s := lab.call("flows.status"))["archive_error"] and s, 15, "an archive error")
        assert status["archive"] == str(archive)
        assert status["archive_error"].startswith(f"archive: No space left on device writing {archive}/flows-")
        assert status["archive_error"].endswith(".parquet") and "\n" not in status["archive_error"]
        assert status["archive_dropped"] > 0
        assert status["archive_detail"]["dropped"]["write_error"] > 0
        assert status["archive_rows"] + status["archive_dropped"] <= status["seen"]   # it only drops what it got
        assert status["lost_events"] == lost1           # ring losses stay their own counter

        # lab status, --json and text.
        cli = [sys.executable, "-m", "workbench", "lab", "status", "--name", lab.name]
        doc = json.loads(subprocess.run([*cli, "--json"], capture_output=True, text=True, check=True).stdout)
        assert doc["archive_error"].startswith("archive: No space left on device writing")
        assert doc["archive_dropped"] >= status["archive_dropped"]
        text = subprocess.run(cli, capture_output=True, text=True, check=True).stdout
        assert any(line.startswith("archive_error") and "No space left on device" in line
                   for line in text.splitlines()), text
        assert any(line.split()[:1] == ["archive_dropped"] and int(line.split()[1]) > 0
                   for line in text.splitlines()), text

        # Prometheus: the drop counter, the error counter, the failing flag.
        metrics = metrics_frame(lab.metrics_text())
        assert metric_value(metrics, "workbench_archive_dropped_rows_total", reason="write_error") > 0
        assert metric_value(metrics, "workbench_archive_errors_total") >= 1
        assert metric_value(metrics, "workbench_archive_failing") == 1
        assert metric_value(metrics, "hubble_lost_events_total") == lost1

        # The flows the dashboard polls carry the archive's state.
        assert lab.flows(last=1).attrs["archive"]["error"].startswith("archive: No space left")

        # Room again: the archive resumes with a new file, without a restart.
        filler.unlink()
        lab.exec("tiefighter", "curl -s -m 2 -XPOST deathstar.default.svc.cluster.local/v1/request-landing",
                 check=True)
        recovered = wait_until(lambda: (s := lab.call("flows.status"))["archive_error"] is None
                               and s["archive_rows"] > 0 and s, 15, "the archive to write again")
        assert recovered["archive_detail"]["last_error"].startswith("archive: No space left on device")
        assert metric_value(metrics_frame(lab.metrics_text()), "workbench_archive_failing") == 0
    finally:
        lab.down()   # closes the archive
    back = wb.read_flows(str(archive))
    assert len(back) >= recovered["archive_rows"]
