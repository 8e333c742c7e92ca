"""L4 ports: parsing ``port``/``endPort``/``protocol`` and turning ranges into prefix blocks.

The policy map matches ports with a prefix length (like an LPM key), so a
range ``port..endPort`` is stored as the fewest aligned power-of-two blocks
that cover it exactly.

Example::

    >>> port_blocks(80, 80)
    [(80, 16)]
    >>> port_blocks(8080, 8087)
    [(8080, 13)]
    >>> port_blocks(0, 65535)
    [(0, 0)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workbench.datapath.abi import POLICY_PROTOCOL_NAMES
from workbench.errors import ValidationError
from workbench.lab.model import PORT_NAME
from workbench.policy.fields import DocRef, Fields

PORT_BITS = 16
MAX_PORT = (1 << PORT_BITS) - 1


@dataclass(frozen=True)
class PortRange:
    """Destination ports ``first..last`` of one protocol (6 TCP, 17 UDP); 0..65535 is any port.

    ``name`` set: a named port ("http"), resolved per pod from its containerPort
    names by the compiler; ``first``/``last`` are then unused (0).
    """

    protocol: int
    first: int = 0
    last: int = MAX_PORT
    name: str = ""

    def blocks(self) -> list[tuple[int, int]]:
        """The prefix blocks of a numeric range (a named port has none of its own)."""
        return [] if self.name else port_blocks(self.first, self.last)

    def __str__(self) -> str:
        proto = POLICY_PROTOCOL_NAMES.get(self.protocol, str(self.protocol))
        if self.name:
            return f"{self.name}/{proto}"
        if (self.first, self.last) == (0, MAX_PORT):
            return f"{proto}/any"
        if self.first == self.last:
            return f"{self.first}/{proto}"
        return f"{self.first}-{self.last}/{proto}"


def port_blocks(first: int, last: int) -> list[tuple[int, int]]:
    """The minimal list of (port, prefix_len) blocks covering exactly ``first..last``.

    Greedy from the low end: the largest block that starts at ``first`` (aligned)
    and does not pass ``last`` is always part of an optimal cover.
    """
    if not 0 <= first <= last <= MAX_PORT:
        raise ValidationError(f"port range {first}-{last} is not within 0-65535 with start <= end")
    blocks: list[tuple[int, int]] = []
    port = first
    while port <= last:
        size = port & -port if port else 1 << PORT_BITS
        while port + size - 1 > last:
            size >>= 1
        blocks.append((port, PORT_BITS - size.bit_length() + 1))
        port += size
    return blocks


def block_range(port: int, prefix: int) -> tuple[int, int]:
    """(port, prefix_len) -> (first, last) ports it covers. ``block_range(8080, 14) == (8080, 8083)``."""
    size = 1 << (PORT_BITS - prefix)
    first = port & ~(size - 1) & MAX_PORT   # the block's start, also for an unaligned port
    return first, first + size - 1


def parse_port_number(doc: DocRef, path: str, value: Any, *, allow_zero: bool,
                      allow_name: bool = False) -> int | str:
    """A port given as an integer or a decimal string, or (``allow_name``) a port name like "http"."""
    if isinstance(value, bool):
        raise doc.error(path, f"must be a port number, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit():
            if not allow_name:
                raise doc.error(path, f"must be a port number, got {value!r}")
            if not PORT_NAME.match(value):
                raise doc.error(path, f"{value!r} is neither a port number nor a valid port name (at most 15 "
                                      "lowercase letters, digits and '-', with a letter)")
            return value
        value = int(text)
    if not isinstance(value, int):
        raise doc.error(path, f"must be a port number, got {value!r}")
    low = 0 if allow_zero else 1
    if not low <= value <= MAX_PORT:
        raise doc.error(path, f"port {value} is out of range {low}-{MAX_PORT}")
    return value


def parse_port(doc: DocRef, path: str, value: Any, *, protocols: dict[str, tuple[int, ...]],
               default_protocol: str, zero_means_any: bool) -> list[PortRange]:
    """One ``{port, endPort, protocol}`` item -> port ranges (ANY gives one per protocol)."""
    fields = Fields(doc, path, value, allowed={"port", "endPort", "protocol"})
    protocol = fields.string("protocol", default=default_protocol)
    if protocol not in protocols:
        raise doc.error(fields.at("protocol"), f"unsupported protocol {protocol!r} "
                        f"(use one of {', '.join(protocols)})")
    first, last = 0, MAX_PORT
    if fields.has("port"):
        port = parse_port_number(doc, fields.at("port"), fields.value["port"], allow_zero=zero_means_any,
                                 allow_name=True)
        if isinstance(port, str):
            if fields.has("endPort"):
                raise doc.error(fields.at("endPort"), f"endPort needs a numeric port, not the named port {port!r}")
            return [PortRange(number, 0, 0, name=port) for number in protocols[protocol]]
        if port:
            first = last = port
    if fields.has("endPort"):
        end = parse_port_number(doc, fields.at("endPort"), fields.value["endPort"], allow_zero=False)
        assert isinstance(end, int)
        if not fields.has("port") or first == 0:
            raise doc.error(fields.at("endPort"), "endPort needs a non-zero port")
        if end < first:
            raise doc.error(fields.at("endPort"), f"endPort {end} is below port {first}")
        last = end
    return [PortRange(number, first, last) for number in protocols[protocol]]
