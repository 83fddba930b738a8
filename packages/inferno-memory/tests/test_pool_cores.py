"""The two pool cores: same behaviour step by step, the native build and its fallbacks."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import shlex
import subprocess
import sys
import sysconfig
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from inferno_memory import (
    Allocation,
    BackendUnavailableError,
    DoubleFreeError,
    ForeignAllocationError,
    HostMemoryResource,
    InfernoMemoryError,
    LimitingAdaptor,
    MemoryConfigError,
    MemoryResource,
    OutOfMemoryError,
    PoolMemoryResource,
)
from inferno_memory import pool as pool_module
from inferno_memory._native import build, load_native_core
from inferno_memory.allocation import CPU, make_allocation, new_owner_token, next_serial
from inferno_memory.pool import CoreChoice
from inferno_memory.sizes import align_up
from inferno_memory.testing import check_pool_layout


class AddressSpace:
    """An upstream of addresses with no memory behind them, deterministic so that two of them
    fed the same calls hand out the same addresses. Fresh ranges are contiguous, so slabs
    often touch (which must never merge them); a freed range is reused for the same size."""

    def __init__(self) -> None:
        self._token = new_owner_token()
        self._next = 1 << 32
        self._freed: dict[int, list[int]] = {}  # size -> addresses
        self._live: dict[int, Allocation] = {}

    def allocate(self, nbytes: int) -> Allocation:
        size = max(align_up(nbytes), 256)
        reuse = self._freed.get(size)
        if reuse:
            ptr = reuse.pop()
        else:
            ptr, self._next = self._next, self._next + size
        allocation = Allocation(ptr, nbytes, CPU, self._token, next_serial())
        self._live[ptr] = allocation
        return allocation

    def deallocate(self, allocation: Allocation) -> None:
        del self._live[allocation.ptr]
        self._freed.setdefault(max(align_up(allocation.size), 256), []).append(allocation.ptr)


def _state(pool: PoolMemoryResource) -> tuple[object, ...]:
    return (
        pool.blocks(),
        pool.stats(),
        pool.free_block_count,
        pool.largest_free_block,
        pool.used_bytes,
        pool.reserved_bytes,
        pool.slab_count,
    )


def _check(pool: PoolMemoryResource) -> None:
    if pool.core == "native":
        pool._core.check()  # type: ignore[attr-defined]


# ("alloc", size), ("free", index into the live list), ("refree", index into the freed list:
# a double free), ("release", 0).
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(min_value=0, max_value=6000)),
        st.tuples(st.just("alloc"), st.sampled_from([256, 512, 1024, 4096, 16384])),
        st.tuples(st.just("free"), st.integers(min_value=0, max_value=10_000)),
        st.tuples(st.just("refree"), st.integers(min_value=0, max_value=10_000)),
        st.tuples(st.just("release"), st.just(0)),
    ),
    max_size=150,
)


def _twin_pools(
    initial: int, slab: int, maximum: int | None, upstream_limit: int | None
) -> list[PoolMemoryResource]:
    """A Python-core and a native-core pool over identical fake address spaces."""
    pools = []
    for core in ("python", "native"):
        upstream: MemoryResource = AddressSpace()
        if upstream_limit is not None:
            upstream = LimitingAdaptor(upstream, upstream_limit)
        pools.append(PoolMemoryResource(upstream, initial, maximum, slab_size=slab, core=core))
    return pools


def _apply(
    pool: PoolMemoryResource,
    op: str,
    arg: int,
    live: list[Allocation],
    freed: list[Allocation],
) -> tuple[object, ...]:
    """Run one op; the outcome in a form that must not depend on the core."""
    try:
        if op == "alloc":
            a = pool.allocate(arg)
            live.append(a)
            return ("ok", a.ptr, a.size, a.device)
        if op == "free" and live:
            a = live.pop(arg % len(live))
            pool.deallocate(a)
            freed.append(a)
            return ("ok",)
        if op == "refree" and freed:
            pool.deallocate(freed[arg % len(freed)])
            return ("ok",)
        if op == "release":
            return ("ok", pool.release())
        return ("noop",)
    except OutOfMemoryError as exc:
        return ("oom", str(exc), exc.requested, exc.stats)
    except InfernoMemoryError as exc:
        # The message names the allocation, whose owner token and serial differ by pool.
        return ("error", type(exc))


@settings(max_examples=300, deadline=None)
@given(
    ops=_ops,
    initial=st.sampled_from([0, 2048, 8192]),
    slab=st.sampled_from([256, 1024, 4096, 16384]),
    maximum=st.sampled_from([None, 32768, 100_000]),
    upstream_limit=st.sampled_from([None, 24576]),
)
def test_both_cores_agree_at_every_step(
    native: None,
    ops: list[tuple[str, int]],
    initial: int,
    slab: int,
    maximum: int | None,
    upstream_limit: int | None,
) -> None:
    pools = _twin_pools(initial, slab, maximum, upstream_limit)
    lives: list[list[Allocation]] = [[], []]
    freeds: list[list[Allocation]] = [[], []]
    assert _state(pools[0]) == _state(pools[1])
    for op, arg in ops:
        outcomes = [
            _apply(pool, op, arg, live, freed)
            for pool, live, freed in zip(pools, lives, freeds, strict=True)
        ]
        assert outcomes[0] == outcomes[1], (op, arg)
        assert _state(pools[0]) == _state(pools[1]), (op, arg)
        _check(pools[1])
    for pool, live in zip(pools, lives, strict=True):
        check_pool_layout(pool, live)
        for a in live:
            pool.deallocate(a)
        pool.release()
    assert _state(pools[0]) == _state(pools[1])
    assert pools[1].reserved_bytes == 0


@pytest.mark.parametrize(
    ("seed", "initial", "slab", "maximum", "upstream_limit"),
    [
        (1, 0, 4096, None, None),
        (2, 65536, 16384, None, 200_000),
        (3, 8192, 256, 400_000, None),
        (4, 0, 1 << 20, None, None),
    ],
)
def test_both_cores_agree_over_a_long_random_run(
    native: None,
    seed: int,
    initial: int,
    slab: int,
    maximum: int | None,
    upstream_limit: int | None,
) -> None:
    # Longer and busier than hypothesis' examples: hundreds of live blocks, many slabs.
    rng = np.random.default_rng(seed)
    pools = _twin_pools(initial, slab, maximum, upstream_limit)
    lives: list[list[Allocation]] = [[], []]
    freeds: list[list[Allocation]] = [[], []]
    for step in range(4000):
        r = rng.random()
        if r < 0.5:
            op, arg = "alloc", int(rng.choice([rng.integers(0, 3000), rng.integers(0, 40_000)]))
        elif r < 0.95:
            op, arg = "free", int(rng.integers(1 << 30))
        elif r < 0.98:
            op, arg = "refree", int(rng.integers(1 << 30))
        else:
            op, arg = "release", 0
        outcomes = [
            _apply(pool, op, arg, live, freed)
            for pool, live, freed in zip(pools, lives, freeds, strict=True)
        ]
        assert outcomes[0] == outcomes[1], (step, op, arg)
        if step % 7 == 0 or op == "release":
            assert _state(pools[0]) == _state(pools[1]), (step, op, arg)
            _check(pools[1])
    assert _state(pools[0]) == _state(pools[1])
    check_pool_layout(pools[1], lives[1])


def test_both_cores_agree_with_tens_of_thousands_of_blocks(native: None) -> None:
    # Deep trees: splits on the way up, then empty nodes leaving as everything is freed.
    rng = np.random.default_rng(7)
    pools = [
        PoolMemoryResource(AddressSpace(), "8MiB", slab_size="2MiB", core=core)
        for core in ("python", "native")
    ]
    sizes = rng.integers(0, 2048, size=30_000).tolist()
    lives = [[pool.allocate(n) for n in sizes] for pool in pools]
    assert [a.ptr for a in lives[0]] == [a.ptr for a in lives[1]]
    for pool, live in zip(pools, lives, strict=True):
        for a in live[::2]:
            pool.deallocate(a)
        del live[::2]
    assert _state(pools[0]) == _state(pools[1])
    _check(pools[1])
    for _ in range(20_000):
        victim = int(rng.integers(len(lives[0])))
        size = int(rng.integers(0, 4096))
        got = []
        for pool, live in zip(pools, lives, strict=True):
            pool.deallocate(live[victim])
            live[victim] = pool.allocate(size)
            got.append(live[victim].ptr)
        assert got[0] == got[1]
    assert _state(pools[0]) == _state(pools[1])
    _check(pools[1])
    order = rng.permutation(len(lives[0])).tolist()
    for i, index in enumerate(order):
        for pool, live in zip(pools, lives, strict=True):
            pool.deallocate(live[index])
        if i % 5000 == 0:
            assert _state(pools[0]) == _state(pools[1])
            _check(pools[1])
    assert _state(pools[0]) == _state(pools[1])
    _check(pools[1])
    assert pools[1].free_block_count == pools[1].slab_count
    reserved = pools[0].reserved_bytes
    assert reserved > 8 << 20
    assert pools[1].release() == pools[0].release() == reserved


def test_a_narrow_tree_agrees_too(
    native: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Four entries per tree node: splits, emptied nodes and height changes at every level
    # with only hundreds of blocks.
    cc = build._compiler()
    assert cc is not None
    monkeypatch.setenv("CC", shlex.join([*cc, "-DFAN=4"]))
    monkeypatch.setenv("INFERNO_CACHE_DIR", str(tmp_path))
    assert load_native_core().module is not None
    rng = np.random.default_rng(11)
    pools = [
        PoolMemoryResource(AddressSpace(), "1MiB", slab_size="256KiB", core=core)
        for core in ("python", "native")
    ]
    lives: list[list[Allocation]] = [[], []]
    for step in range(6000):
        grow = len(lives[0]) < 50 or (rng.random() < 0.5 and len(lives[0]) < 1500)
        if step > 4000:
            grow = not lives[0]
        index = int(rng.integers(1 << 30))
        size = int(rng.integers(0, 3000))
        got = []
        for pool, live in zip(pools, lives, strict=True):
            if grow:
                live.append(pool.allocate(size))
                got.append(live[-1].ptr)
            else:
                pool.deallocate(live.pop(index % len(live)))
        assert got[:1] == got[1:]
        if step % 50 == 0:
            assert _state(pools[0]) == _state(pools[1])
            _check(pools[1])
    assert _state(pools[0]) == _state(pools[1])
    _check(pools[1])


def test_core_property_and_choice_are_validated(core: CoreChoice) -> None:
    pool = PoolMemoryResource(HostMemoryResource(), core=core)
    assert pool.core == core
    assert f"core={core!r}" in repr(pool)
    with pytest.raises(MemoryConfigError, match="core"):
        PoolMemoryResource(HostMemoryResource(), core="fast")  # type: ignore[arg-type]


def test_allocations_are_plain_allocation_values(core: CoreChoice) -> None:
    pool = PoolMemoryResource(HostMemoryResource(), "4KiB", core=core)
    a = pool.allocate(100)
    same = Allocation(a.ptr, a.size, a.device, a.owner, a.serial)
    assert type(a) is Allocation
    assert a == same
    assert hash(a) == hash(same)
    assert repr(a) == repr(same)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.size = 5  # type: ignore[misc]
    assert make_allocation(1, 2, CPU, 3, 4) == Allocation(1, 2, CPU, 3, 4)
    pool.deallocate(a)


def test_odd_things_handed_back_fail_the_same_way(core: CoreChoice) -> None:
    pool = PoolMemoryResource(HostMemoryResource(), "4KiB", core=core)
    a = pool.allocate(100)
    with pytest.raises(AttributeError):
        pool.deallocate(object())  # type: ignore[arg-type]
    for stale in (
        dataclasses.replace(a, ptr=-256),
        dataclasses.replace(a, ptr=1 << 70),
        dataclasses.replace(a, serial=-1),
        dataclasses.replace(a, ptr=a.ptr + 256),
    ):
        with pytest.raises(DoubleFreeError, match="already freed"):
            pool.deallocate(stale)
    with pytest.raises(ForeignAllocationError, match="not made by this pool"):
        pool.deallocate(dataclasses.replace(a, owner=-1))
    pool.deallocate(a)
    check_pool_layout(pool, [])


def test_a_request_beyond_any_block_is_out_of_memory(core: CoreChoice) -> None:
    pool = PoolMemoryResource(HostMemoryResource(), "4KiB", "1MiB", core=core)
    with pytest.raises(OutOfMemoryError, match="maximum_size") as info:
        pool.allocate(1 << 70)
    assert info.value.requested == 1 << 70
    assert pool.largest_free_block == 4096


def test_the_env_switch_selects_the_python_core(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pool_module, "_noted", set())
    monkeypatch.setenv("INFERNO_MEMORY_NATIVE", "0")
    with caplog.at_level(logging.INFO, logger="inferno_memory"):
        assert PoolMemoryResource(HostMemoryResource()).core == "python"
        assert PoolMemoryResource(HostMemoryResource()).core == "python"
    notes = [r.getMessage() for r in caplog.records if "pure-Python core" in r.getMessage()]
    assert notes == ["PoolMemoryResource uses the pure-Python core: INFERNO_MEMORY_NATIVE=0"]
    assert PoolMemoryResource(HostMemoryResource(), core="python").core == "python"


@pytest.mark.skipif(not Path("/bin/false").exists(), reason="needs /bin/false")
def test_a_broken_compiler_falls_back_in_auto_and_raises_in_native(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pool_module, "_noted", set())
    monkeypatch.delenv("INFERNO_MEMORY_NATIVE", raising=False)
    monkeypatch.setenv("CC", "/bin/false")
    monkeypatch.setenv("INFERNO_CACHE_DIR", str(tmp_path))
    with caplog.at_level(logging.INFO, logger="inferno_memory"):
        pool = PoolMemoryResource(HostMemoryResource(), "4KiB")
        PoolMemoryResource(HostMemoryResource())
    assert pool.core == "python"
    notes = [r.getMessage() for r in caplog.records if "pure-Python core" in r.getMessage()]
    assert len(notes) == 1
    assert "/bin/false" in notes[0]
    with pytest.raises(BackendUnavailableError, match=r"/bin/false.*core='auto'"):
        PoolMemoryResource(HostMemoryResource(), core="native")
    a = pool.allocate(100)
    pool.deallocate(a)
    assert [p.name for p in (tmp_path / "memory").iterdir()] == []  # no half-built leftovers


def test_no_compiler_or_no_headers_is_a_reason_not_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("INFERNO_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    missing = load_native_core()
    assert missing.module is None
    assert "no-such-cc" in missing.reason

    paths = dict(sysconfig.get_paths(), include=str(tmp_path))
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: paths)
    monkeypatch.setenv("INFERNO_CACHE_DIR", str(tmp_path / "b"))
    monkeypatch.delenv("CC")
    headless = load_native_core()
    assert headless.module is None
    assert "Python.h" in headless.reason


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERNO_CACHE_DIR", "/x/cache")
    assert build.cache_dir() == Path("/x/cache/memory")
    monkeypatch.delenv("INFERNO_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", "/x/xdg")
    assert build.cache_dir() == Path("/x/xdg/inferno/memory")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert build.cache_dir() == Path.home() / ".cache" / "inferno" / "memory"


def test_the_build_happens_once_and_is_reused_by_other_processes(
    native: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("INFERNO_CACHE_DIR", str(tmp_path))
    results = []
    barrier = threading.Barrier(4)

    def load() -> None:
        barrier.wait()
        results.append(load_native_core())

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in results}) == 1
    built = results[0]
    assert built.module is not None
    assert built.path is not None
    assert built.path.parent == tmp_path / "memory"
    assert [p.name for p in built.path.parent.iterdir()] == [built.path.name]
    stamp = built.path.stat().st_mtime_ns
    script = "from inferno_memory._native import load_native_core; print(load_native_core().path)"
    env = dict(os.environ, INFERNO_CACHE_DIR=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == str(built.path)
    assert built.path.stat().st_mtime_ns == stamp


def test_native_core_scales_and_frees_its_memory(native: None) -> None:
    tracemalloc.start()
    try:
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(3):
            upstream = AddressSpace()
            pool = PoolMemoryResource(upstream, "16MiB", slab_size="1MiB", core="native")
            blocks = [pool.allocate(n) for n in range(20_000)]
            for a in blocks[::2]:
                pool.deallocate(a)
            pool._core.check()  # type: ignore[attr-defined]
            assert pool.free_block_count > 9_000
            del blocks, pool, upstream
            gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Each round held ~30,000 block nodes, tree nodes and a table of 64Ki slots (>2 MiB).
    assert after - before < 256 * 1024
