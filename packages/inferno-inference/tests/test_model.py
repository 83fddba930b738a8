"""The forward pass matches transformers' LlamaForCausalLM on random tiny models."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from inferno_inference.model import AttentionMetadata, LlamaModel, PrefillSegment
from inferno_inference.tiny import prefill_metadata
from inferno_models.config import ModelConfig
from inferno_models.testing import random_weights, tiny_config


def _hf_logits(
    config: ModelConfig, weights: dict[str, torch.Tensor], ids: list[int]
) -> torch.Tensor:
    from transformers import LlamaConfig, LlamaForCausalLM

    hf: Any = LlamaForCausalLM(LlamaConfig(**config.to_hf_dict()))
    hf.eval()
    missing, unexpected = hf.load_state_dict(weights, strict=False)
    assert not unexpected
    assert set(missing) <= {"lm_head.weight"}
    with torch.inference_mode():
        logits: torch.Tensor = hf(torch.tensor([ids])).logits[0]
        return logits


def _caches(config: ModelConfig, slots: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    shape = (slots, config.num_key_value_heads, config.head_dim)
    return [(torch.zeros(shape), torch.zeros(shape)) for _ in range(config.num_hidden_layers)]


@pytest.mark.parametrize("tied", [False, True])
def test_prefill_then_decode_matches_transformers(tied: bool) -> None:
    config = tiny_config(tie_word_embeddings=tied)
    weights = random_weights(config, seed=3)
    ids = [(7 * i + 3) % config.vocab_size for i in range(90)]  # past the llama3 original 64
    ref = _hf_logits(config, weights, ids)
    model = LlamaModel(
        config, weights, dtype=torch.float32, device=torch.device("cpu"), max_len=128
    )
    caches = _caches(config, 128)
    n = 60
    meta = prefill_metadata(n)
    with torch.inference_mode():
        logits = model.forward(torch.tensor(ids[:n]), meta, caches)
        torch.testing.assert_close(logits, ref[:n], atol=1e-4, rtol=1e-4)
        # A second chunk attends to the cached first one.
        pos2 = torch.arange(n, n + 20)
        meta2 = AttentionMetadata(
            positions=pos2,
            slot_mapping=pos2,
            num_decodes=0,
            decode_slots=None,
            decode_context_lens=None,
            prefills=[PrefillSegment(0, 20, n + 20, torch.arange(n + 20))],
            logits_indices=torch.arange(20),
        )
        logits2 = model.forward(torch.tensor(ids[n : n + 20]), meta2, caches)
        torch.testing.assert_close(logits2, ref[n : n + 20], atol=1e-4, rtol=1e-4)
        # Then single-token decodes.
        for p in range(n + 20, 90):
            t = torch.tensor([p])
            meta3 = AttentionMetadata(
                positions=t,
                slot_mapping=t,
                num_decodes=1,
                decode_slots=torch.arange(p + 1)[None],
                decode_context_lens=None,
                prefills=[],
                logits_indices=torch.tensor([0]),
            )
            out = model.forward(torch.tensor([ids[p]]), meta3, caches)
            torch.testing.assert_close(out[0], ref[p], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tracks_fp32(dtype: torch.dtype) -> None:
    config = tiny_config()
    weights = random_weights(config, seed=5)
    ids = torch.tensor([(13 * i + 7) % config.vocab_size for i in range(40)])
    pos = torch.arange(40)
    meta = AttentionMetadata(pos, pos, 0, None, None, [PrefillSegment(0, 40, 40, None)], pos)
    cpu = torch.device("cpu")
    full = LlamaModel(config, weights, dtype=torch.float32, device=cpu, max_len=64)
    half = LlamaModel(config, weights, dtype=dtype, device=cpu, max_len=64)
    half_caches = [(k.to(dtype), v.to(dtype)) for k, v in _caches(config, 64)]
    with torch.inference_mode():
        ref = full.forward(ids, meta, _caches(config, 64))
        out = half.forward(ids, meta, half_caches)
    assert out.dtype == torch.float32
    assert (out - ref).abs().max().item() < 0.1 * ref.abs().max().item()
    # The top choice agrees almost everywhere (ties within rounding may differ).
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean().item() > 0.9
