"""The transparent HTTP proxy of a lab (Cilium's Envoy, in miniature).

One listening socket with IP_TRANSPARENT on 127.0.0.1:<proxy port> in the
node netns; the datapath (bpf/lib/l7.h) assigns redirected connections to it,
so an accepted socket's *local* address is the address the client dialled
(the pod, after socket LB) and its peer is the client. Each connection reads
HTTP/1.1 requests one after the other (keep-alive), asks ``decide`` about
each, answers a denied one itself with ``403 Access denied`` (the connection
stays usable), forwards an allowed one over its own upstream connection to the
original destination and relays the response. The upstream socket carries
SO_MARK = FROM_PROXY | client identity << 16, which the destination's
to-container reads as the peer identity.

All connections are served by one asyncio event loop on one thread (the
"l7-proxy" thread, which entered the node netns: every socket it opens is
born there), so slow or idle clients cost a socket and a little memory each,
not a thread. Limits (see docs/safety.md):

- at most ``MAX_CONNECTIONS`` client connections at once; one more is reset
  at once (RST) and counted in ``status()["refused"]``;
- a request head must arrive whole within ``HEAD_TIMEOUT`` seconds: of the
  connection for its first request, of the head's first byte for later ones;
  bytes trickling in do not move this deadline (Envoy's
  ``request_headers_timeout``). A client that sent part of a head then gets
  ``408 Request Timeout`` and an ERROR flow;
- a kept-alive connection may wait ``IDLE_TIMEOUT`` seconds for its next
  request; a body or a send to the client that makes no progress for as long
  ends the connection; every upstream connect, send or read has
  ``UPSTREAM_TIMEOUT`` seconds (then ``502 Bad Gateway``);
- a connection ended by the head or idle deadline is reset, not closed
  (no proxy-side TIME_WAIT, see ``run``).

The proxy asks ``decide`` (RE2 matching, linear in the request) on the loop's
own thread, not on the agent's API threads.

Malformed requests get ``400 Bad Request`` and the connection is closed (a
broken stream cannot be resynchronised); every error stays inside its
connection.

Example::

    >>> proxy = Proxy("wb-demo-node", 10080, decide, record)   # doctest: +SKIP
    >>> proxy.start(); proxy.status()["connections"]; proxy.close()   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import resource
import socket
import struct
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workbench.agent.l7.http import (
    MalformedHTTP,
    Message,
    body_parser,
    request_parser,
    request_path,
    response_parser,
    simple_response,
)
from workbench.agent.l7.stream import Stream, Timeout, Watchdog, drive
from workbench.agent.netns_loop import NetnsLoop

IP_TRANSPARENT = 19
SO_MARK = 36
MARK_MAGIC_FROM_PROXY = 0x0A00
PROXY_ADDRESS = "127.0.0.1"
MAX_CONNECTIONS = 4096         # client connections served at once, per lab (one proxy per lab)
HEAD_TIMEOUT = 10.0            # seconds for a whole request head
IDLE_TIMEOUT = 60.0            # seconds between requests, and without progress inside one
UPSTREAM_TIMEOUT = 10.0        # seconds for each upstream connect, send and read
FD_HEADROOM = 1024             # descriptors the agent needs besides the proxy's (maps, programs, API)
LISTEN_BACKLOG = MAX_CONNECTIONS   # a burst of connects up to the bound waits instead of being dropped
ACCEPT_BATCH = 64              # accepts per wakeup, so a flood of connects cannot starve served clients
DENIED_BODY = "Access denied\r\n"
TIMEOUT_BODY = "Request head not received in time\r\n"


def upstream_mark(identity: int) -> int:
    """SO_MARK of an upstream socket speaking for ``identity`` (bpf/lib/l7.h decodes it).

    Identity bits 0-15 go to mark bits 16-31, bits 16-23 to 0-7, bits 24-27 to 12-15
    (CIDR identities are 1 << 24 | n); bits 8-11 hold the FROM_PROXY magic.
    """
    if not 0 < identity < 1 << 28:
        raise ValueError(f"identity {identity} does not fit the proxy mark (1..2^28-1)")
    return (MARK_MAGIC_FROM_PROXY | (identity & 0xFFFF) << 16 | (identity >> 16) & 0xFF
            | ((identity >> 24) & 0xF) << 12)


@dataclass
class Decision:
    """What the policy says about one request, and who it is between (for flows and the mark)."""

    allowed: bool
    src_identity: int
    dst_identity: int
    direction: str = "INGRESS"
    policies: tuple[str, ...] = ()   # an allowed request: the policies whose HTTP rules allow it


@dataclass
class Exchange:
    """One request and what became of it: the proxy hands these to ``record``."""

    client: tuple[str, int]
    server: tuple[str, int]
    method: str
    url: str
    code: int | None
    verdict: str                 # FORWARDED, DROPPED, ERROR
    latency_ns: int | None
    decision: Decision | None
    request_bytes: int = 0
    response_bytes: int = 0


Decide = Callable[[tuple[str, int], tuple[str, int], str, str, dict[str, str]], Decision]
Record = Callable[[Exchange], None]


def raise_fd_limit(needed: int) -> int:
    """Make room for ``needed`` open files in this process (RLIMIT_NOFILE); returns the soft limit now.

    Raises the soft limit to ``needed`` (and the hard one too when the agent, as root, may); a
    limit it cannot raise is left as it is and reported by the caller.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (needed, hard if hard == resource.RLIM_INFINITY else max(hard, needed)))
    except (ValueError, OSError):
        if hard != resource.RLIM_INFINITY and hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _reset(conn: socket.socket) -> None:
    """Close with RST: the client learns at once, and no TIME_WAIT is kept for a refused connection."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    conn.close()


class Proxy:
    """Listener + one event loop serving every connection, all inside ``netns``."""

    def __init__(self, netns: str, port: int, decide: Decide, record: Record,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.netns = netns
        self.port = port
        self.decide = decide
        self.record = record
        self.max_connections = max_connections
        self._listener: socket.socket | None = None
        self.netns_loop = NetnsLoop(netns, "l7-proxy")
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchdog: Watchdog | None = None
        self.netns_inode = 0
        self.fd_limit = 0
        self.accepted = 0
        self.refused = 0
        self.accept_errors = 0
        self.errors = 0
        self.timeouts: Counter[str] = Counter()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the listener inside the netns and start serving (returns once it listens)."""
        needed = 2 * self.max_connections + FD_HEADROOM     # a client and an upstream socket each
        self.fd_limit = raise_fd_limit(needed)
        if self.fd_limit != resource.RLIM_INFINITY and self.fd_limit < needed:
            # fewer descriptors than planned: serve fewer connections rather than fail accept() later
            self.max_connections = max(1, (self.fd_limit - FD_HEADROOM) // 2)
        def bind() -> None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            sock.bind((PROXY_ADDRESS, self.port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
            self._listener = sock

        self.netns_loop.start(bind, lambda: self._main(self._require_listener()),
                               f"the L7 proxy cannot listen on {PROXY_ADDRESS}:{self.port} in {self.netns}")
        self.netns_inode = self.netns_loop.inode

    def _require_listener(self) -> socket.socket:
        assert self._listener is not None
        return self._listener

    def close(self) -> None:
        """Stop listening and close every connection (their requests end where they are)."""
        self._closed = True
        self.netns_loop.stop()

    def status(self) -> dict[str, Any]:
        """Counters for ``l7.status``: connections now and since the start, refusals and timeouts by kind."""
        return {"netns": self.netns, "address": PROXY_ADDRESS, "port": self.port,
                "listening": self._listener is not None and not self._closed,
                "connections": len(self._tasks), "max_connections": self.max_connections,
                "accepted": self.accepted, "refused": self.refused, "errors": self.errors,
                "accept_errors": self.accept_errors, "timeouts": dict(self.timeouts),
                "head_timeout_s": HEAD_TIMEOUT, "idle_timeout_s": IDLE_TIMEOUT, "fd_limit": self.fd_limit}

    # -- the loop ----------------------------------------------------------------------------
    async def _main(self, sock: socket.socket) -> None:
        stopped = self.netns_loop.stopped
        assert stopped is not None
        loop = asyncio.get_running_loop()
        self._watchdog = Watchdog(loop, self.timeouts)
        loop.add_reader(sock.fileno(), self._accept, sock)
        try:
            await stopped
        finally:
            self._watchdog.close()
            loop.remove_reader(sock.fileno())
            sock.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _accept(self, sock: socket.socket) -> None:
        """The listener is readable: take what is waiting (a batch), serve or refuse each."""
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # out of descriptors or buffers: pause accepting briefly instead of spinning on it
                self.accept_errors += 1
                loop.remove_reader(sock.fileno())
                loop.call_later(0.1, self._resume_accepting, sock)
                return
            if len(self._tasks) >= self.max_connections:
                self.refused += 1
                _reset(conn)
                continue
            self.accepted += 1
            task = loop.create_task(self._serve(conn, peer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _resume_accepting(self, sock: socket.socket) -> None:
        if self.netns_loop.running:
            asyncio.get_running_loop().add_reader(sock.fileno(), self._accept, sock)

    async def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        started = asyncio.get_running_loop().time()
        assert self._watchdog is not None      # set before the first accept
        down: Stream | None = None
        try:
            local = conn.getsockname()   # the original destination (transparent socket)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            down = await Stream.attach(conn, IDLE_TIMEOUT, "stalled", self._watchdog, accepted=True)
            await _Connection(self, down, (peer[0], int(peer[1])), (local[0], int(local[1])), started).run()
        except OSError:
            pass      # the client went away before it was served
        except Exception:
            self.errors += 1
            traceback.print_exc()
        finally:
            if down is not None:
                down.close()
            else:
                conn.close()


def _expects_continue(request: Message) -> bool:
    return request.headers.get("expect", "").lower() == "100-continue" and bool(request.chunked or request.body_length)


class _Connection:
    """One client connection and its upstream connection (a task on the proxy's loop)."""

    def __init__(self, proxy: Proxy, down: Stream, client: tuple[str, int], server: tuple[str, int],
                 started: float) -> None:
        self.proxy = proxy
        self.loop = down.loop
        self.started = started
        self.client = client
        self.server = server
        self.down = down
        self.up: Stream | None = None
        self.upstream_mark = 0
        self.requests = 0

    async def run(self) -> None:
        try:
            while True:
                received, pending = self.down.received, bool(self.down.buffer)
                try:
                    request = await self._next_request()
                except Timeout as late:
                    if late.what == "head" and (pending or self.down.received > received):  # part of a head came
                        await self._too_slow()
                    # Reset, as nginx's reset_timedout_connection: a proxy-side TIME_WAIT would make the kernel
                    # refuse a new connection that reuses the client's port (the redirect hands its SYN to the
                    # listener, and the request is dropped as a duplicate of the TIME_WAIT entry) for 60 s.
                    self.down.reset_on_close()
                    return
                except MalformedHTTP as err:
                    await self._malformed(str(err))
                    return
                except OSError:
                    return
                if request is None:
                    return
                self.requests += 1
                try:
                    if not await self._handle(request):
                        return
                except OSError:  # the client went away (or stalled) while we answered it
                    return
        finally:
            self._close_upstream()

    async def _next_request(self) -> Message | None:
        """The next request head, within the head deadline (see the module docstring)."""
        down, now = self.down, self.loop.time()
        if self.requests == 0:
            # a new connection exists to send a request: silence counts against the head deadline
            down.expire_at(self.started + HEAD_TIMEOUT, "head")
        else:
            if not down.buffer and not down.eof:
                down.expire_at(now + IDLE_TIMEOUT, "idle")
                await down.fill()
            down.expire_at(self.loop.time() + HEAD_TIMEOUT, "head")
        try:
            request: Message | None = await drive(request_parser(), down)
            return request
        finally:
            down.expire_at(None)

    def _url(self, request: Message) -> str:
        host = request.headers.get("host") or f"{self.server[0]}:{self.server[1]}"
        path = request_path(request.target)
        return f"http://{host}{path}"

    def _exchange(self, request: Message, code: int | None, verdict: str, latency: int | None,
                  decision: Decision | None, sent: int = 0, received: int = 0) -> None:
        try:
            self.proxy.record(Exchange(self.client, self.server, request.method, self._url(request), code,
                                       verdict, latency, decision, sent, received))
        except Exception:
            traceback.print_exc()

    async def _refuse(self, code: int, reason: str, body: str) -> None:
        """The proxy's own last answer on this connection (an ERROR flow without method)."""
        try:
            await self.down.send(simple_response(code, reason, body, keep_alive=False), patience=1.0)
        except OSError:
            pass
        self._exchange(Message(("", "/", ""), {}, b""), code, "ERROR", None, None)

    async def _malformed(self, why: str) -> None:
        await self._refuse(400, "Bad Request", f"Bad request: {why}\r\n")

    async def _too_slow(self) -> None:
        await self._refuse(408, "Request Timeout", TIMEOUT_BODY)

    async def _handle(self, request: Message) -> bool:
        """Answer one request; False when the client connection must close."""
        path = request_path(request.target)
        decision = self.proxy.decide(self.client, self.server, request.method, path, request.headers)
        if not decision.allowed:
            if _expects_continue(request):
                # the client waits for 100 before sending its body: refuse now and close (RFC 9110 10.1.1)
                await self.down.send(simple_response(403, "Forbidden", DENIED_BODY, keep_alive=False))
                self._exchange(request, 403, "DROPPED", None, decision)
                return False
            try:
                await drive(body_parser(request), self.down)  # read and discarded: the next request follows
            except MalformedHTTP as err:
                await self._malformed(str(err))
                return False
            await self.down.send(simple_response(403, "Forbidden", DENIED_BODY, request.keep_alive))
            self._exchange(request, 403, "DROPPED", None, decision)
            return request.keep_alive
        return await self._forward(request, decision)

    async def _forward(self, request: Message, decision: Decision) -> bool:
        started = time.monotonic_ns()
        reused = self.up is not None
        try:
            up = await self._upstream(decision.src_identity)
        except OSError as err:
            return await self._bad_gateway(request, decision, str(err))
        continued = _expects_continue(request)
        try:
            if continued:  # allowed: let the client send its body at once (the backend's own 100 is skipped)
                await up.send(request.head)
                await self.down.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            sent = await self._relay(request, self.down, up, b"" if continued else request.head)
            sent += len(request.head) if continued else 0
        except MalformedHTTP as err:  # the client's body is broken
            await self._malformed(str(err))
            return False
        except OSError as err:
            return await self._bad_gateway(request, decision, str(err))
        try:
            response: Message = await drive(response_parser(request.method), up)
            while 100 <= response.status < 200 and response.status != 101:  # interim answers
                if not continued:
                    await self.down.send(response.head)
                response = await drive(response_parser(request.method), up)
        except (MalformedHTTP, OSError) as err:
            bodiless = not request.chunked and not request.body_length
            if reused and bodiless:  # a kept-alive upstream the server had closed: dial once more
                self._close_upstream()
                return await self._forward(request, decision)
            return await self._bad_gateway(request, decision, str(err))
        latency = time.monotonic_ns() - started
        try:
            received = await self._relay(response, up, self.down, response.head)
        except (MalformedHTTP, OSError):
            self._close_upstream()
            self._exchange(request, response.status, "FORWARDED", latency, decision, sent)
            return False
        self._exchange(request, response.status, "FORWARDED", latency, decision, sent, received)
        if response.status == 101:  # protocol upgrades (WebSocket) are not proxied
            return False
        if not response.keep_alive:
            self._close_upstream()
        return request.keep_alive and response.keep_alive

    @staticmethod
    async def _relay(msg: Message, source: Stream, sink: Stream, head: bytes) -> int:
        """Send ``head`` and the body of ``msg`` from ``source`` to ``sink``; returns the bytes sent.

        A body of known length that is already buffered (most small messages) leaves in one send with
        its head: one syscall and one segment instead of two.
        """
        length = msg.body_length
        if not msg.chunked and length is not None and len(source.buffer) >= length:
            data = head + source.take(length)
            await sink.send(data)
            return len(data)
        if head:
            await sink.send(head)
        body: int = await drive(body_parser(msg), source, sink.send)
        return len(head) + body

    async def _bad_gateway(self, request: Message, decision: Decision, why: str) -> bool:
        self._close_upstream()
        try:
            await self.down.send(simple_response(502, "Bad Gateway", f"Upstream error: {why}\r\n",
                                                 keep_alive=False), patience=1.0)
        except OSError:
            pass
        self._exchange(request, 502, "ERROR", None, decision)
        return False

    async def _upstream(self, identity: int) -> Stream:
        mark = upstream_mark(identity)
        if self.up is not None and mark == self.upstream_mark:
            return self.up
        self._close_upstream()
        # Safety: never dial a lab address from the machine's own netns.
        if not self.proxy.netns_loop.in_netns():
            raise OSError(f"the proxy's loop thread is not in {self.proxy.netns}")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            try:
                async with asyncio.timeout(UPSTREAM_TIMEOUT):
                    await self.loop.sock_connect(sock, self.server)
            except TimeoutError:
                self.proxy.timeouts["upstream"] += 1
                raise Timeout("upstream") from None
            up = await Stream.attach(sock, UPSTREAM_TIMEOUT, "upstream", self.down.watchdog)
        except BaseException:
            sock.close()
            raise
        self.up, self.upstream_mark = up, mark
        return up

    def _close_upstream(self) -> None:
        if self.up is not None:
            self.up.close()
        self.up = None
