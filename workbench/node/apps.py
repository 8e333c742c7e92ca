"""Built-in apps that stand in for container images (containers cannot run images here).

Run as a standalone script (stdlib only, started with ``python -I``) inside a
pod's netns and cgroup by the agent, so a 50-pod lab starts quickly:

    python -I apps.py --app deathstar --pod deathstar-x --port 80/TCP --ready-fd 5

- deathstar: the Cilium star-wars API (POST /v1/request-landing, PUT
  /v1/exhaust-port, GET /v1/ ...) on each TCP port.
- echo: an HTTP echo on each TCP port (answers the method, path and the client
  address it saw) and a datagram echo on each UDP port. In the world netns it
  also serves the lab's external hosts (``--external-host IP=HOSTNAME``): a
  request that arrived on such an address is answered as that host (its
  ``hostname`` in the body and in ``X-Served-By``).
Every request is logged to stderr (the pod's log file in the lab state dir).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEATHSTAR_API = [
    "GET   /v1",
    "GET   /v1/healthz",
    "POST  /v1/request-landing",
    "PUT   /v1/cargobay",
    "GET   /v1/hyper-matter-reactor/status",
    "PUT   /v1/exhaust-port",
]


def deathstar_description(pod: str) -> dict[str, object]:
    return {
        "name": "Death Star",
        "hostname": pod,
        "model": "DS-1 Orbital Battle Station",
        "manufacturer": "Imperial Department of Military Research, Sienar Fleet Systems",
        "cost_in_credits": "1000000000000",
        "length": "120000",
        "crew": "342953",
        "passengers": "843342",
        "cargo_capacity": "1000000000000",
        "hyperdrive_rating": "4.0",
        "starship_class": "Deep Space Mobile Battlestation",
        "api": DEATHSTAR_API,
    }


# (method, path) -> (status, body); paths are compared without a trailing slash.
def deathstar_routes(pod: str) -> dict[tuple[str, str], tuple[int, str]]:
    return {
        ("GET", "/v1"): (200, json.dumps(deathstar_description(pod), indent=2) + "\n"),
        ("GET", "/v1/healthz"): (200, '{"status": "ok"}\n'),
        ("POST", "/v1/request-landing"): (200, "Ship landed\n"),
        ("PUT", "/v1/cargobay"): (200, "Cargo bay loaded\n"),
        ("GET", "/v1/hyper-matter-reactor/status"): (200, "Hyper-matter reactor is stable\n"),
        ("PUT", "/v1/exhaust-port"): (503, "Panic: deathstar exploded\n"),
    }


def make_handler(app: str, pod: str, external_hosts: dict[str, str] | None = None) -> type[BaseHTTPRequestHandler]:
    """``external_hosts``: local address -> the host name a request to that address is answered as."""
    routes = deathstar_routes(pod) if app == "deathstar" else {}
    hostnames = external_hosts or {}

    class Handler(BaseHTTPRequestHandler):
        server_version = "workbench-" + app
        protocol_version = "HTTP/1.1"
        # Head and body leave as two writes: with Nagle on, a keep-alive client's
        # next answer would wait for the delayed ACK (~40 ms) every time.
        disable_nagle_algorithm = True

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            client = f"{self.client_address[0]}:{self.client_address[1]}"
            hostname = hostnames.get(self.connection.getsockname()[0])
            if app == "deathstar":
                status, body = routes.get((self.command, self.path.split("?")[0].rstrip("/") or "/"),
                                          (404, "Page not found\n"))
                content_type = "application/json" if body.startswith("{") else "text/plain"
            else:
                status, content_type = 200, "application/json"
                answer = {"method": self.command, "path": self.path, "client": client, "pod": pod}
                if hostname:
                    answer["hostname"] = hostname
                body = json.dumps(answer) + "\n"
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Served-By", hostname or pod)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _answer

        def log_message(self, format: str, *args: object) -> None:
            sys.stderr.write(f"{pod} {self.client_address[0]}:{self.client_address[1]} {format % args}\n")

    return Handler


def serve_udp(sock: socket.socket, pod: str) -> None:
    while True:
        data, peer = sock.recvfrom(65535)
        sys.stderr.write(f"{pod} {peer[0]}:{peer[1]} UDP {len(data)} bytes\n")
        sock.sendto(f"udp echo from {peer[0]}:{peer[1]} pod={pod}: ".encode() + data, peer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--app", choices=("deathstar", "echo"), required=True)
    parser.add_argument("--pod", required=True)
    parser.add_argument("--port", action="append", default=[], help="PORT/PROTO, repeatable")
    parser.add_argument("--ready-fd", type=int, default=-1)
    parser.add_argument("--external-host", action="append", default=[], help="IP=HOSTNAME, repeatable")
    args = parser.parse_args(argv)
    external = dict(item.split("=", 1) for item in args.external_host)
    handler = make_handler(args.app, args.pod, external)
    threads = []
    for spec in args.port:
        number, _, proto = spec.partition("/")
        if proto.upper() == "UDP":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", int(number)))
            threads.append(threading.Thread(target=serve_udp, args=(sock, args.pod), daemon=True))
        else:
            ThreadingHTTPServer.daemon_threads = True
            server = ThreadingHTTPServer(("0.0.0.0", int(number)), handler)
            threads.append(threading.Thread(target=server.serve_forever, daemon=True))
    for thread in threads:
        thread.start()
    if args.ready_fd >= 0:    # every socket is bound: tell the agent
        os.write(args.ready_fd, b"ready\n")
        os.close(args.ready_fd)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
