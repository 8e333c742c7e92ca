"""One socket of the proxy's event loop: a read buffer, deadlines, and the HTTP parsers run over it.

The proxy serves every connection from one asyncio loop; a :class:`Stream` is
its view of one socket (an asyncio protocol: the socket stays registered with
the loop while it lives, no per-read registration). Reads run the parsers of
:mod:`.http` (``drive``), so the proxy applies exactly the checks the blocking
readers apply. Every wait for the peer ends at the earlier of two times:
``deadline`` (absolute, for a whole phase such as a request head: trickling
bytes do not move it) and ``patience`` seconds from the start of that wait
(progress: a body or a send that stalls). When one runs out,
:class:`Timeout` says which. The loop's :class:`Watchdog` ends such waits:
one sweep over all streams every ``TICK`` seconds instead of a timer per wait,
so waiting costs two attribute stores and deadlines hold within ``TICK``.

Example::

    >>> watchdog = Watchdog(asyncio.get_running_loop(), Counter())          # doctest: +SKIP
    >>> stream = await Stream.attach(sock, 60.0, "stalled", watchdog)       # doctest: +SKIP
    >>> stream.expire_at(stream.loop.time() + 10.0, "head")                 # doctest: +SKIP
    >>> request = await drive(request_parser(), stream)                     # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from workbench.agent.l7.http import EXACT, LINE, SOME, Parser

HIGH_WATER = 256 * 1024    # buffered bytes at which reading pauses (a peer cannot make the proxy buffer more)
TICK = 0.25                # seconds between the watchdog's sweeps


class Timeout(TimeoutError):
    """A wait on a peer ran out; ``what`` names the limit ("head", "idle", "stalled", "upstream").

    A TimeoutError (an OSError): code that treats a dead upstream as an OSError treats a slow one alike.
    """

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} timeout")
        self.what = what


class Watchdog:
    """Ends the waits of the streams of one loop that ran out of time (a sweep every ``TICK`` seconds)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeouts: Counter[str]) -> None:
        self.loop = loop
        self.timeouts = timeouts          # ended waits by kind, for the proxy's status
        self.streams: set[Stream] = set()
        self._handle = loop.call_later(TICK, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for stream in self.streams:   # expire() only schedules callbacks: the set does not change here
            if stream.expires is not None and stream.expires <= now:
                stream.expire()
        self._handle = self.loop.call_later(TICK, self._sweep)

    def close(self) -> None:
        self._handle.cancel()


class Stream(asyncio.Protocol):
    """A connected socket with a read buffer; waits end at ``deadline`` or after ``patience`` seconds."""

    def __init__(self, loop: asyncio.AbstractEventLoop, patience: float, what: str, watchdog: Watchdog) -> None:
        self.loop = loop
        self.patience = patience
        self.what = what
        self.watchdog = watchdog
        self.deadline: float | None = None
        self.deadline_what = ""
        self.expires: float | None = None      # when the current wait ends (None: not waiting)
        self._expiry_what = ""
        self._expiring: asyncio.Future[None] | None = None
        self.buffer = bytearray()
        self.eof = False
        self.received = 0                  # bytes received so far
        self.transport: asyncio.Transport | None = None
        self._error: Exception | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None

    @classmethod
    async def attach(cls, sock: socket.socket, patience: float, what: str, watchdog: Watchdog,
                     accepted: bool = False) -> Stream:
        """A stream over ``sock``, connected already (``accepted``: it came from a listener)."""
        loop = watchdog.loop
        stream = cls(loop, patience, what, watchdog)
        if accepted:
            await loop.connect_accepted_socket(lambda: stream, sock)
        else:
            await loop.create_connection(lambda: stream, sock=sock)
        return stream

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.watchdog.streams.add(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.received += len(data)
        if len(self.buffer) >= HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return True   # half-closed: the answer to what the peer sent may still go out

    def connection_lost(self, exc: Exception | None) -> None:
        self.watchdog.streams.discard(self)
        self.eof = True
        if exc is not None:
            self._error = exc
        self._wake_reader()
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc or ConnectionResetError("connection closed"))

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_reader(self) -> None:
        waiter, self._data_waiter = self._data_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- waiting -------------------------------------------------------------------------------
    def expire_at(self, when: float | None, what: str = "") -> None:
        """Every wait from now on ends at loop time ``when`` at the latest (None: only patience)."""
        self.deadline, self.deadline_what = when, what

    async def wait(self, future: asyncio.Future[None], patience: float | None = None) -> None:
        """Until ``future`` is done, or :class:`Timeout` when the deadline or the patience runs out first."""
        when = self.loop.time() + (self.patience if patience is None else patience)
        what = self.what
        if self.deadline is not None and self.deadline <= when:
            when, what = self.deadline, self.deadline_what
        self.expires, self._expiry_what, self._expiring = when, what, future
        try:
            await future
        finally:
            self.expires = self._expiring = None

    def expire(self) -> None:
        """The current wait ran out of time (the watchdog calls this)."""
        future, what = self._expiring, self._expiry_what
        self.expires = None
        if future is not None and not future.done():
            self.watchdog.timeouts[what] += 1
            future.set_exception(Timeout(what))

    # -- reading -------------------------------------------------------------------------------
    async def fill(self) -> None:
        """Wait until more bytes (or EOF) arrive."""
        if not self.eof:
            self._data_waiter = self.loop.create_future()
            try:
                await self.wait(self._data_waiter)
            finally:
                self._data_waiter = None

    def _short(self) -> None:
        """A read ends short at EOF: a reset connection raises its error (not a message cut short)."""
        if self._error is not None:
            raise self._error

    def take(self, n: int) -> bytes:
        """Up to ``n`` buffered bytes, removed from the buffer (no waiting)."""
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        if self._reading_paused and len(self.buffer) < HIGH_WATER // 2 and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    async def readline(self, limit: int) -> bytes:
        """Like ``BinaryIO.readline(limit)``: up to and including b"\\n", at most ``limit`` bytes."""
        searched = 0
        while True:
            end = self.buffer.find(b"\n", searched, limit)
            if end >= 0:
                return self.take(end + 1)
            if len(self.buffer) >= limit:
                return self.take(limit)
            if self.eof:
                self._short()
                return self.take(limit)
            searched = len(self.buffer)
            await self.fill()

    async def read_exact(self, n: int) -> bytes:
        """``n`` bytes, fewer only at EOF."""
        while len(self.buffer) < n and not self.eof:
            await self.fill()
        if len(self.buffer) < n:
            self._short()
        return self.take(n)

    async def read_some(self, n: int) -> bytes:
        """1 to ``n`` bytes, b"" at EOF."""
        if not self.buffer and not self.eof:
            await self.fill()
        if not self.buffer:
            self._short()
        return self.take(n)

    # -- writing -------------------------------------------------------------------------------
    async def send(self, data: bytes, patience: float | None = None) -> None:
        """Queue ``data``; when the peer is behind (a full send buffer), wait for it at most ``patience``."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise self._error or ConnectionResetError("connection closed")
        transport.write(data)
        if self._writing_paused:
            self._drain_waiter = self.loop.create_future()
            await self.wait(self._drain_waiter, patience)

    def close(self) -> None:
        """Close once what was sent has left (the proxy's last answer must still arrive)."""
        if self.transport is not None:
            self.transport.close()

    def reset_on_close(self) -> None:
        """Make ``close`` end the connection with RST once what was sent has left: no TIME_WAIT is kept."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass


async def drive(parser: Parser, source: Stream, write: Callable[[bytes], Awaitable[Any]] | None = None) -> Any:
    """Run an :mod:`.http` parser over ``source``; ``write`` gets the body bytes (None: discarded)."""
    try:
        step = next(parser)
        while True:
            kind, arg = step
            if kind == LINE:
                step = parser.send(await source.readline(arg))
            elif kind == SOME:
                step = parser.send(await source.read_some(arg))
            elif kind == EXACT:
                step = parser.send(await source.read_exact(arg))
            else:
                if write is not None:
                    await write(arg)
                step = parser.send(None)
    except StopIteration as done:
        return done.value
