"""Composition helpers: build an engine from a model and an `EngineConfig`.

These are the one place where the engine's parts are wired together; each part can also be
built by hand (tests inject their own scheduler, runner or sampler).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import structlog
import torch
from inferno_memory import MemoryResource
from inferno_models import IncrementalDetokenizer, LoadedModel, ModelConfig, Tokenizer

from inferno_inference import triton_ops
from inferno_inference.async_engine import AsyncEngine
from inferno_inference.block_manager import BlockManager
from inferno_inference.config import EngineConfig
from inferno_inference.cuda_graphs import CudaGraphDecoder
from inferno_inference.engine import DetokenizerFactory, LLMEngine
from inferno_inference.errors import EngineError
from inferno_inference.kv_cache import KVCache
from inferno_inference.model import FusedOps, LlamaModel
from inferno_inference.native import (
    NativeDecoder,
    NativeMatmul,
    load_native,
    native_unsupported,
    pack_weight,
)
from inferno_inference.runner import ModelRunner
from inferno_inference.sampler import Sampler
from inferno_inference.scheduler import Scheduler
from inferno_inference.speculative import NgramProposer

__all__ = ["build_async_engine", "build_llm_engine"]

log = structlog.get_logger(__name__)


def build_llm_engine(
    config: ModelConfig,
    weights: Mapping[str, torch.Tensor],
    engine_config: EngineConfig,
    resource: MemoryResource,
    *,
    tokenizer: Tokenizer | None = None,
    detokenizer_factory: DetokenizerFactory | None = None,
    seed: int | None = None,
    token_bytes: Callable[[], Sequence[bytes]] | None = None,
) -> LLMEngine:
    """Wire model, KV cache (storage from ``resource``), scheduler, runner and sampler.

    Text deltas come from ``detokenizer_factory``, or from the tokenizer's incremental
    detokenizer when only ``tokenizer`` is given; with neither, outputs carry ids only.
    JSON mode reads the vocabulary from ``token_bytes``, or else from the tokenizer.
    """
    ec = engine_config
    device = torch.device(ec.device)
    dtype = ec.torch_dtype
    if ec.num_threads is not None and device.type == "cpu":
        torch.set_num_threads(ec.num_threads)
    num_blocks = KVCache.blocks_for_budget(ec.kv_cache_bytes, config, ec.block_size, dtype)
    if num_blocks < 1:
        per_block = KVCache.bytes_per_block(config, ec.block_size, dtype)
        raise EngineError(
            f"kv_cache_bytes={ec.kv_cache_bytes} holds no KV block ({per_block} bytes each); "
            "raise kv_cache_bytes or lower block_size"
        )
    # A sequence must always fit alone, so the context is capped by the cache size.
    max_model_len = min(
        ec.max_model_len or config.max_position_embeddings,
        config.max_position_embeddings,
        num_blocks * ec.block_size,
    )
    int8 = ec.weight_quantization == "int8"
    native_wanted = (
        ec.cpu_native_decode and device.type == "cpu" and native_unsupported(config, dtype) is None
    )
    library = load_native("decode") if native_wanted else None
    if library is not None and library.lib is None:
        log.warning("native decode unavailable; decoding with PyTorch", reason=library.reason)
    use_native = library is not None and library.lib is not None
    model = LlamaModel(
        config,
        dict(weights),
        dtype=dtype,
        device=device,
        max_len=max_model_len,
        prepack=ec.cpu_prepacked_weights,
        # With the native path, int8 lives in its packed copy; torch keeps unquantized weights.
        int8=int8 and not use_native,
        native_layout=functools.partial(pack_weight, int8=int8) if use_native else None,
        native_matmul=NativeMatmul(library) if use_native and ec.cpu_native_matmuls else None,
    )
    model.ops = _fused_ops(ec, config, dtype, device)
    cache = KVCache(
        resource,
        config,
        num_blocks=num_blocks,
        block_size=ec.block_size,
        dtype=dtype,
        device=device,
    )
    block_manager = BlockManager(
        num_blocks,
        ec.block_size,
        enable_prefix_caching=ec.enable_prefix_caching,
        window=config.sliding_window,
    )
    scheduler = Scheduler(
        block_manager,
        max_num_seqs=ec.max_num_seqs,
        max_num_batched_tokens=ec.max_num_batched_tokens,
        max_draft_step_tokens=ec.speculative_step_tokens,
    )
    graphs = None
    if device.type == "cuda" and ec.cuda_graphs:
        max_span = (
            block_manager.blocks_needed(min(max_model_len, ec.cuda_graph_max_context))
            * ec.block_size
        )
        graphs = CudaGraphDecoder(
            model,
            cache.layers,
            max_batch=min(ec.cuda_graph_max_batch, ec.max_num_seqs),
            max_span=max_span,
            block_size=ec.block_size,
            scratch_slot=cache.scratch_slot,
            # The Triton attention reads each sequence's context only up to its length, so one
            # span serves every step; the gather path pays for the padded span, so it buckets.
            min_span=max_span if model.ops is not None else 256,
        )
    native = None
    if use_native:
        native = NativeDecoder(
            model,
            max_rows=ec.cpu_native_max_rows,
            max_prefill_context=ec.cpu_native_max_prefill_context,
            library=library,
        )
    runner = ModelRunner(model, cache, graphs=graphs, native=native)
    if detokenizer_factory is None and tokenizer is not None:
        tok = tokenizer

        def detokenizer_factory(prompt: object) -> IncrementalDetokenizer:
            return IncrementalDetokenizer(tok, prompt_ids=list(prompt))  # type: ignore[call-overload]

    eos = tokenizer.eos_token_ids if tokenizer is not None else config.eos_token_ids
    log.info(
        "engine built",
        kv_blocks=num_blocks,
        block_size=ec.block_size,
        kv_bytes=cache.nbytes,
        max_model_len=max_model_len,
        dtype=ec.dtype,
        weight_quantization=ec.weight_quantization,
        native_decode=use_native,
        native_isa=library.isa if use_native and library is not None else None,
        triton_kernels=model.ops is not None,
        speculative_tokens=ec.speculative_tokens,
        device=str(device),
    )
    return LLMEngine(
        scheduler,
        runner,
        Sampler(seed=seed),
        max_model_len=max_model_len,
        vocab_size=config.vocab_size,
        eos_token_ids=eos,
        detokenizer_factory=detokenizer_factory,
        token_bytes=token_bytes or (tokenizer.token_bytes if tokenizer is not None else None),
        encode=_plain_encoder(tokenizer) if tokenizer is not None else None,
        proposer=NgramProposer(
            ec.speculative_tokens, min_n=ec.prompt_lookup_min, max_n=ec.prompt_lookup_max
        )
        if ec.speculative_tokens
        else None,
    )


def _plain_encoder(tokenizer: Tokenizer) -> Callable[[str], list[int]]:
    """Text to token ids as the tokenizer writes it, without BOS or other special tokens."""

    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    return encode


def _fused_ops(
    ec: EngineConfig, config: ModelConfig, dtype: torch.dtype, device: torch.device
) -> FusedOps | None:
    """The kernels ``kernel_backend`` asks for, or ``None`` for PyTorch alone; "triton" that
    cannot run is an error, "auto" falls back with a warning."""
    if ec.kernel_backend == "torch" or (ec.kernel_backend == "auto" and device.type != "cuda"):
        return None
    reason = triton_ops.self_check(
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
        config.hidden_size,
        config.intermediate_size,
        dtype,
        device,
    )
    if reason is None:
        return triton_ops.TritonOps()
    if ec.kernel_backend == "triton":
        raise EngineError(f"kernel_backend='triton' cannot run here: {reason}")
    log.warning("triton kernels unavailable; running PyTorch ops", reason=reason)
    return None


def build_async_engine(
    model: LoadedModel, engine_config: EngineConfig, resource: MemoryResource
) -> AsyncEngine:
    """An `AsyncEngine` serving a loaded model (tokenizer text and EOS ids included)."""
    engine = build_llm_engine(
        model.config, model.weights, engine_config, resource, tokenizer=model.tokenizer
    )
    return AsyncEngine(engine)
