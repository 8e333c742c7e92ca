"""The lab's DNS server: the built-in app of the kube-system/kube-dns pod.

Started by the agent like the other built-in apps (``workbench/node/apps.py``),
inside the kube-dns pod's netns and cgroup, but with the environment's Python
so that dnspython (the wire format: no hand-written parser) imports:

    python -I dnsapp.py --pod kube-dns --records /run/workbench/<lab>/dns-records.json --ready-fd 5

It answers UDP and TCP on port 53 from the records file the agent writes
(``workbench/lab/dnsrecords.py``: ``{"records": {name: [{"ip", "ttl"}]}}``),
read again whenever the file changes (checked on every query), so names the
agent adds while the lab runs resolve without a restart:

- A for a known name: its records, with their TTL;
- AAAA or any other type for a known name: NOERROR without answers (NODATA),
  as for a name that only has names below it (``default.svc.cluster.local``);
- any other name: NXDOMAIN. Nothing is forwarded anywhere: a name the lab
  does not know has no address, so a lookup can never lead out of the lab;
- a packet dnspython cannot read: FORMERR (with the query's id); a packet too
  short to hold a DNS header, or that is itself a response, gets no answer;
- other opcodes NOTIMP, other classes than IN REFUSED.

Answers for names in cluster.local are authoritative and carry the zone's SOA
when negative (as CoreDNS's do), so resolvers cache NXDOMAIN for 30 s at most.
Every query is logged to stderr (the pod's log in the lab's state directory).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import sys
import threading
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

CLUSTER_DOMAIN = dns.name.from_text("cluster.local")
NEGATIVE_TTL = 30
SOA = dns.rrset.from_text(CLUSTER_DOMAIN, NEGATIVE_TTL, "IN", "SOA",
                          f"ns.dns.{CLUSTER_DOMAIN} hostmaster.{CLUSTER_DOMAIN} 1 7200 1800 86400 {NEGATIVE_TTL}")
DNS_HEADER_SIZE = 12
UDP_PAYLOAD = 512                # without EDNS (RFC 1035)
TCP_IDLE_SECONDS = 10.0

Records = dict[str, list[tuple[str, int]]]


class RecordFile:
    """The agent's records file, parsed again when it changes (a new inode, size or mtime)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._version: tuple[int, int, int] | None = None
        self._records: Records = {}
        self._below: set[str] = set()

    def current(self) -> tuple[Records, set[str]]:
        """The records, and every name that has names below it (which exists, without records of its own)."""
        try:
            st = os.stat(self.path)
            version: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            version = None
        with self._lock:
            if version != self._version:
                self._load(version)
            return self._records, self._below

    def _load(self, version: tuple[int, int, int] | None) -> None:
        if version is None:
            self._records, self._below, self._version = {}, set(), None
            return
        try:
            with open(self.path) as f:
                raw: dict[str, Any] = json.load(f)["records"]
            records = {name.lower().rstrip("."): [(str(r["ip"]), int(r["ttl"])) for r in entries]
                       for name, entries in raw.items()}
        except (OSError, ValueError, KeyError, TypeError) as err:
            # Keep answering from the last good file; the agent replaces it atomically, so this is rare.
            sys.stderr.write(f"records file {self.path} unreadable, keeping the previous records: {err}\n")
            return
        below: set[str] = set()
        for name in records:
            labels = name.split(".")
            below.update(".".join(labels[i:]) for i in range(1, len(labels)))
        self._records, self._below, self._version = records, below, version
        sys.stderr.write(f"loaded {len(records)} names from {self.path}\n")


def _error_answer(wire: bytes, rcode: dns.rcode.Rcode) -> bytes | None:
    """An answer with ``rcode`` to a packet dnspython could not read: its id is all that is known."""
    if len(wire) < DNS_HEADER_SIZE or wire[2] & 0x80:     # no header, or itself a response (QR): stay silent
        return None
    message = dns.message.Message(id=int.from_bytes(wire[:2], "big"))
    message.flags = dns.flags.QR
    message.set_rcode(rcode)
    return message.to_wire()


def answer(wire: bytes, records: RecordFile, udp: bool) -> tuple[bytes | None, str]:
    """The answer to one DNS message (None: send nothing) and a line for the log."""
    try:
        query = dns.message.from_wire(wire)
    except dns.message.ShortHeader:
        return None, "short packet ignored"
    except Exception as err:        # any unreadable message is the client's error, never the server's end
        return _error_answer(wire, dns.rcode.FORMERR), f"FORMERR ({type(err).__name__})"
    if query.flags & dns.flags.QR:
        return None, "response ignored"
    response = dns.message.make_response(query)
    response.flags |= dns.flags.RA
    if query.opcode() != dns.opcode.QUERY:
        response.set_rcode(dns.rcode.NOTIMP)
        return response.to_wire(), f"NOTIMP opcode {dns.opcode.to_text(query.opcode())}"
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response.to_wire(), f"FORMERR ({len(query.question)} questions)"
    question = query.question[0]
    what = f"{dns.rdatatype.to_text(question.rdtype)} {question.name}"
    if question.rdclass != dns.rdataclass.IN:
        response.set_rcode(dns.rcode.REFUSED)
        return response.to_wire(), f"{what} REFUSED (class {dns.rdataclass.to_text(question.rdclass)})"
    known, below = records.current()
    name = question.name.to_text(omit_final_dot=True).lower()
    in_cluster = question.name.is_subdomain(CLUSTER_DOMAIN)
    if in_cluster:
        response.flags |= dns.flags.AA
    entries = known.get(name)
    if entries and question.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY):
        rrset = response.find_rrset(response.answer, question.name, dns.rdataclass.IN, dns.rdatatype.A,
                                    create=True)
        for ip, ttl in entries:
            rrset.add(dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.A, ip), ttl)
        outcome = "NOERROR " + ",".join(ip for ip, _ in entries)
    elif entries is not None or name in below or question.name == CLUSTER_DOMAIN:
        outcome = "NOERROR no data"
    else:
        response.set_rcode(dns.rcode.NXDOMAIN)
        outcome = "NXDOMAIN"
    if in_cluster and not response.answer:
        response.authority.append(SOA)
    limit = max(UDP_PAYLOAD, query.payload if query.edns >= 0 else 0) if udp else 65535
    try:
        return response.to_wire(max_size=limit), f"{what} {outcome}"
    except dns.exception.TooBig:      # over UDP: truncated, the client asks again over TCP
        response.answer.clear()
        response.authority.clear()
        response.flags |= dns.flags.TC
        return response.to_wire(), f"{what} {outcome} truncated"


def serve_udp(sock: socket.socket, records: RecordFile, pod: str) -> None:
    while True:
        wire, peer = sock.recvfrom(65535)
        try:
            reply, line = answer(wire, records, udp=True)
            if reply is not None:
                sock.sendto(reply, peer)
        except Exception as err:      # never let one packet end the server
            line = f"error {type(err).__name__}: {err}"
        sys.stderr.write(f"{pod} {peer[0]}:{peer[1]} UDP {line}\n")


def _read_exactly(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def make_tcp_handler(records: RecordFile, pod: str) -> type[socketserver.BaseRequestHandler]:
    class Handler(socketserver.BaseRequestHandler):
        """One TCP connection: length-prefixed messages (RFC 1035 4.2.2), answered in order."""

        def handle(self) -> None:
            conn: socket.socket = self.request
            conn.settimeout(TCP_IDLE_SECONDS)
            peer = f"{self.client_address[0]}:{self.client_address[1]}"
            try:
                while (head := _read_exactly(conn, 2)) is not None:
                    wire = _read_exactly(conn, int.from_bytes(head, "big"))
                    if wire is None:
                        return
                    reply, line = answer(wire, records, udp=False)
                    sys.stderr.write(f"{pod} {peer} TCP {line}\n")
                    if reply is None:
                        return
                    conn.sendall(len(reply).to_bytes(2, "big") + reply)
            except OSError:
                return
            except Exception as err:  # never let one connection end the server
                sys.stderr.write(f"{pod} {peer} TCP error {type(err).__name__}: {err}\n")

    return Handler


class TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pod", required=True)
    parser.add_argument("--records", required=True, help="the agent's records file (JSON)")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--ready-fd", type=int, default=-1)
    args = parser.parse_args(argv)
    records = RecordFile(args.records)
    records.current()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    udp.bind(("0.0.0.0", args.port))
    tcp = TCPServer(("0.0.0.0", args.port), make_tcp_handler(records, args.pod))
    threads = [threading.Thread(target=serve_udp, args=(udp, records, args.pod), daemon=True),
               threading.Thread(target=tcp.serve_forever, daemon=True)]
    for thread in threads:
        thread.start()
    if args.ready_fd >= 0:    # both sockets are bound: tell the agent
        os.write(args.ready_fd, b"ready\n")
        os.close(args.ready_fd)
    threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
