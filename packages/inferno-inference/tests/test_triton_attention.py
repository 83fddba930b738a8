"""The Triton paged decode attention: equal to the reference, alone and inside the engine.

Without CUDA the kernels run in Triton's interpreter (conftest sets ``TRITON_INTERPRET=1``);
with CUDA the ``cuda`` cases compile and run them on the GPU.
"""

from __future__ import annotations

import pytest
import torch
from inferno_inference import triton_attention
from inferno_inference.cuda_graphs import CudaGraphDecoder
from inferno_inference.engine import LLMEngine
from inferno_inference.errors import EngineError
from inferno_inference.tiny import tiny_llm_engine
from inferno_inference.triton_attention import (
    choose_splits,
    paged_decode_attention,
    paged_decode_attention_available,
    reference_decode_attention,
)
from inferno_inference.types import GenerationRequest, SamplingParams
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
    reason = paged_decode_attention_available(device)
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
        attention_backend=backend,
    )
    if static:
        runner = engine.runner
        runner.graphs = CudaGraphDecoder(
            runner.model,
            runner.kv_cache.layers,
            max_batch=4,
            max_span=64,
            block_size=runner.block_size,
            scratch_slot=runner.kv_cache.scratch_slot,
            min_span=16,
            capture=False,
        )
    return engine


def _greedy(engine: LLMEngine, prompts: list[list[int]]) -> list[list[int]]:
    for i, p in enumerate(prompts):
        sp = SamplingParams(max_tokens=4 + 3 * i, temperature=0, ignore_eos=True)
        engine.add_request(GenerationRequest(f"r{i}", tuple(p), sp))
    out: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    while engine.has_work():
        for o in engine.step():
            out[o.request_id].extend(o.token_ids)
    return [out[f"r{i}"] for i in range(len(prompts))]


@pytest.mark.parametrize("static", [False, True])
def test_engine_with_the_kernel_generates_what_the_torch_path_does(static: bool) -> None:
    _device("cpu")
    prompts = [[(13 * i + 7 * k) % 300 + 3 for k in range(2 + 5 * i)] for i in range(3)]
    kernel = _engine("triton", static=static)
    assert kernel.runner.model.paged_attention is paged_decode_attention
    torch_path = _engine("torch")
    assert torch_path.runner.model.paged_attention is None
    assert _greedy(kernel, prompts) == _greedy(torch_path, prompts)
    assert kernel.stats().kv_blocks_used == 0


def test_backend_choice_and_its_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    _device("cpu")
    # "auto" keeps the PyTorch path on a CPU.
    assert _engine("auto").runner.model.paged_attention is None
    # A kernel that disagrees with the reference fails the self-check...
    monkeypatch.setattr(
        triton_attention,
        "paged_decode_attention",
        lambda q, k, v, slots, lens, splits=None: torch.zeros_like(q),
    )
    reason = triton_attention.self_check(4, 2, 16, torch.float32, torch.device("cpu"))
    assert reason is not None
    assert "max error" in reason
    # ...and asking for "triton" then is an error naming why.
    with pytest.raises(EngineError, match="attention_backend='triton' cannot run here"):
        _engine("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(EngineError, match="interpreter"):
        _engine("triton")
