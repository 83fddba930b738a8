"""Tiny real engines for tests: a random tiny Llama behind the full engine machinery.

Unlike `inferno_inference.testing.FakeEngine`, these run the real scheduler, KV cache, model
and sampler, just on a model small enough for a CPU unit test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from inferno_memory import HostMemoryResource, MemoryResource
from inferno_models import ModelConfig
from inferno_models.testing import random_weights, tiny_config

from inferno_inference.config import EngineConfig
from inferno_inference.cuda_graphs import MAX_GRAPH_SLOTS, CudaGraphDecoder
from inferno_inference.engine import LLMEngine
from inferno_inference.factory import build_llm_engine
from inferno_inference.model import AttentionMetadata, PrefillSegment
from inferno_inference.torch_memory import TorchCudaMemoryResource
from inferno_inference.types import GenerationRequest, SamplingParams

__all__ = [
    "LetterDetokenizer",
    "attach_eager_graphs",
    "choice_bytes",
    "greedy_tokens",
    "prefill_metadata",
    "reference_greedy_tokens",
    "tiny_llm_engine",
]


class LetterDetokenizer:
    """Token ``i`` reads as the letter ``chr(ord('a') + i % 26)``: a stand-in text stream."""

    def __init__(self, prompt_ids: Sequence[int] = ()) -> None:
        self.prompt_ids = tuple(prompt_ids)

    def push(self, token_id: int) -> str:
        """One letter per token."""
        return chr(ord("a") + token_id % 26)

    def flush(self) -> str:
        """Nothing is ever held back."""
        return ""


def tiny_llm_engine(
    *,
    config: ModelConfig | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    resource: MemoryResource | None = None,
    seed: int = 0,
    token_bytes: Sequence[bytes] | None = None,
    **engine_kwargs: object,
) -> LLMEngine:
    """An `LLMEngine` over a random tiny model (GQA, llama3 rope) with letter text.

    ``engine_kwargs`` go to `EngineConfig` (``block_size``, ``kv_cache_bytes``, ...).
    ``token_bytes`` (one entry per id) gives JSON mode a vocabulary, as a tokenizer would.
    """
    config = config or tiny_config()
    weights = weights if weights is not None else random_weights(config, seed=seed)
    defaults: dict[str, object] = {"block_size": 4, "kv_cache_bytes": 1 << 20, "max_num_seqs": 8}
    defaults.update(engine_kwargs)
    engine_config = EngineConfig.model_validate(defaults)
    if resource is None:
        on_gpu = torch.device(engine_config.device).type == "cuda"
        resource = TorchCudaMemoryResource() if on_gpu else HostMemoryResource()
    return build_llm_engine(
        config,
        weights,
        engine_config,
        resource,
        detokenizer_factory=LetterDetokenizer,
        seed=seed,
        token_bytes=None if token_bytes is None else lambda: token_bytes,
    )


def attach_eager_graphs(
    engine: LLMEngine,
    *,
    max_batch: int,
    max_span: int,
    min_span: int,
    max_graph_slots: int = MAX_GRAPH_SLOTS,
) -> CudaGraphDecoder:
    """Route the engine's decode steps through `CudaGraphDecoder`'s padded fixed-shape steps,
    run eagerly (``capture=False``), so the CUDA graphs' padding is exercised on any device."""
    runner = engine.runner
    runner.graphs = CudaGraphDecoder(
        runner.model,
        runner.kv_cache.layers,
        max_batch=max_batch,
        max_span=max_span,
        block_size=runner.block_size,
        scratch_slot=runner.kv_cache.scratch_slot,
        min_span=min_span,
        max_graph_slots=max_graph_slots,
        capture=False,
    )
    return runner.graphs


def greedy_tokens(
    engine: LLMEngine, prompts: Sequence[Sequence[int]], max_tokens: int | Sequence[int]
) -> list[list[int]]:
    """Greedy tokens (EOS ignored) of each prompt, all submitted at once and stepped until the
    engine is idle; ``max_tokens`` is one limit for all or one per prompt."""
    limits = [max_tokens] * len(prompts) if isinstance(max_tokens, int) else list(max_tokens)
    ids = [f"greedy-{i}" for i in range(len(prompts))]
    for rid, prompt, limit in zip(ids, prompts, limits, strict=True):
        sp = SamplingParams(max_tokens=limit, temperature=0, ignore_eos=True)
        engine.add_request(GenerationRequest(rid, tuple(prompt), sp))
    out: dict[str, list[int]] = {rid: [] for rid in ids}
    while engine.has_work():
        for o in engine.step():
            out[o.request_id].extend(o.token_ids)
    return [out[rid] for rid in ids]


def reference_greedy_tokens(
    model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int
) -> list[list[int]]:
    """What a transformers model's greedy ``generate`` makes of each prompt, one at a time
    and EOS ignored: the tokens `greedy_tokens` must equal."""
    config = model.generation_config
    config.eos_token_id = None
    config.pad_token_id = 0
    out = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = model.generate(
                torch.tensor([list(prompt)]),
                # Token 0 is a real token here, not padding.
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                top_k=None,
                top_p=None,
            )
            out.append(ids[0, len(prompt) :].tolist())
    return out


def prefill_metadata(n_tokens: int) -> AttentionMetadata:
    """One sequence's first prefill of ``n_tokens`` into cache slots 0..n-1, with logits for
    every token."""
    positions = torch.arange(n_tokens)
    return AttentionMetadata(
        positions=positions,
        slot_mapping=positions,
        num_decodes=0,
        decode_slots=None,
        decode_context_lens=None,
        prefills=[PrefillSegment(0, n_tokens, n_tokens, None)],
        logits_indices=positions,
    )


def choice_bytes(
    engine: LLMEngine, request: GenerationRequest, token_bytes: Sequence[bytes]
) -> list[tuple[list[int], bytes, str]]:
    """Run ``request`` until the engine is idle: each choice's tokens, its text (the
    concatenated ``token_bytes`` of its tokens) and its finish reason."""
    engine.add_request(request)
    tokens: dict[int, list[int]] = {i: [] for i in range(request.sampling.n)}
    finish: dict[int, str] = {}
    while engine.has_work():
        for out in engine.step():
            tokens[out.index].extend(out.token_ids)
            if out.finish_reason is not None:
                finish[out.index] = out.finish_reason
    return [
        (ids, b"".join(token_bytes[t] for t in ids), finish[i]) for i, ids in sorted(tokens.items())
    ]
