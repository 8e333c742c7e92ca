"""The transparent DNS proxy: one UDP socket and one TCP listener in the lab's node netns, one event loop.

How queries arrive: the policy compiler gives every allow entry with DNS rules
the DNS proxy's port; from-container assigns the client's datagrams (and TCP
connections) on such an entry to the proxy's sockets on 127.0.0.1:<port>
(bpf/lib/l7.h), which have IP_TRANSPARENT. A datagram keeps its original
destination (the DNS server pod), read with IP_RECVORIGDSTADDR; an accepted TCP
socket has it as its local address.

What happens to a query (``handle``, the caller's policy in ``Resolver``):

- malformed (no DNS message): FORMERR back when the 12-byte header is there
  (the message id is needed to answer), else nothing; counted either way;
- denied: REFUSED back, Cilium's default answer for a denied name;
- allowed: sent on to the original destination from the node, with the
  client's identity in SO_MARK (as the L7 proxy's upstream connections), so
  the DNS server's ingress policy judges the real client; the answer goes
  through ``Resolver.answered`` (which learns the names and updates policy)
  *before* it is handed to the client, so the policy allows the addresses by
  the time the client can use them.

Answers leave with the original destination as their source: UDP through a
transparent socket bound to that address (one per server address, kept), TCP
on the accepted socket itself. The client's to-container then passes them as
replies of its own connection.

Bounds: at most ``MAX_INFLIGHT`` queries are in progress at once (more are
dropped and counted: a flood costs no memory beyond that; datagrams the
kernel drops on a full receive buffer are counted too, from SO_RXQ_OVFL), at most
``MAX_TCP_CONNECTIONS`` TCP clients, each cut after ``TCP_IDLE_TIMEOUT``
without a query; an upstream that does not answer within
``UPSTREAM_TIMEOUT`` gets the client a SERVFAIL.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
import traceback
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from workbench.agent.l7.proxy import IP_TRANSPARENT, SO_MARK, upstream_mark
from workbench.agent.netns_loop import NetnsLoop

PROXY_ADDRESS = "127.0.0.1"
IP_RECVORIGDSTADDR = 20         # linux/in.h; the cmsg it produces is IP_ORIGDSTADDR (the same number)
SO_RXQ_OVFL = 40                # asm-generic/socket.h: datagrams the kernel dropped on a full socket buffer
MAX_INFLIGHT = 1024             # queries in progress at once, UDP and TCP together
MAX_TCP_CONNECTIONS = 256
TCP_IDLE_TIMEOUT = 10.0         # seconds a TCP client may wait between queries
UPSTREAM_TIMEOUT = 3.0          # seconds for the DNS server's answer
MAX_MESSAGE = 65535
HEADER_BYTES = 12
# What dns.status counts (always present, 0 until it happens).
COUNTERS = ("forwarded", "refused", "malformed", "upstream_errors", "dropped_overload", "refused_tcp",
            "tcp_closed_early", "no_original_destination", "receive_errors", "send_errors", "accept_errors", "errors")


@dataclass
class Verdict:
    """The policy's answer for one query."""

    allowed: bool
    src_identity: int
    dst_identity: int
    policies: tuple[str, ...] = ()


@dataclass
class Query:
    """One query and what became of it (handed to ``Resolver.record``)."""

    client: tuple[str, int]
    server: tuple[str, int]
    protocol: str                       # "UDP" / "TCP"
    name: str = ""                      # the question, lower case with the trailing dot
    qtypes: tuple[str, ...] = ()
    verdict: str = "FORWARDED"          # FORWARDED, DROPPED (denied), ERROR (malformed, upstream failure)
    rcode: int | None = None
    ips: tuple[str, ...] = ()
    ttl: int | None = None
    cnames: tuple[str, ...] = ()
    latency_ns: int | None = None
    query_bytes: int = 0
    answer_bytes: int = 0
    decision: Verdict | None = None
    started_ns: int = field(default_factory=time.time_ns)


class Resolver:
    """What the proxy asks its owner (the DNS service); overridden there."""

    def decide(self, query: Query) -> Verdict:
        raise NotImplementedError

    async def answered(self, query: Query, answer: dns.message.Message) -> None:
        """An allowed answer, before the client gets it (learn names, allow addresses)."""

    def record(self, query: Query) -> None:
        """The finished query (flows, metrics)."""


def answer_facts(answer: dns.message.Message) -> tuple[tuple[str, ...], int | None]:
    """(A/AAAA addresses, smallest TTL among them) of an answer."""
    ips: list[str] = []
    ttls: list[int] = []
    for rrset in answer.answer:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            ips.extend(r.address for r in rrset)
            ttls.append(int(rrset.ttl))
    return tuple(ips), (min(ttls) if ttls else None)


def answer_cnames(answer: dns.message.Message) -> tuple[str, ...]:
    """The CNAME targets of an answer, in order."""
    return tuple(r.target.to_text() for rrset in answer.answer if rrset.rdtype == dns.rdatatype.CNAME
                 for r in rrset)


def formerr(wire: bytes) -> bytes | None:
    """A FORMERR answer to a message we cannot parse, or None when not even its header is there."""
    if len(wire) < HEADER_BYTES:
        return None
    msg_id, flags = struct.unpack("!HH", wire[:4])
    opcode_and_rd = flags & 0x7900            # keep the opcode and RD, as a server's answer does
    return struct.pack("!HHHHHH", msg_id, 0x8000 | opcode_and_rd | dns.rcode.FORMERR, 0, 0, 0, 0)


def refused(query: dns.message.Message) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.REFUSED)
    return response.to_wire()


def servfail(query: dns.message.Message) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.SERVFAIL)
    return response.to_wire()


def _overflow_count(ancdata: list[tuple[int, int, bytes]], last: int) -> int:
    """The socket's running count of datagrams dropped for a full buffer (SO_RXQ_OVFL), else ``last``."""
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(data) >= 4:
            return int(struct.unpack("=I", data[:4])[0])
    return last


def _orig_dst(ancdata: list[tuple[int, int, bytes]]) -> tuple[str, int] | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_IP and kind == IP_RECVORIGDSTADDR and len(data) >= 8:
            port = struct.unpack("!H", data[2:4])[0]
            return socket.inet_ntoa(data[4:8]), port
    return None


class DnsProxy:
    """The sockets and the loop (see the module docstring); ``resolver`` decides and records."""

    def __init__(self, netns: str, port: int, resolver: Resolver) -> None:
        self.netns = netns
        self.port = port
        self.resolver = resolver
        self.counters: Counter[str] = Counter()
        self.inflight = 0
        self.tcp_clients = 0
        self.kernel_dropped = 0     # datagrams a full receive buffer lost before the loop read them
        self.netns_inode = 0
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._reply_socks: dict[tuple[str, int], socket.socket] = {}
        self.netns_loop = NetnsLoop(netns, "dns-proxy")
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Bind both sockets inside the netns and start serving (returns once they are bound)."""
        def bind() -> None:
            self._udp = self._bind(socket.SOCK_DGRAM)
            self._udp.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
            self._udp.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            self._tcp = self._bind(socket.SOCK_STREAM)
            self._tcp.listen(MAX_TCP_CONNECTIONS)

        self.netns_loop.start(bind, self._main,
                              f"the DNS proxy cannot listen on {PROXY_ADDRESS}:{self.port} in {self.netns}")
        self.netns_inode = self.netns_loop.inode

    def _bind(self, kind: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.bind((PROXY_ADDRESS, self.port))
        sock.setblocking(False)
        return sock

    def close(self) -> None:
        self.netns_loop.stop()

    def status(self) -> dict[str, Any]:
        counters = {name: self.counters[name] for name in COUNTERS}
        return {"netns": self.netns, "address": PROXY_ADDRESS, "port": self.port,
                "listening": self._udp is not None and self.netns_loop.running,
                "inflight": self.inflight, "max_inflight": MAX_INFLIGHT, "tcp_clients": self.tcp_clients,
                "max_tcp_clients": MAX_TCP_CONNECTIONS, "dropped_socket_buffer": self.kernel_dropped, **counters}

    async def _main(self) -> None:
        stopped = self.netns_loop.stopped
        assert stopped is not None and self._udp is not None and self._tcp is not None
        loop = asyncio.get_running_loop()
        loop.add_reader(self._udp.fileno(), self._read_datagrams)
        loop.add_reader(self._tcp.fileno(), self._accept)
        try:
            await stopped
        finally:
            loop.remove_reader(self._udp.fileno())
            loop.remove_reader(self._tcp.fileno())
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for sock in [self._udp, self._tcp, *self._reply_socks.values()]:
                sock.close()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- UDP -----------------------------------------------------------------------------
    def _read_datagrams(self) -> None:
        assert self._udp is not None
        for _ in range(64):    # a batch per wakeup, so TCP clients get their turn in a flood
            try:
                wire, ancdata, _, client = self._udp.recvmsg(MAX_MESSAGE, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters["receive_errors"] += 1
                return
            self.kernel_dropped = _overflow_count(ancdata, self.kernel_dropped)
            server = _orig_dst(ancdata)
            if server is None:
                self.counters["no_original_destination"] += 1
                continue
            if self.inflight >= MAX_INFLIGHT:
                self.counters["dropped_overload"] += 1
                continue
            self._spawn(self._serve_datagram(wire, (client[0], int(client[1])), server))

    async def _serve_datagram(self, wire: bytes, client: tuple[str, int], server: tuple[str, int]) -> None:
        answer = await self.handle(wire, client, server, "UDP")
        if answer is not None:
            try:
                self._reply_socket(server).sendto(answer, client)
            except OSError:
                self.counters["send_errors"] += 1

    def _reply_socket(self, server: tuple[str, int]) -> socket.socket:
        """A transparent socket bound to the server's address: answers leave with it as their source."""
        sock = self._reply_socks.get(server)
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            sock.bind(server)
            sock.setblocking(False)
            self._reply_socks[server] = sock
        return sock

    # -- TCP -----------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self._tcp is not None
        for _ in range(64):
            try:
                conn, peer = self._tcp.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters["accept_errors"] += 1
                return
            if self.tcp_clients >= MAX_TCP_CONNECTIONS:
                self.counters["refused_tcp"] += 1
                conn.close()
                continue
            conn.setblocking(False)
            self.tcp_clients += 1
            self._spawn(self._serve_connection(conn, (peer[0], int(peer[1]))))

    async def _serve_connection(self, conn: socket.socket, client: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        try:
            local = conn.getsockname()
            server = (local[0], int(local[1]))
            while True:
                async with asyncio.timeout(TCP_IDLE_TIMEOUT):
                    wire = await _read_framed(loop, conn)
                if wire is None:
                    return
                answer = await self.handle(wire, client, server, "TCP")
                if answer is None:
                    return
                await loop.sock_sendall(conn, struct.pack("!H", len(answer)) + answer)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            self.counters["tcp_closed_early"] += 1
        finally:
            self.tcp_clients -= 1
            conn.close()

    # -- one query -------------------------------------------------------------------------
    async def handle(self, wire: bytes, client: tuple[str, int], server: tuple[str, int],
                     protocol: str) -> bytes | None:
        """The answer the client gets for ``wire`` (None: nothing), recording the query."""
        self.inflight += 1
        query = Query(client, server, protocol, query_bytes=len(wire))
        try:
            return await self._answer(wire, query)
        except Exception:
            self.counters["errors"] += 1
            traceback.print_exc()
            return None
        finally:
            self.inflight -= 1

    async def _answer(self, wire: bytes, query: Query) -> bytes | None:
        started = time.monotonic_ns()
        try:
            msg = dns.message.from_wire(wire)
            if not msg.question:
                raise dns.exception.FormError("no question")
        except (dns.exception.DNSException, ValueError, struct.error):
            self.counters["malformed"] += 1
            query.verdict, query.rcode = "ERROR", dns.rcode.FORMERR
            self.resolver.record(query)
            return formerr(wire)
        question = msg.question[0]
        query.name = question.name.to_text().lower()
        query.qtypes = tuple(dns.rdatatype.to_text(q.rdtype) for q in msg.question)
        query.decision = verdict = self.resolver.decide(query)
        if not verdict.allowed:
            self.counters["refused"] += 1
            query.verdict, query.rcode = "DROPPED", dns.rcode.REFUSED
            self.resolver.record(query)
            return refused(msg)
        try:
            raw = await self._ask_upstream(wire, query, verdict.src_identity)
            answer = dns.message.from_wire(raw)
        except (OSError, TimeoutError, dns.exception.DNSException, ValueError):
            self.counters["upstream_errors"] += 1
            query.verdict, query.rcode = "ERROR", dns.rcode.SERVFAIL
            self.resolver.record(query)
            return servfail(msg)
        query.rcode = answer.rcode()
        query.ips, query.ttl = answer_facts(answer)
        query.cnames = answer_cnames(answer)
        await self.resolver.answered(query, answer)
        query.latency_ns = time.monotonic_ns() - started
        query.answer_bytes = len(raw)
        self.counters["forwarded"] += 1
        self.resolver.record(query)
        return raw

    async def _ask_upstream(self, wire: bytes, query: Query, identity: int) -> bytes:
        """Send the query to its original destination from the node, speaking for ``identity``."""
        # Safety: never send a lab query from the machine's own netns.
        if not self.netns_loop.in_netns():
            raise OSError(f"the DNS proxy's loop thread is not in {self.netns}")
        loop = asyncio.get_running_loop()
        kind = socket.SOCK_DGRAM if query.protocol == "UDP" else socket.SOCK_STREAM
        sock = socket.socket(socket.AF_INET, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, upstream_mark(identity or 2))
            sock.setblocking(False)
            async with asyncio.timeout(UPSTREAM_TIMEOUT):
                await loop.sock_connect(sock, query.server)
                if kind == socket.SOCK_DGRAM:
                    await loop.sock_sendall(sock, wire)
                    return await loop.sock_recv(sock, MAX_MESSAGE)
                await loop.sock_sendall(sock, struct.pack("!H", len(wire)) + wire)
                answer = await _read_framed(loop, sock)
                if answer is None:
                    raise OSError("the DNS server closed the connection")
                return answer
        finally:
            sock.close()


async def _read_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            if data:
                raise asyncio.IncompleteReadError(data, n)
            return None
        data += chunk
    return data


async def _read_framed(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes | None:
    """One length-prefixed DNS message of a TCP stream (RFC 1035 4.2.2), None at a clean end."""
    prefix = await _read_exactly(loop, sock, 2)
    if prefix is None:
        return None
    (length,) = struct.unpack("!H", prefix)
    body = await _read_exactly(loop, sock, length)
    if body is None:
        raise asyncio.IncompleteReadError(b"", length)
    return body
