"""Connectivity probes, run inside a source pod (stdlib only, started with ``python -I``).

Reads a JSON list of probes on stdin ({"address", "port", "protocol", "path"}),
runs them concurrently, prints a JSON list of {"ok", "detail"} in the same order.
TCP probes make an HTTP GET and pass on a 2xx/3xx answer (an L7 "403 Access
denied" is a failure, as for `cilium connectivity test`); UDP probes pass when
the echo answers.
"""

from __future__ import annotations

import json
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

TIMEOUT = 2.0


def http_probe(address: str, port: int, path: str) -> tuple[bool, str]:
    try:
        with socket.create_connection((address, port), timeout=TIMEOUT) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError as err:
        return False, f"{type(err).__name__}: {err.strerror or err}"
    status_line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        return False, f"no HTTP answer ({status_line[:40]!r})"
    return 200 <= int(parts[1]) < 400, status_line


def udp_probe(address: str, port: int) -> tuple[bool, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(TIMEOUT)
    try:
        sock.sendto(b"workbench-probe", (address, port))
        data, peer = sock.recvfrom(4096)
    except OSError as err:
        return False, f"{type(err).__name__}: {err.strerror or err}"
    finally:
        sock.close()
    return b"workbench-probe" in data, f"reply from {peer[0]}:{peer[1]}"


def run(probe: dict[str, Any]) -> dict[str, Any]:
    if probe["protocol"] == "UDP":
        ok, detail = udp_probe(probe["address"], probe["port"])
    else:
        ok, detail = http_probe(probe["address"], probe["port"], probe.get("path") or "/")
    return {"ok": ok, "detail": detail}


def main() -> int:
    probes = json.load(sys.stdin)
    with ThreadPoolExecutor(max_workers=max(1, min(32, len(probes)))) as pool:
        results = list(pool.map(run, probes))
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
