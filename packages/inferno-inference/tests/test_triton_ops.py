"""The Triton kernels: each equal to its PyTorch reference, and the engine with them equal to
the engine without.

Without CUDA the kernels run in Triton's interpreter (conftest sets ``TRITON_INTERPRET=1``);
with CUDA the ``cuda`` cases compile and run them on the GPU.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest
import torch
from inferno_inference import triton_ops
from inferno_inference.engine import LLMEngine
from inferno_inference.errors import EngineError
from inferno_inference.rope import rope_tables
from inferno_inference.tiny import attach_eager_graphs, greedy_tokens, tiny_llm_engine
from inferno_inference.triton_ops import (
    TritonOps,
    add_rms_norm,
    choose_splits,
    paged_decode_attention,
    reference_add_rms_norm,
    reference_decode_attention,
    reference_rope_kv_write,
    reference_silu_mul,
    rope_kv_write,
    silu_mul,
    triton_unavailable,
)
from inferno_models.testing import random_weights, tiny_config

pytest.importorskip("triton", reason="Triton is not installed on this platform")

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ],
    ),
]


def _device(name: str) -> torch.device:
    device = torch.device(name)
    reason = triton_unavailable(device)
    if reason is not None:
        pytest.skip(reason)  # the CPU case on a CUDA machine, where the interpreter is off
    return device


def _inputs(
    heads: int, kv_heads: int, hd: int, dtype: torch.dtype, device: torch.device, span: int
) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(heads * 100 + hd)
    n, num_slots = 3, 400
    # q as the model makes it: query heads of a fused [tokens, q + k heads, hd] tensor.
    q = torch.randn(n, heads + kv_heads, hd, generator=gen)[:, :heads]
    k = torch.randn(num_slots, kv_heads, hd, generator=gen)
    v = torch.randn(num_slots, kv_heads, hd, generator=gen)
    slots = torch.stack([torch.randperm(num_slots, generator=gen)[:span] for _ in range(n)])
    q, k, v = (t.to(device=device, dtype=dtype) for t in (q, k, v))
    return q, k, v, slots.to(device)


@pytest.mark.parametrize("device_name", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "hd"), [(4, 2, 16), (9, 3, 64), (4, 4, 24)])
@pytest.mark.parametrize("splits", [1, 3, None])
def test_kernel_equals_the_reference(
    device_name: str, dtype: torch.dtype, heads: int, kv_heads: int, hd: int, splits: int | None
) -> None:
    device = _device(device_name)
    q, k, v, slots = _inputs(heads, kv_heads, hd, dtype, device, span=150)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    # Unequal context lengths (one of a single token, one ending mid-slice), then none.
    for lens in (torch.tensor([150, 1, 77], device=device), None):
        got = paged_decode_attention(q, k, v, slots, lens, splits=splits)
        want = reference_decode_attention(q, k, v, slots, lens)
        assert got.shape == (3, heads, hd)
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want.float(), atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("device_name", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "hd"), [(4, 2, 16), (9, 3, 64), (3, 1, 24)])
def test_rope_kv_write_equals_the_reference(
    device_name: str, dtype: torch.dtype, heads: int, kv_heads: int, hd: int
) -> None:
    device = _device(device_name)
    config = tiny_config(
        hidden_size=hd * heads, num_attention_heads=heads, num_key_value_heads=kv_heads
    )
    cos, sin = rope_tables(config, 64, dtype=dtype, device=device)
    gen = torch.Generator().manual_seed(hd)
    n = 5
    qkv = torch.randn(n, (heads + 2 * kv_heads) * hd, generator=gen).to(device, dtype)
    positions = torch.tensor([0, 1, 17, 40, 63], device=device)
    mapping = torch.tensor([9, 2, 30, 31, 0], device=device)
    caches = [torch.zeros(32, kv_heads, hd, dtype=dtype, device=device) for _ in range(4)]
    got = rope_kv_write(qkv, positions, cos, sin, mapping, caches[0], caches[1], heads, kv_heads)
    want = reference_rope_kv_write(
        qkv, positions, cos, sin, mapping, caches[2], caches[3], heads, kv_heads
    )
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(caches[0], caches[2], atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(caches[1], caches[3], atol=0, rtol=0)  # values are copied
    assert bool(caches[0][mapping].abs().sum(dim=(1, 2)).gt(0).all())  # every slot written


@pytest.mark.parametrize("device_name", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hidden", [64, 576, 100])
def test_add_rms_norm_and_silu_mul_equal_their_references(
    device_name: str, dtype: torch.dtype, hidden: int
) -> None:
    device = _device(device_name)
    gen = torch.Generator().manual_seed(hidden)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device, dtype)

    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    # Triton's interpreter truncates fp32 -> bf16 where a GPU rounds to nearest: one ulp.
    ulp = 0.0 if dtype == torch.float32 else 2.0**-7
    x, delta, weight = rand(4, hidden), rand(4, hidden), rand(hidden)
    x_ref = x.clone()
    got = add_rms_norm(x, delta, weight, 1e-5)
    want = reference_add_rms_norm(x_ref, delta, weight, 1e-5)
    torch.testing.assert_close(x, x_ref, atol=0, rtol=ulp)  # the residual, updated in place
    torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance)
    before = x.clone()
    got = add_rms_norm(x, None, weight, 1e-5)
    torch.testing.assert_close(x, before, atol=0, rtol=0)  # no delta: x untouched
    torch.testing.assert_close(
        got, reference_add_rms_norm(before, None, weight, 1e-5), atol=tolerance, rtol=tolerance
    )
    gate_up = rand(3, 2 * (hidden * 3 + 1))  # an odd width: the last block is partial
    torch.testing.assert_close(
        silu_mul(gate_up), reference_silu_mul(gate_up), atol=tolerance, rtol=tolerance
    )


def test_split_count_fills_the_gpu_only_for_long_contexts_and_few_sequences() -> None:
    assert choose_splits(1, 8, 256, 132) == 1  # four loop iterations: not worth a merge
    assert choose_splits(64, 8, 8192, 132) == 1  # 512 programs already fill 132 SMs
    assert choose_splits(1, 8, 8192, 132) == 32  # 128 iterations, cut to 4 per slice
    assert choose_splits(1, 2, 1024, 132) == 4  # 16 iterations, at least 4 per slice
    assert choose_splits(4, 8, 100_000, 132) == 9  # 2 * 132 programs over 32 sequence-heads


def _engine(backend: str, *, static: bool = False) -> LLMEngine:
    config = tiny_config()
    engine = tiny_llm_engine(
        config=config,
        weights=random_weights(config, seed=5),
        cpu_native_decode=False,
        kernel_backend=backend,
    )
    if static:
        attach_eager_graphs(engine, max_batch=4, max_span=64, min_span=16)
    return engine


def _greedy(engine: LLMEngine, prompts: list[list[int]]) -> list[list[int]]:
    return greedy_tokens(engine, prompts, [4 + 3 * i for i in range(len(prompts))])


@pytest.mark.parametrize("static", [False, True])
def test_engine_with_the_kernel_generates_what_the_torch_path_does(static: bool) -> None:
    _device("cpu")
    prompts = [[(13 * i + 7 * k) % 300 + 3 for k in range(2 + 5 * i)] for i in range(3)]
    kernel = _engine("triton", static=static)
    assert isinstance(kernel.runner.model.ops, TritonOps)
    torch_path = _engine("torch")
    assert torch_path.runner.model.ops is None
    assert _greedy(kernel, prompts) == _greedy(torch_path, prompts)
    assert kernel.stats().kv_blocks_used == 0


def test_backend_choice_and_its_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    _device("cpu")
    # "auto" keeps the PyTorch path on a CPU.
    assert _engine("auto").runner.model.ops is None
    cpu = torch.device("cpu")
    assert triton_ops.self_check(4, 2, 16, 64, 128, torch.float32, cpu) is None
    # A kernel that disagrees with its reference fails the self-check...
    monkeypatch.setattr(triton_ops, "silu_mul", lambda gate_up: gate_up[:, ::2].clone())
    reason = triton_ops.self_check(4, 2, 16, 64, 128, torch.float32, cpu)
    assert reason is not None
    assert "SiLU * up is off by" in reason
    # ...and asking for "triton" then is an error naming why.
    with pytest.raises(EngineError, match="kernel_backend='triton' cannot run here"):
        _engine("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(EngineError, match="interpreter"):
        _engine("triton")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kernels_compile_for_hopper_without_a_gpu(dtype: torch.dtype) -> None:
    # Triton's compiler (its bundled ptxas included) runs on any machine, so CI catches a
    # kernel that would fail to build on an H100 although it never runs one. In a process of
    # its own: this one runs Triton's interpreter, which replaces the compiler's builtins.
    script = (
        "import sys, torch\n"
        "from inferno_inference.triton_ops import compile_for_gpu\n"
        f"sizes = compile_for_gpu(torch.{str(dtype).removeprefix('torch.')}, arch=90)\n"
        "print(sorted(sizes.items()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    sizes = dict(ast.literal_eval(done.stdout.strip().splitlines()[-1]))
    assert set(sizes) == {"attend", "merge", "rope_kv_write", "add_rms_norm", "silu_mul"}
    assert all(n > 0 for n in sizes.values())
