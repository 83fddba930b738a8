"""inferno-memory benchmark: allocate/deallocate cost versus live blocks, and fragmentation.

CPU (always): cost per allocate+deallocate pair through `PoolMemoryResource` over host memory
as the number of live blocks grows from 1e2 to 1e5, for each bookkeeping core (the C core,
compiled before timing, and the pure-Python reference), with numpy's own allocation of the
same sizes (the peer) measured in the same run. The pool must stay within about 2x from 1e2
to 1e5 live blocks, which is what numpy itself grows from cache misses alone: a linear scan
anywhere would grow ~1000x.

GPU (when CuPy and a CUDA device exist): latency per pair for `CudaMemoryPool` (and which core
it used), CuPy's `MemoryPool` and raw cudaMalloc/cudaFree, and fragmentation under a
KV-cache-like workload.

    uv run python benchmarks/memory_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from inferno_memory import (
    BackendUnavailableError,
    CoreChoice,
    CudaMemoryPool,
    HostMemoryResource,
    PoolMemoryResource,
)

RESULTS = Path(__file__).parent / "results" / "memory.json"
LIVE_COUNTS = (100, 1_000, 10_000, 100_000)
CORES: tuple[CoreChoice, ...] = ("native", "python")


def available_cores() -> tuple[list[CoreChoice], dict[str, str]]:
    """The cores that can run here (building the native one now, outside any timing), and why
    any other cannot."""
    cores: list[CoreChoice] = []
    missing: dict[str, str] = {}
    for core in CORES:
        try:
            PoolMemoryResource(HostMemoryResource(), core=core)
        except BackendUnavailableError as exc:
            missing[core] = str(exc)
        else:
            cores.append(core)
    return cores, missing


def _workload(live: int, pairs: int, seed: int, lo: int, hi: int) -> tuple[Any, Any, Any]:
    """Sizes for the warm-up fill (2 * live), then per pair a size and a victim index."""
    rng = np.random.default_rng(seed)
    fill = rng.integers(lo, hi, size=2 * live).tolist()
    sizes = rng.integers(lo, hi, size=pairs).tolist()
    victims = rng.integers(0, live, size=pairs).tolist()
    return fill, sizes, victims


def _run_pairs(
    alloc: Callable[[int], Any],
    free: Callable[[Any], None],
    fill: list[int],
    sizes: list[int],
    victims: list[int],
    repeats: int,
    probe: Callable[[], int] | None = None,
) -> tuple[float, int]:
    """Best-of-``repeats`` seconds per pair with ``len(fill)//2`` blocks live.

    Filling 2N blocks and freeing every other one leaves N live blocks separated by N holes,
    so the free structure is as large as the live set (the hard case for best fit).
    """
    blocks = [alloc(n) for n in fill]
    live = blocks[1::2]
    for b in blocks[0::2]:
        free(b)
    del blocks
    probed = probe() if probe is not None else 0
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for size, victim in zip(sizes, victims, strict=True):
            new = alloc(size)
            free(live[victim])
            live[victim] = new
        best = min(best, (time.perf_counter() - start) / len(sizes))
    for b in live:
        free(b)
    return best, probed


def cpu_scaling(pairs: int, repeats: int, cores: list[CoreChoice]) -> list[dict[str, Any]]:
    rows = []
    for n in LIVE_COUNTS:
        fill, sizes, victims = _workload(n, pairs, seed=n, lo=16, hi=2048)
        row: dict[str, Any] = {"live_blocks": n}
        gc.collect()
        gc.disable()  # a collection inside a timed loop would be charged to one side
        try:
            for core in cores:
                pool = PoolMemoryResource(
                    HostMemoryResource(), "64MiB", slab_size="64MiB", core=core
                )
                t_pool, free_blocks = _run_pairs(
                    pool.allocate,
                    pool.deallocate,
                    fill,
                    sizes,
                    victims,
                    repeats,
                    probe=functools.partial(getattr, pool, "free_block_count"),
                )
                row[f"{core}_us_per_pair"] = t_pool * 1e6
                # Both cores place every block alike, so they see the same free structure.
                row.setdefault("free_blocks", free_blocks)
                if row["free_blocks"] != free_blocks:
                    raise RuntimeError(f"the {core} core left {free_blocks} free blocks")
                del pool

            def np_alloc(size: int) -> Any:
                return np.empty(size, dtype=np.uint8)

            def np_free(arr: Any) -> None:
                del arr  # the list slot is overwritten, so numpy frees it there

            t_np, _ = _run_pairs(np_alloc, np_free, fill, sizes, victims, repeats)
        finally:
            gc.enable()
        row["numpy_us_per_pair"] = t_np * 1e6
        for core in cores:
            row[f"{core}_over_numpy"] = row[f"{core}_us_per_pair"] / row["numpy_us_per_pair"]
        if "native" in cores and "python" in cores:
            row["python_over_native"] = row["python_us_per_pair"] / row["native_us_per_pair"]
        rows.append(row)
    for core in cores:
        base = rows[0][f"{core}_us_per_pair"]
        for row in rows:
            row[f"{core}_vs_100_live"] = row[f"{core}_us_per_pair"] / base
    return rows


def kv_fragmentation(
    make_pool: Callable[[], Any],
    alloc: Callable[[Any, int], Any],
    free: Callable[[Any, Any], None],
    reserved: Callable[[Any], int],
    steps: int,
    seed: int = 0,
) -> dict[str, Any]:
    """A KV-cache-like churn: requests of random length grow block by block, then finish.

    Each request holds one buffer per 16-token block (per layer-group: 64 KiB), plus a
    prompt-sized buffer allocated up front; requests finish at random. Reports the peak of
    live bytes versus the peak the pool reserved (1 - ratio = fragmentation overhead).
    """
    rng = np.random.default_rng(seed)
    pool = make_pool()
    block_bytes = 64 * 1024
    requests: list[list[Any]] = []
    live_bytes = peak_live = peak_reserved = 0
    for _ in range(steps):
        if len(requests) < 64 and rng.random() < 0.3:
            prompt = int(rng.integers(1, 2048)) * 1024  # an odd-sized prompt scratch buffer
            requests.append([(alloc(pool, prompt), prompt)])
            live_bytes += prompt
        for req in requests:
            if rng.random() < 0.5:
                req.append((alloc(pool, block_bytes), block_bytes))
                live_bytes += block_bytes
        if requests and rng.random() < 0.25:
            done = requests.pop(int(rng.integers(len(requests))))
            for handle, size in done:
                free(pool, handle)
                live_bytes -= size
        peak_live = max(peak_live, live_bytes)
        peak_reserved = max(peak_reserved, reserved(pool))
    for req in requests:
        for handle, _ in req:
            free(pool, handle)
    return {
        "peak_live_bytes": peak_live,
        "peak_reserved_bytes": peak_reserved,
        "overhead": peak_reserved / peak_live - 1.0,
    }


def cpu_fragmentation(steps: int) -> dict[str, Any]:
    # Either core: both place every block alike, so the layouts (and this figure) are equal.
    return kv_fragmentation(
        lambda: PoolMemoryResource(HostMemoryResource(), 0, slab_size="32MiB"),
        lambda p, n: p.allocate(n),
        lambda p, a: p.deallocate(a),
        lambda p: p.reserved_bytes,
        steps,
    )


def gpu_section(pairs: int, repeats: int, steps: int) -> dict[str, Any] | None:
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() == 0:
            return None
    except Exception:
        return None
    runtime = cupy.cuda.runtime
    name = runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    rows = []
    for n in (100, 1_000, 10_000):
        fill, sizes, victims = _workload(n, pairs, seed=n, lo=4096, hi=256 * 1024)
        ours = CudaMemoryPool("1GiB", slab_size="1GiB")
        core = ours.core
        t_ours, _ = _run_pairs(ours.allocate, ours.deallocate, fill, sizes, victims, repeats)
        ours.release()
        mp = cupy.cuda.MemoryPool()
        t_cupy, _ = _run_pairs(mp.malloc, lambda p: None, fill, sizes, victims, repeats)
        mp.free_all_blocks()
        # Raw cudaMalloc/cudaFree (each cudaFree synchronizes): few pairs is enough.
        raw_pairs = max(1, len(sizes) // 20)
        t_raw, _ = _run_pairs(
            runtime.malloc, runtime.free, fill, sizes[:raw_pairs], victims[:raw_pairs], 1
        )
        rows.append(
            {
                "live_blocks": n,
                "inferno_pool_us": t_ours * 1e6,
                "cupy_pool_us": t_cupy * 1e6,
                "cuda_malloc_us": t_raw * 1e6,
            }
        )
    frag_ours = kv_fragmentation(
        lambda: CudaMemoryPool(0, slab_size="64MiB"),
        lambda p, n: p.allocate(n),
        lambda p, a: p.deallocate(a),
        lambda p: p.reserved_bytes,
        steps,
    )
    frag_cupy = kv_fragmentation(
        cupy.cuda.MemoryPool,
        lambda p, n: p.malloc(n),
        lambda p, a: None,
        lambda p: p.total_bytes(),
        steps,
    )
    return {
        "device": name,
        "inferno_pool_core": core,
        "latency": rows,
        "fragmentation": {"inferno_pool": frag_ours, "cupy_pool": frag_cupy},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer pairs, for a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()
    pairs, repeats, steps = (2_000, 1, 300) if args.quick else (20_000, 3, 2_000)

    cores, missing = available_cores()
    for core, reason in missing.items():
        print(f"{core} core: not measured ({reason})")
    scaling = cpu_scaling(pairs, repeats, cores)
    print("CPU: allocate+deallocate pair, N live blocks (16..2047 B, half the pool in holes)")
    # (title, width, row key, format) of each column
    columns = [("live", 8, "live_blocks", "")]
    columns += [(f"{core} us", 10, f"{core}_us_per_pair", ".2f") for core in cores]
    columns += [("numpy us", 9, "numpy_us_per_pair", ".2f")]
    columns += [(f"{core}/numpy", 13, f"{core}_over_numpy", ".2f") for core in cores]
    columns += [(f"{core} vs 1e2", 14, f"{core}_vs_100_live", ".2f") for core in cores]
    columns += [("free blks", 10, "free_blocks", "")]
    print(" ".join(f"{title:>{width}}" for title, width, _, _ in columns))
    for r in scaling:
        print(" ".join(f"{r[key]:>{width}{fmt}}" for _, width, key, fmt in columns))
    frag = cpu_fragmentation(steps)
    print(
        f"CPU KV-like fragmentation: peak live {frag['peak_live_bytes'] / 2**20:.1f} MiB, "
        f"peak reserved {frag['peak_reserved_bytes'] / 2**20:.1f} MiB, "
        f"overhead {frag['overhead'] * 100:.1f}%"
    )

    gpu = gpu_section(pairs // 4, repeats, steps)
    if gpu is None:
        print("GPU: skipped (no CuPy or no CUDA device)")
    else:
        print(
            f"GPU ({gpu['device']}): us per allocate+deallocate pair "
            f"(CudaMemoryPool on the {gpu['inferno_pool_core']} core)"
        )
        print(f"{'live':>8} {'inferno':>9} {'cupy pool':>10} {'cudaMalloc':>11}")
        for r in gpu["latency"]:
            print(
                f"{r['live_blocks']:>8} {r['inferno_pool_us']:>9.2f} {r['cupy_pool_us']:>10.2f} "
                f"{r['cuda_malloc_us']:>11.2f}"
            )
        for name, f in gpu["fragmentation"].items():
            print(f"GPU KV-like fragmentation {name}: overhead {f['overhead'] * 100:.1f}%")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {
                    "python": platform.python_version(),
                    "processor": platform.processor(),
                    "machine": platform.machine(),
                },
                "settings": {"pairs": pairs, "repeats": repeats, "kv_steps": steps},
                "cores": cores,
                "cores_missing": missing,
                "cpu_scaling": scaling,
                "cpu_kv_fragmentation": frag,
                "gpu": gpu,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
