"""The transparent HTTP proxy of a lab (Cilium's Envoy, in miniature).

One listening socket with IP_TRANSPARENT on 127.0.0.1:<proxy port> in the
node netns; the datapath (bpf/lib/l7.h) assigns redirected connections to it,
so an accepted socket's *local* address is the address the client dialled
(the pod, after socket LB) and its peer is the client. Per connection a
thread reads HTTP/1.1 requests one after the other (keep-alive), asks
``decide`` about each, answers a denied one itself with ``403 Access denied``
(the connection stays usable), forwards an allowed one over its own upstream
connection to the original destination and relays the response. The upstream
socket carries SO_MARK = FROM_PROXY | client identity << 16, which the
destination's to-container reads as the peer identity.

Malformed requests get ``400 Bad Request`` and the connection is closed (a
broken stream cannot be resynchronised); every error stays inside its
connection's thread.

Example::

    >>> proxy = Proxy("wb-demo-node", 10080, decide, record)   # doctest: +SKIP
    >>> proxy.start(); ...; proxy.close()                       # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from workbench.agent.l7.http import (
    MalformedHTTP,
    Message,
    copy_body,
    read_request,
    read_response,
    request_path,
    simple_response,
)
from workbench.errors import WorkbenchError

CLONE_NEWNET = 0x40000000
IP_TRANSPARENT = 19
SO_MARK = 36
MARK_MAGIC_FROM_PROXY = 0x0A00
PROXY_ADDRESS = "127.0.0.1"
UPSTREAM_TIMEOUT = 10.0
CLIENT_IDLE_TIMEOUT = 300.0
DENIED_BODY = "Access denied\r\n"


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


def _netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def _enter_netns_for_good(name: str) -> None:
    """setns(2) for the calling thread only; threads it starts later are born in that netns too."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns({name}): {os.strerror(code)}")
    finally:
        os.close(fd)


class Proxy:
    """Listener + per-connection threads, all inside ``netns``."""

    def __init__(self, netns: str, port: int, decide: Decide, record: Record) -> None:
        self.netns = netns
        self.port = port
        self.decide = decide
        self.record = record
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.netns_inode = 0
        self.accepted = 0
        self.errors = 0

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Bind the listener inside the netns and start accepting (returns once it listens)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                _enter_netns_for_good(self.netns)
                self.netns_inode = _netns_inode("/proc/thread-self/ns/net")
                if self.netns_inode != _netns_inode(f"/run/netns/{self.netns}"):
                    raise WorkbenchError(f"the proxy thread is not in {self.netns}")
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
                sock.bind((PROXY_ADDRESS, self.port))
                sock.listen(1024)
                sock.settimeout(0.5)
                self._listener = sock
            except BaseException as err:
                failure.append(err)
                ready.set()
                return
            ready.set()
            self._accept_loop(sock)

        self._thread = threading.Thread(target=run, name="l7-proxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise WorkbenchError(f"the L7 proxy cannot listen on {PROXY_ADDRESS}:{self.port} in {self.netns}: "
                                 f"{failure[0]}")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def status(self) -> dict[str, Any]:
        return {"netns": self.netns, "address": PROXY_ADDRESS, "port": self.port,
                "listening": self._listener is not None and not self._stop.is_set(),
                "connections": len(self._connections), "accepted": self.accepted, "errors": self.errors}

    # -- accepting -------------------------------------------------------------------------
    def _accept_loop(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.05)
                continue
            self.accepted += 1
            # child threads inherit this thread's netns: their upstream sockets are created in it
            threading.Thread(target=self._serve, args=(conn, peer), name="l7-conn", daemon=True).start()

    def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        with self._lock:
            self._connections.add(conn)
        try:
            _Connection(self, conn, peer).run()
        except Exception:
            self.errors += 1
            traceback.print_exc()
        finally:
            with self._lock:
                self._connections.discard(conn)
            try:
                conn.close()
            except OSError:
                pass


def _expects_continue(request: Message) -> bool:
    return request.headers.get("expect", "").lower() == "100-continue" and bool(request.chunked or request.body_length)


class _Connection:
    """One client connection and its upstream connection."""

    def __init__(self, proxy: Proxy, conn: socket.socket, peer: tuple[str, int]) -> None:
        self.proxy = proxy
        self.conn = conn
        self.client = (peer[0], int(peer[1]))
        local = conn.getsockname()
        self.server = (local[0], int(local[1]))  # the original destination (transparent socket)
        conn.settimeout(CLIENT_IDLE_TIMEOUT)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile: BinaryIO = conn.makefile("rb")
        self.upstream: socket.socket | None = None
        self.upstream_rfile: BinaryIO | None = None
        self.upstream_mark = 0

    def run(self) -> None:
        try:
            while True:
                try:
                    request = read_request(self.rfile)
                except MalformedHTTP as err:
                    self._malformed(str(err))
                    return
                except (OSError, TimeoutError):
                    return
                if request is None:
                    return
                if not self._handle(request):
                    return
        finally:
            self._close_upstream()

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

    def _malformed(self, why: str) -> None:
        try:
            self.conn.sendall(simple_response(400, "Bad Request", f"Bad request: {why}\r\n", keep_alive=False))
        except OSError:
            pass
        bad = Message(("", "/", ""), {}, b"")
        try:
            self.proxy.record(Exchange(self.client, self.server, "", self._url(bad), 400, "ERROR", None, None))
        except Exception:
            traceback.print_exc()

    def _handle(self, request: Message) -> bool:
        """Answer one request; False when the client connection must close."""
        path = request_path(request.target)
        decision = self.proxy.decide(self.client, self.server, request.method, path, request.headers)
        if not decision.allowed:
            if _expects_continue(request):
                # the client waits for 100 before sending its body: refuse now and close (RFC 9110 10.1.1)
                self.conn.sendall(simple_response(403, "Forbidden", DENIED_BODY, keep_alive=False))
                self._exchange(request, 403, "DROPPED", None, decision)
                return False
            try:
                copy_body(request, self.rfile)  # the body is read and discarded: the next request follows it
            except MalformedHTTP as err:
                self._malformed(str(err))
                return False
            self.conn.sendall(simple_response(403, "Forbidden", DENIED_BODY, request.keep_alive))
            self._exchange(request, 403, "DROPPED", None, decision)
            return request.keep_alive
        return self._forward(request, decision)

    def _forward(self, request: Message, decision: Decision) -> bool:
        started = time.monotonic_ns()
        reused = self.upstream is not None
        try:
            upstream, upstream_rfile = self._upstream(decision.src_identity)
            upstream.sendall(request.head)
        except OSError as err:
            return self._bad_gateway(request, decision, str(err))
        continued = _expects_continue(request)
        try:
            if continued:  # allowed: let the client send its body at once (the backend's own 100 is skipped)
                self.conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            sent = len(request.head) + copy_body(request, self.rfile, upstream.sendall)
        except MalformedHTTP as err:  # the client's body is broken
            self._malformed(str(err))
            return False
        except OSError as err:
            return self._bad_gateway(request, decision, str(err))
        try:
            response = read_response(upstream_rfile, request.method)
            while 100 <= response.status < 200 and response.status != 101:  # interim answers
                if not continued:
                    self.conn.sendall(response.head)
                response = read_response(upstream_rfile, request.method)
        except (MalformedHTTP, OSError) as err:
            bodiless = not request.chunked and not request.body_length
            if reused and bodiless:  # a kept-alive upstream the server had closed: dial once more
                self._close_upstream()
                return self._forward(request, decision)
            return self._bad_gateway(request, decision, str(err))
        latency = time.monotonic_ns() - started
        self.conn.sendall(response.head)
        try:
            received = len(response.head) + copy_body(response, upstream_rfile, self.conn.sendall)
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

    def _bad_gateway(self, request: Message, decision: Decision, why: str) -> bool:
        self._close_upstream()
        try:
            self.conn.sendall(simple_response(502, "Bad Gateway", f"Upstream error: {why}\r\n", keep_alive=False))
        except OSError:
            pass
        self._exchange(request, 502, "ERROR", None, decision)
        return False

    def _upstream(self, identity: int) -> tuple[socket.socket, BinaryIO]:
        mark = upstream_mark(identity)
        if self.upstream is not None and self.upstream_rfile is not None and mark == self.upstream_mark:
            return self.upstream, self.upstream_rfile
        self._close_upstream()
        # Safety: never dial a lab address from the machine's own netns.
        if _netns_inode("/proc/thread-self/ns/net") != self.proxy.netns_inode:
            raise OSError(f"proxy connection thread is not in {self.proxy.netns}")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(UPSTREAM_TIMEOUT)
        try:
            sock.connect(self.server)
        except OSError:
            sock.close()
            raise
        self.upstream, self.upstream_rfile, self.upstream_mark = sock, sock.makefile("rb"), mark
        return sock, self.upstream_rfile

    def _close_upstream(self) -> None:
        if self.upstream is not None:
            try:
                self.upstream.close()
            except OSError:
                pass
        self.upstream = None
        self.upstream_rfile = None
