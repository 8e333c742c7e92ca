"""One asyncio event loop in a thread of its own that lives inside the lab's node netns.

The agent's proxies (HTTP in agent/l7/, DNS in agent/dns/) each serve every connection from one
such loop. The thread enters the netns with setns(2) before anything else, so every socket it opens
(listeners, upstream connections) belongs to the lab, never to the machine's own netns; it checks
that it arrived before it binds anything. ``start`` returns once ``bind`` has run in that thread
(or raises its error as one line), ``stop`` ends ``main`` and waits for the thread.

Example::

    loop = NetnsLoop("wb-demo-node", "dns-proxy")
    loop.start(bind=open_sockets, main=serve)      # serve() awaits loop.stopped
    ...
    loop.stop()
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from workbench.errors import WorkbenchError

CLONE_NEWNET = 0x40000000
START_TIMEOUT = 10.0


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def enter_netns_for_good(name: str) -> None:
    """setns(2) for the calling thread only; threads it starts later are born in that netns too."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns({name}): {os.strerror(code)}")
    finally:
        os.close(fd)


class NetnsLoop:
    """See the module docstring. ``stopped`` is the future ``main`` awaits; ``inode`` the netns' inode."""

    def __init__(self, netns: str, name: str) -> None:
        self.netns = netns
        self.name = name
        self.inode = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopped: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None

    def start(self, bind: Callable[[], None], main: Callable[[], Coroutine[Any, Any, None]], what: str) -> None:
        """Run ``bind`` then ``main()`` in the loop's thread inside the netns; ``what`` names it in errors."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                enter_netns_for_good(self.netns)
                self.inode = netns_inode("/proc/thread-self/ns/net")
                if self.inode != netns_inode(f"/run/netns/{self.netns}"):
                    raise WorkbenchError(f"the {self.name} thread is not in {self.netns}")
                bind()
                loop = asyncio.new_event_loop()
                self.loop, self.stopped = loop, loop.create_future()
            except BaseException as err:
                failure.append(err)
                ready.set()
                return
            ready.set()
            try:
                loop.run_until_complete(main())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        ready.wait(START_TIMEOUT)
        if failure:
            raise WorkbenchError(f"{what}: {failure[0]}")

    @property
    def running(self) -> bool:
        return self.stopped is not None and not self.stopped.done()

    def in_netns(self) -> bool:
        """True in the loop's own thread (and the threads it started): the sockets it opens are the lab's."""
        return netns_inode("/proc/thread-self/ns/net") == self.inode

    def stop(self) -> None:
        """End ``main`` (it returns from awaiting ``stopped``) and wait for the thread."""
        loop, stopped = self.loop, self.stopped
        if loop is not None and stopped is not None:

            def stop_serving() -> None:
                if not stopped.done():
                    stopped.set_result(None)

            try:
                loop.call_soon_threadsafe(stop_serving)
            except RuntimeError:
                pass   # the loop has already ended
        if self._thread is not None:
            self._thread.join(timeout=3)
