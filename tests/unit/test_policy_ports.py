"""Port ranges -> minimal prefix blocks (the policy map matches ports by prefix)."""

from __future__ import annotations

import random

import pytest

from workbench.policy.ports import MAX_PORT, block_range, port_blocks


@pytest.mark.parametrize(("first", "last", "expected"), [
    (80, 80, [(80, 16)]),
    (0, MAX_PORT, [(0, 0)]),
    (8080, 8087, [(8080, 13)]),
    (8080, 8088, [(8080, 13), (8088, 16)]),
    (8079, 8087, [(8079, 16), (8080, 13)]),
    (1, MAX_PORT, [(1, 16), (2, 15), (4, 14), (8, 13), (16, 12), (32, 11), (64, 10), (128, 9), (256, 8),
                   (512, 7), (1024, 6), (2048, 5), (4096, 4), (8192, 3), (16384, 2), (32768, 1)]),
    (1024, 2047, [(1024, 6)]),
    (65535, 65535, [(65535, 16)]),
    (32768, MAX_PORT, [(32768, 1)]),
    (5, 10, [(5, 16), (6, 15), (8, 15), (10, 16)]),
])
def test_port_blocks_table(first: int, last: int, expected: list[tuple[int, int]]) -> None:
    assert port_blocks(first, last) == expected


def _covered(blocks: list[tuple[int, int]]) -> list[int]:
    ports: list[int] = []
    for port, prefix in blocks:
        lo, hi = block_range(port, prefix)
        assert lo % (hi - lo + 1) == 0, f"block {port}/{prefix} is not aligned"
        ports.extend(range(lo, hi + 1))
    return ports


def _optimal_count(first: int, last: int) -> int:
    """Reference by dynamic programming over all aligned blocks (small ranges only)."""
    best = {last + 1: 0}
    for start in range(last, first - 1, -1):
        options = []
        size = 1
        while size <= 1 << 16:
            if start % size == 0 and start + size - 1 <= last:
                options.append(1 + best[start + size])
            size <<= 1
        best[start] = min(options)
    return best[first]


def test_port_blocks_cover_exactly_and_minimally() -> None:
    rng = random.Random(4)
    cases = [(rng.randrange(0, 2000), rng.randrange(0, 300)) for _ in range(300)]
    cases += [(rng.randrange(0, MAX_PORT - 5000), rng.randrange(0, 5000)) for _ in range(30)]
    for first, width in cases:
        last = min(first + width, MAX_PORT)
        blocks = port_blocks(first, last)
        assert _covered(blocks) == list(range(first, last + 1)), (first, last)
        assert len(blocks) == _optimal_count(first, last), (first, last)


def test_port_blocks_refuses_bad_ranges() -> None:
    with pytest.raises(ValueError):
        port_blocks(10, 9)
    with pytest.raises(ValueError):
        port_blocks(0, MAX_PORT + 1)
