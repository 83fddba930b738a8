"""Int8 weight-only quantization: close logits, end-to-end decoding, config validation."""

from __future__ import annotations

import pytest
import torch
from inferno_inference.config import EngineConfig
from inferno_inference.linear import Projection, quantize_int8
from inferno_inference.model import AttentionMetadata, LlamaModel
from inferno_inference.tiny import tiny_llm_engine
from inferno_inference.types import GenerationRequest, SamplingParams
from inferno_models.testing import random_weights, tiny_config
from pydantic import ValidationError


def test_quantize_int8_round_trips_within_half_a_step() -> None:
    w = torch.randn(24, 40, generator=torch.Generator().manual_seed(0))
    w[3] = 0  # an all-zero row must not divide by zero
    q, scales = quantize_int8(w)
    assert q.dtype == torch.int8
    assert q.shape == (24, 40)
    assert q.is_contiguous()
    assert scales.shape == (24,)
    assert q.abs().amax(dim=1)[torch.arange(24) != 3].eq(127).all()  # absmax maps to 127
    err = (q.float() * scales[:, None] - w).abs()
    assert (err <= scales[:, None] / 2 + 1e-6).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("prepack", [True, False])
def test_int8_projection_single_row_quantized_multi_row_exact(
    dtype: torch.dtype, prepack: bool
) -> None:
    gen = torch.Generator().manual_seed(1)
    w = (torch.randn(48, 64, generator=gen) * torch.linspace(0.01, 3, 48)[:, None]).to(dtype)
    plain, quant = Projection(w, prepack=prepack), Projection(w, prepack=prepack, int8=True)
    assert quant.nbytes == 48 * 64 + 48 * 2  # int8 codes + bf16 scales
    x = torch.randn(1, 64, generator=gen).to(dtype)
    got, want = quant(x), plain(x)
    assert got.dtype == dtype
    assert got.shape == (1, 48)
    err = (got.float() - want.float()).abs().max().item()
    assert err < 0.02 * want.float().abs().max().item()
    # Several rows run on the unquantized weights: identical to the plain projection.
    xs = torch.randn(5, 64, generator=gen).to(dtype)
    torch.testing.assert_close(quant(xs), plain(xs), rtol=0, atol=0)


def _decode_logits(model: LlamaModel, ids: list[int]) -> torch.Tensor:
    """Logits of each position, fed one token at a time (single-row decode steps)."""
    cfg = model.config
    shape = (len(ids), cfg.num_key_value_heads, cfg.head_dim)
    caches = [
        (torch.zeros(shape, dtype=model.dtype), torch.zeros(shape, dtype=model.dtype))
        for _ in range(cfg.num_hidden_layers)
    ]
    out = []
    with torch.inference_mode():
        for p, tok in enumerate(ids):
            t = torch.tensor([p])
            meta = AttentionMetadata(
                t, t, 1, torch.arange(p + 1)[None], None, [], torch.zeros(1, dtype=torch.long)
            )
            out.append(model.forward(torch.tensor([tok]), meta, caches))
    return torch.cat(out)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_int8_decode_logits_close_to_unquantized(dtype: torch.dtype) -> None:
    config = tiny_config(tie_word_embeddings=True)
    weights = random_weights(config, seed=7)
    ids = [(11 * i + 5) % config.vocab_size for i in range(12)]
    cpu = torch.device("cpu")
    ref = _decode_logits(LlamaModel(config, weights, dtype=dtype, device=cpu, max_len=16), ids)
    quant = LlamaModel(config, weights, dtype=dtype, device=cpu, max_len=16, int8=True)
    assert quant.lm_head.int8 is not None
    assert quant.embed.dtype == dtype
    got = _decode_logits(quant, ids)
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
    assert cos.min().item() > 0.999
    err = (got - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert err < 0.05 * scale
    # Scales 5% off everywhere break both bounds, so they check the scales, not just signs.
    for proj in [
        quant.lm_head,
        *(p for la in quant.layers for p in (la.qkv, la.o, la.gate_up, la.down)),
    ]:
        assert proj.int8 is not None
        codes, scales = proj.int8
        proj.int8 = (codes, (scales.float() * 1.05).to(scales.dtype))
    bad = _decode_logits(quant, ids)
    assert torch.nn.functional.cosine_similarity(bad, ref, dim=-1).min().item() < 0.999
    assert (bad - ref).abs().max().item() > 0.05 * scale


def test_int8_model_reads_fewer_weight_bytes() -> None:
    config = tiny_config()
    weights = random_weights(config, seed=2)
    cpu = torch.device("cpu")
    bf16 = LlamaModel(config, weights, dtype=torch.bfloat16, device=cpu, max_len=8)
    int8 = LlamaModel(config, weights, dtype=torch.bfloat16, device=cpu, max_len=8, int8=True)
    assert int8.weight_bytes_per_token() < 0.6 * bf16.weight_bytes_per_token()


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_int8_greedy_generation_end_to_end(dtype: str) -> None:
    engine = tiny_llm_engine(dtype=dtype, weight_quantization="int8")
    sp = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    engine.add_request(GenerationRequest("a", (1, 2, 3, 4, 5), sp))
    engine.add_request(GenerationRequest("b", (6, 7), sp))  # batched steps: multi-row path
    out: dict[str, list[int]] = {"a": [], "b": []}
    while engine.has_work():
        for o in engine.step():
            out[o.request_id].extend(o.token_ids)
    assert [len(v) for v in out.values()] == [10, 10]
    assert engine.stats().kv_blocks_used == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "float16"}, "needs dtype 'bfloat16' or 'float32'"),
        ({"device": "cuda:0", "dtype": "bfloat16"}, "CPU only"),
    ],
)
def test_int8_config_validation(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EngineConfig(weight_quantization="int8", **kwargs)  # type: ignore[arg-type]


def test_unknown_weight_quantization_is_rejected() -> None:
    with pytest.raises(ValidationError, match="weight_quantization"):
        EngineConfig(weight_quantization="int4")  # type: ignore[arg-type]
