"""CUDA paths: bf16 decode with CUDA graphs (skipped without a CUDA device)."""

from __future__ import annotations

import pytest
import torch
from inferno_inference.engine import LLMEngine
from inferno_inference.tiny import greedy_tokens, tiny_llm_engine
from inferno_inference.torch_memory import TorchCudaMemoryResource
from inferno_memory import CudaMemoryResource, StatisticsAdaptor
from inferno_models.config import ModelConfig
from inferno_models.testing import random_weights, tiny_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _greedy(engine: LLMEngine, prompts: list[list[int]], n: int = 24) -> list[list[int]]:
    return greedy_tokens(engine, prompts, n)


PROMPTS = [[(7 * i + 3 * k) % 250 + 3 for k in range(5 + 9 * i)] for i in range(6)]


@pytest.mark.parametrize("kernels", ["triton", "torch"])
@pytest.mark.parametrize("max_context", [8192, 64])
def test_cuda_graph_decode_matches_eager_decode_bf16(max_context: int, kernels: str) -> None:
    # With a 64-token graph context, the longer sequences' later steps run without a graph.
    config = tiny_config()
    _graphs_match_eager(config, max_context, kernels)


@pytest.mark.parametrize("kernels", ["triton", "torch"])
def test_cuda_graph_decode_under_a_sliding_window(kernels: str) -> None:
    # Each decode attends to its latest 8 positions: the graphs' slot lists are windows.
    _graphs_match_eager(tiny_config(sliding_window=8), 64, kernels)


def _graphs_match_eager(config: ModelConfig, max_context: int, kernels: str) -> None:
    weights = random_weights(config, seed=2)
    common = {"device": "cuda", "dtype": "bfloat16", "kernel_backend": kernels}
    eager = tiny_llm_engine(config=config, weights=weights, cuda_graphs=False, **common)
    graphed = tiny_llm_engine(
        config=config,
        weights=weights,
        cuda_graphs=True,
        cuda_graph_max_context=max_context,
        **common,
    )
    assert (graphed.runner.model.ops is not None) == (kernels == "triton")
    # Triton's attention stops at each context's end: one span bucket; the gather path buckets.
    assert (len(graphed.runner.graphs.spans) == 1) == (kernels == "triton" or max_context == 64)
    assert graphed.runner.graphs is not None
    assert graphed.runner.graphs.max_span == min(max_context, 512)
    assert eager.runner.graphs is None
    assert _greedy(graphed, PROMPTS) == _greedy(eager, PROMPTS)
    assert graphed.stats().kv_blocks_used == 0


@pytest.mark.parametrize("kernels", ["triton", "torch"])
@pytest.mark.parametrize("arch", ["llama", "qwen3", "smollm3", "mistral-window"])
def test_cuda_fp32_matches_cpu_fp32(kernels: str, arch: str) -> None:
    # Qwen3: the head norms before the fused rotation, on heads wider than hidden / heads;
    # SmolLM3: an unrotated layer through the same fused kernel (position 0's angles);
    # Mistral: an 8-token window, far shorter than the prompts.
    config = {
        "llama": tiny_config(),
        "mistral-window": tiny_config(sliding_window=8),
        "qwen3": tiny_config(architecture="qwen3", head_dim=32, llama3_rope=False),
        "smollm3": tiny_config(architecture="smollm3", num_hidden_layers=4),
    }[arch]
    weights = random_weights(config, seed=4)
    cpu = tiny_llm_engine(config=config, weights=weights, kernel_backend="torch")
    gpu = tiny_llm_engine(
        config=config, weights=weights, device="cuda", dtype="float32", kernel_backend=kernels
    )
    assert _greedy(gpu, PROMPTS[:3]) == _greedy(cpu, PROMPTS[:3])


@pytest.mark.parametrize("kind", ["torch", "cupy"])
def test_kv_cache_lives_in_the_cuda_resource(kind: str) -> None:
    if kind == "cupy":
        pytest.importorskip("cupy")
    upstream = CudaMemoryResource() if kind == "cupy" else TorchCudaMemoryResource()
    resource = StatisticsAdaptor(upstream)
    engine = tiny_llm_engine(resource=resource, device="cuda", dtype="bfloat16")
    assert resource.stats().current_bytes == engine.runner.kv_cache.nbytes > 0
    engine.runner.kv_cache.release()
    assert resource.stats().current_bytes == 0


def test_the_sampler_on_cuda_draws_what_it_draws_on_the_cpu() -> None:
    """Filters, penalties, masks and logprobs run where the logits are; the draws come from
    the same host generators, so a seeded row's tokens do not depend on the device."""
    from inferno_inference.sampler import Sampler
    from inferno_inference.sequence import Sequence
    from inferno_inference.types import SamplingParams

    # Well-separated logits: the devices' rounding cannot reorder tokens.
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4000, generator=gen) * 4
    settings = [
        {"temperature": 0.8},
        {"temperature": 1.0, "top_p": 0.9},
        {"temperature": 0.7, "top_k": 40, "top_p": 0.95, "logprobs": 3},
        {"temperature": 0.6, "min_p": 0.05, "repetition_penalty": 1.3},
        {"temperature": 0, "frequency_penalty": 0.5, "logit_bias": [[5, 100]]},
        {"temperature": 1.0, "top_p": 0.999},  # a wide nucleus: the later tiers
    ]

    def run(device: str) -> tuple[list[list[int]], list[list[float]]]:
        tokens: list[list[int]] = [[] for _ in settings]
        scores: list[list[float]] = [[] for _ in settings]
        seqs = [
            Sequence(
                i,
                f"r{i}",
                0,
                [1, 2, 3, 9],
                4,
                SamplingParams.model_validate({"seed": 10 + i, **sp}),
                0.0,
                generator=torch.Generator().manual_seed(10 + i),
            )
            for i, sp in enumerate(settings)
        ]
        sampler = Sampler(seed=1)
        for _ in range(5):
            out = sampler(logits.to(device), seqs)
            for i, (token, record) in enumerate(zip(out.token_ids, out.logprobs, strict=True)):
                tokens[i].append(token)
                if record is not None:
                    scores[i].append(record.logprob)
        return tokens, scores

    cpu_tokens, cpu_scores = run("cpu")
    cuda_tokens, cuda_scores = run("cuda")
    assert cuda_tokens == cpu_tokens
    assert cuda_tokens[4] == [5] * 5  # the bias wins the greedy row
    for a, b in zip(cpu_scores, cuda_scores, strict=True):
        assert b == pytest.approx(a, abs=1e-4)
