"""Drain a BPF ring buffer map in bulk: mmap it and view the records as one numpy array.

BCC's ``open_ring_buffer`` calls back into Python once per record. This reader
does what libbpf's consumer loop does, but per batch: it maps the ring
(consumer page read-write, producer page and the twice-mapped data area
read-only), takes everything between the consumer and producer positions,
views it with ``np.frombuffer`` as (8-byte header + ``struct flow_event``)
records, stops at the first record still being written, skips discarded ones,
and advances the consumer position once. No Python runs per event.

Records of another size (not expected: the datapath emits only flow events)
are walked one by one so nothing is misread.

Example::

    >>> reader = RingReader(datapath.bpf[b"events"].map_fd)   # doctest: +SKIP
    >>> reader.wait(0.1); store.ingest(reader.drain())         # doctest: +SKIP
"""

from __future__ import annotations

import mmap
import select
import struct
from pathlib import Path

import numpy as np

from workbench.observe import events as ev

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER = 8


def _max_entries(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("max_entries:"):
            return int(line.split()[1])
    raise ValueError(f"fd {fd} is not a BPF map")


def framed_dtype(event: np.dtype) -> np.dtype:
    """The event dtype behind its ring-buffer header, padded to the ring's 8-byte alignment."""
    names = list(event.names or ())
    fields: dict[str, tuple[np.dtype, int]] = dict(event.fields or {})  # type: ignore[arg-type]
    stride = (HEADER + event.itemsize + 7) // 8 * 8
    return np.dtype({"names": ["hdr_len", "hdr_pg", *names],
                     "formats": ["<u4", "<u4", *[fields[n][0] for n in names]],
                     "offsets": [0, 4, *[HEADER + fields[n][1] for n in names]],
                     "itemsize": stride})


class RingReader:
    """Bulk consumer of one BPF_MAP_TYPE_RINGBUF map (by fd)."""

    def __init__(self, map_fd: int, event_dtype: np.dtype | None = None) -> None:
        self.fd = map_fd
        self.event_dtype = event_dtype or ev.EVENT_DTYPE
        self.framed = framed_dtype(self.event_dtype)
        self.size = _max_entries(map_fd)
        self.mask = self.size - 1
        page = mmap.PAGESIZE
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._data = mmap.mmap(map_fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._page = page
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)
        self.misread = 0   # records whose size was not a flow event (walked, skipped)

    def _positions(self) -> tuple[int, int]:
        consumer = struct.unpack_from("<Q", self._consumer, 0)[0]
        producer = struct.unpack_from("<Q", self._data, 0)[0]
        return consumer, producer

    def wait(self, timeout: float) -> bool:
        """Block until the kernel signals new records or ``timeout`` seconds pass."""
        return bool(self._epoll.poll(timeout))

    def pending_bytes(self) -> int:
        consumer, producer = self._positions()
        return producer - consumer

    def drain(self) -> np.ndarray:
        """All committed records as a structured array of ``event_dtype`` (a copy); frees their space."""
        consumer, producer = self._positions()
        if producer <= consumer:
            return np.zeros(0, self.event_dtype)
        length = producer - consumer
        start = self._page + (consumer & self.mask)
        stride = self.framed.itemsize
        whole = length - length % stride
        window = np.frombuffer(self._data, dtype=self.framed, count=whole // stride, offset=start)
        lengths = window["hdr_len"]
        busy = np.flatnonzero(lengths & BUSY_BIT)
        usable = int(busy[0]) if len(busy) else len(window)
        sizes = lengths[:usable] & ~np.uint32(BUSY_BIT | DISCARD_BIT)
        if whole != length or np.any(sizes != self.event_dtype.itemsize):
            del window, lengths, sizes
            return self._walk(consumer, producer)
        keep = (lengths[:usable] & DISCARD_BIT) == 0
        events = np.empty(int(keep.sum()), self.event_dtype)
        for name in self.event_dtype.names or ():
            events[name] = window[name][:usable][keep]
        del window, lengths
        self._advance(consumer + usable * stride)
        return events

    def _walk(self, consumer: int, producer: int) -> np.ndarray:
        """Record-by-record fallback for unexpected record sizes (rare by construction)."""
        out = []
        pos = consumer
        while pos < producer:
            off = self._page + (pos & self.mask)
            (raw_len,) = struct.unpack_from("<I", self._data, off)
            if raw_len & BUSY_BIT:
                break
            size = raw_len & ~(BUSY_BIT | DISCARD_BIT)
            if not raw_len & DISCARD_BIT:
                if size == self.event_dtype.itemsize:
                    out.append(bytes(self._data[off + HEADER:off + HEADER + size]))
                else:
                    self.misread += 1
            pos += (size + HEADER + 7) // 8 * 8
        self._advance(pos)
        return np.frombuffer(b"".join(out), dtype=self.event_dtype).copy()

    def _advance(self, position: int) -> None:
        # An aligned 8-byte store: the kernel reads it as the new consumer position.
        struct.pack_into("<Q", self._consumer, 0, position)

    def close(self) -> None:
        """Unmap (idempotent). The map itself belongs to its BPF object."""
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None  # type: ignore[assignment]
            self._consumer.close()
            self._data.close()

    def __enter__(self) -> RingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
