"""Matmul benchmark: the C kernels' projections against torch's, and against an earlier build.

Times one pass over the four projections of every layer of a model shaped like the default
one (SmolLM2-135M: fused QKV 960 x 576, O 576 x 576, fused gate/up 3072 x 576, down
576 x 1536, 30 layers, random weights, so the pass streams them from memory as a real step
does) for M input rows, in fp32 and bf16: best of ``--reps`` passes per side, the sides taking
turns (this machine's speed moves from minute to minute, so only interleaved runs compare).
``--baseline REV`` adds ``decode.c`` as it was at git revision REV, compiled with the same
flags. Prints GFLOP/s and writes JSON. ``$INFERNO_NATIVE_CFLAGS`` picks another kernel build
(for example ``-mno-avx512f`` for the AVX2 kernels on an AVX-512 machine); torch is unaffected.

    uv run python benchmarks/matmul_bench.py [--rows 1,4,16,370] [--baseline 9b9829c]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from inferno_inference.native import build, load_native, pack_weight

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # (out, in) per projection
LAYERS = 30
SOURCE = "packages/inferno-inference/src/inferno_inference/native/decode.c"
_W_TYPES = {torch.float32: 0, torch.bfloat16: 1}

Matmul = Callable[[tuple[torch.Tensor, torch.Tensor | None], torch.Tensor, int], None]


def c_matmul(lib: ctypes.CDLL, threads: int) -> Matmul:
    """``inferno_matmul`` of ``lib`` (its signature is the same in every revision so far)."""
    fn = lib.inferno_matmul
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    fn.restype = None
    fn.argtypes = [p, ctypes.c_int32, p, p, i64, i64, i64, p, ctypes.c_int32]

    def run(weight: tuple[torch.Tensor, torch.Tensor | None], x: torch.Tensor, n: int) -> None:
        packed, _ = weight
        y = torch.empty(x.shape[0], n)
        fn(
            packed.data_ptr(),
            _W_TYPES[packed.dtype],
            None,
            x.data_ptr(),
            x.shape[0],
            n,
            x.shape[1],
            y.data_ptr(),
            threads,
        )

    return run


def baseline_library(rev: str, workdir: Path) -> ctypes.CDLL:
    """``decode.c`` at ``rev``, built as the current one is."""
    source = workdir / "decode_baseline.c"
    source.write_text(
        subprocess.run(
            ["git", "show", f"{rev}:{SOURCE}"], check=True, capture_output=True, text=True
        ).stdout
    )
    cc = build._compiler()
    if cc is None:
        raise SystemExit("no C compiler")
    out = workdir / "decode_baseline.so"
    error = build._compile(cc, source, out, build._FLAGS + build._OPENMP + build._extra_flags())
    if error is not None:
        raise SystemExit(f"baseline build failed: {error}")
    return ctypes.CDLL(str(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", default="1,4,6,16,64,370")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--baseline", help="git revision whose decode.c to compare against")
    ap.add_argument("--out", default="benchmarks/results/matmul.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    library = load_native("decode")
    if library.lib is None:
        raise SystemExit(f"native kernels unavailable: {library.reason}")
    tmp = tempfile.TemporaryDirectory()
    sides: dict[str, Matmul | None] = {"C": c_matmul(library.lib, args.threads)}
    if args.baseline:
        sides["baseline"] = c_matmul(baseline_library(args.baseline, Path(tmp.name)), args.threads)
    sides["torch"] = None
    gen = torch.Generator().manual_seed(0)
    results = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        dense = [
            [torch.randn(n, k, generator=gen).to(dtype) for n, k in SHAPES] for _ in range(LAYERS)
        ]
        packed = [[pack_weight(w) for w in layer] for layer in dense]
        for rows in (int(r) for r in args.rows.split(",")):
            xs = [torch.randn(rows, k, generator=gen).to(dtype) for _, k in SHAPES]
            flops = LAYERS * sum(2 * rows * n * k for n, k in SHAPES)
            best = dict.fromkeys(sides, float("inf"))
            with torch.inference_mode():
                for _ in range(args.reps):
                    for name, mm in sides.items():
                        t = time.perf_counter()
                        if mm is None:
                            for layer in dense:
                                for w, x in zip(layer, xs, strict=True):
                                    torch.nn.functional.linear(x, w)
                        else:
                            for layer_p in packed:
                                for (n, _), wp, x in zip(SHAPES, layer_p, xs, strict=True):
                                    mm(wp, x, n)
                        best[name] = min(best[name], time.perf_counter() - t)
            row: dict[str, object] = {"dtype": dtype_name, "rows": rows}
            for name, seconds in best.items():
                row[f"{name}_ms"] = seconds * 1e3
                row[f"{name}_gflop_s"] = flops / seconds / 1e9
            results.append(row)
        del dense, packed
    tmp.cleanup()
    print(f"native kernels: {library.isa}, {args.threads} threads")
    names = list(sides)
    print(f"{'dtype':9} {'rows':>5} " + " ".join(f"{n + ' GFLOP/s':>16}" for n in names))
    for r in results:
        cells = " ".join(f"{r[f'{n}_gflop_s']:>16.1f}" for n in names)
        print(f"{r['dtype']:9} {r['rows']:>5} {cells}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {
        "platform": platform.platform(),
        "threads": args.threads,
        "torch": torch.__version__,
        "native_isa": library.isa,
        "baseline": args.baseline,
    }
    out.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
