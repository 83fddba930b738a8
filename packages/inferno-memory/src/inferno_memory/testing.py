"""Checks for tests of code that uses a pool (this package's own tests use them too).

Each raises `AssertionError` with a message naming the broken invariant.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from inferno_memory.allocation import Allocation
from inferno_memory.pool import BlockInfo, PoolMemoryResource

__all__ = ["check_disjoint", "check_pool_layout"]


def check_pool_layout(pool: PoolMemoryResource, live: Iterable[Allocation]) -> None:
    """Blocks tile each slab, no two free blocks touch, and the used blocks are ``live``."""
    blocks = pool.blocks()
    by_slab: dict[int, list[BlockInfo]] = {}
    for block in blocks:
        by_slab.setdefault(block.slab, []).append(block)
    tiled = sum(b.size for b in blocks)
    if tiled != pool.reserved_bytes:
        raise AssertionError(f"blocks cover {tiled} bytes, the pool reserves {pool.reserved_bytes}")
    for slab, group in by_slab.items():
        if group[0].addr != slab:
            raise AssertionError(f"slab {slab:#x} starts with a block at {group[0].addr:#x}")
        for left, right in itertools.pairwise(group):
            if left.addr + left.size != right.addr:
                raise AssertionError(f"gap or overlap between {left} and {right}")
            if left.free and right.free:
                raise AssertionError(f"free neighbours {left} and {right} were not coalesced")
    for block in blocks:
        if block.addr % 256 or block.size % 256:
            raise AssertionError(f"{block} is not 256-byte aligned")
    used = {b.addr for b in blocks if not b.free}
    expected = {a.ptr for a in live}
    if used != expected:
        raise AssertionError(
            f"used blocks {sorted(used - expected)} are not live, "
            f"live allocations {sorted(expected - used)} are not used blocks"
        )


def check_disjoint(live: Iterable[Allocation]) -> None:
    """No two allocations share a byte (a zero-size allocation counts as one byte)."""
    spans = sorted((a.ptr, a.ptr + max(a.size, 1)) for a in live)
    for (start, end), (next_start, _) in itertools.pairwise(spans):
        if end > next_start:
            raise AssertionError(f"[{start:#x}, {end:#x}) overlaps a block at {next_start:#x}")
