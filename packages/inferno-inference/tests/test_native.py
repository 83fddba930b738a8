"""The C step path: same logits and KV writes as the PyTorch path, and a clean fallback."""

from __future__ import annotations

import functools
import os
import platform
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from inferno_inference import EngineConfig
from inferno_inference.errors import EngineError
from inferno_inference.linear import Projection, quantize_int8
from inferno_inference.model import AttentionMetadata, LlamaModel, PrefillSegment
from inferno_inference.native import (
    NativeDecoder,
    NativeLibrary,
    NativeMatmul,
    build,
    load_native,
    pack_weight,
)
from inferno_inference.tiny import tiny_llm_engine
from inferno_inference.types import GenerationRequest, SamplingParams
from inferno_models.config import ModelConfig
from inferno_models.names import LM_HEAD
from inferno_models.testing import random_weights, tiny_config

CPU = torch.device("cpu")
_NATIVE = load_native("decode")
if _NATIVE.lib is None and os.environ.get("CI") == "true":
    # CI installs a compiler (.ci/install-cc): there, a missing one is a failure, not a skip.
    raise RuntimeError(f"native kernels did not build under CI: {_NATIVE.reason}")
pytestmark = pytest.mark.skipif(
    _NATIVE.lib is None, reason=f"native kernels unavailable ({_NATIVE.reason}); PyTorch fallback"
)


@pytest.fixture
def two_threads() -> Iterator[None]:
    # The C path splits every projection across threads; two exercise the split and its tails.
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _odd_config() -> ModelConfig:
    # Widths that are not multiples of the vector length (72, 100) and a vocabulary that is not
    # a multiple of the 4-row tiles (321): every tail path in decode.c runs.
    return tiny_config(
        hidden_size=72,
        intermediate_size=100,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=321,
        num_hidden_layers=3,
    )


def _prefilled(
    model: LlamaModel, prompts: list[list[int]], width: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """KV caches holding each prompt, sequence ``i`` in slots ``[i * width, ...)``."""
    caches = _empty_caches(model, len(prompts) * width)
    for i, ids in enumerate(prompts):
        _prefill(model, ids, torch.arange(len(ids)) + i * width, caches)
    return caches


def _empty_caches(model: LlamaModel, n_slots: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    cfg = model.config
    shape = (n_slots, cfg.num_key_value_heads, cfg.head_dim)
    return [
        (torch.zeros(shape, dtype=model.dtype), torch.zeros(shape, dtype=model.dtype))
        for _ in range(cfg.num_hidden_layers)
    ]


def _prefill(
    model: LlamaModel,
    ids: list[int],
    slots: torch.Tensor,
    caches: list[tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """Write a prompt's keys and values into ``slots`` of ``caches`` (the torch path)."""
    n = len(ids)
    meta = AttentionMetadata(
        positions=torch.arange(n),
        slot_mapping=slots,
        num_decodes=0,
        decode_slots=None,
        decode_context_lens=None,
        prefills=[PrefillSegment(0, n, n, None)],
        logits_indices=torch.tensor([n - 1]),
    )
    with torch.inference_mode():
        model.forward(torch.tensor(ids), meta, caches)


def _decode_meta(lengths: list[int], width: int) -> AttentionMetadata:
    span = max(lengths) + 1
    slots = torch.zeros(len(lengths), span, dtype=torch.long)
    for i, n in enumerate(lengths):
        slots[i, : n + 1] = torch.arange(n + 1) + i * width
    lens = torch.tensor([n + 1 for n in lengths])
    return AttentionMetadata(
        positions=torch.tensor(lengths),
        slot_mapping=torch.tensor([n + i * width for i, n in enumerate(lengths)]),
        num_decodes=len(lengths),
        decode_slots=slots,
        decode_context_lens=None if int(lens.min()) == span else lens,
        prefills=[],
        logits_indices=torch.arange(len(lengths)),
    )


def _decode_both_ways(
    dtype: torch.dtype,
    rows: int,
    *,
    int8: bool = False,
    weights: dict[str, torch.Tensor] | None = None,
    threads: int | None = None,
    library: NativeLibrary | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, ...]]]:
    """Logits of one decode step of ``rows`` sequences, natively and in torch, and the
    caches each wrote (native, torch, per layer). ``int8``: the native side's projections are
    int8 (the torch side runs the unquantized ``weights``)."""
    config = _odd_config()
    weights = weights if weights is not None else random_weights(config, seed=11)
    model = LlamaModel(
        config,
        weights,
        dtype=dtype,
        device=CPU,
        max_len=96,
        native_layout=functools.partial(pack_weight, int8=int8),
    )
    native = NativeDecoder(model, max_rows=16, threads=threads, library=library)
    assert native.int8 == int8
    lengths = [5 + 9 * i for i in range(rows)]  # unequal: padded decode slots
    prompts = [[(3 * j + i) % config.vocab_size for j in range(n)] for i, n in enumerate(lengths)]
    caches = _prefilled(model, prompts, width=128)
    theirs = [(k.clone(), v.clone()) for k, v in caches]
    meta = _decode_meta(lengths, width=128)
    ids = torch.tensor([(7 * i + 1) % config.vocab_size for i in range(rows)])
    assert native.can_run(meta)
    ours = native.run(ids, meta, caches)
    with torch.inference_mode():
        want = model.forward(ids, meta, theirs)
    assert ours.shape == (rows, config.vocab_size)
    assert ours.dtype == torch.float32
    pairs = [(k, v, k2, v2) for (k, v), (k2, v2) in zip(caches, theirs, strict=True)]
    return ours, want, pairs


@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("rows", [1, 2, 5, 9])
def test_native_fp32_decode_matches_the_torch_path(rows: int) -> None:
    ours, want, caches = _decode_both_ways(torch.float32, rows)
    torch.testing.assert_close(ours, want, atol=1e-4, rtol=1e-4)
    assert torch.equal(ours.argmax(-1), want.argmax(-1))
    for k, v, k2, v2 in caches:  # this step's K/V land in the same slots, same values
        torch.testing.assert_close(k, k2, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v, v2, atol=1e-5, rtol=1e-5)


@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("rows", [1, 5])
def test_native_bf16_decode_is_as_close_to_fp32_as_the_torch_bf16_path(rows: int) -> None:
    ours, theirs, caches = _decode_both_ways(torch.bfloat16, rows)
    exact, _, _ = _decode_both_ways(torch.float32, rows)
    our_err = float((ours - exact).abs().max())
    their_err = float((theirs - exact).abs().max())
    # The C path keeps the residual stream in fp32, so it should be no further off.
    assert our_err <= 1.25 * their_err + 1e-3, (our_err, their_err)
    for k, v, k2, v2 in caches:
        torch.testing.assert_close(k.float(), k2.float(), atol=0.05, rtol=0.05)
        torch.testing.assert_close(v.float(), v2.float(), atol=0.05, rtol=0.05)


@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("rows", [1, 3, 9])
def test_native_int8_decode_equals_fp32_over_the_dequantized_weights(rows: int) -> None:
    # Per-output-channel scales are per row, so quantizing the fused QKV and gate/up matrices
    # is quantizing each projection: an fp32 model over q * scale is the exact int8 reference.
    config = _odd_config()
    weights = random_weights(config, seed=11)
    projections = [n for n in weights if n.endswith("proj.weight")] + [LM_HEAD]
    for name in projections:
        q, scales = quantize_int8(weights[name])
        weights[name] = q.float() * scales[:, None]
    ours, _, _ = _decode_both_ways(torch.float32, rows, int8=True, weights=weights)
    exact, _, _ = _decode_both_ways(torch.float32, rows, weights=weights)
    torch.testing.assert_close(ours, exact, atol=1e-4, rtol=1e-4)


def test_int8_native_weights_count_their_bytes() -> None:
    config = tiny_config()
    weights = random_weights(config)
    plain = LlamaModel(
        config, weights, dtype=torch.float32, device=CPU, max_len=16, native_layout=pack_weight
    )
    quant = LlamaModel(
        config,
        weights,
        dtype=torch.float32,
        device=CPU,
        max_len=16,
        native_layout=functools.partial(pack_weight, int8=True),
    )
    # int8 codes plus fp32 scales, against fp32 weights: a bit over a quarter of the bytes.
    ratio = quant.weight_bytes_per_token() / plain.weight_bytes_per_token()
    assert 0.25 < ratio < 0.3


@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("rows", [1, 7, 70])
def test_native_matmul_equals_the_dense_product(rows: int) -> None:
    _check_matmul(_NATIVE, rows)


def _check_matmul(library: NativeLibrary, rows: int) -> None:
    # Output widths that are not multiples of the 32-row tiles, inputs not multiples of 16;
    # 70 rows: whole 8-row groups and a tail.
    gen = torch.Generator().manual_seed(rows)
    matmul = NativeMatmul(library)
    for out, inner in ((321, 72), (100, 130)):
        weight = torch.randn(out, inner, generator=gen)
        x = torch.randn(rows, inner, generator=gen)
        want = F.linear(x, weight)
        got = matmul(pack_weight(weight), x, out)
        # fp32 sums in another order than oneDNN's: equal to about 1e-6 of their magnitude.
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        # bf16: the product of the rounded operands, rounded once at the end.
        wb, xb = weight.bfloat16(), x.bfloat16()
        got_bf16 = matmul(pack_weight(wb), xb, out)
        assert got_bf16.dtype == torch.bfloat16
        want_bf16 = F.linear(xb.float(), wb.float()).bfloat16()
        torch.testing.assert_close(got_bf16, want_bf16, atol=1e-2, rtol=1e-2)
        # int8: the dequantized codes, whatever the activations' dtype.
        q, scales = quantize_int8(weight)
        got_int8 = matmul(pack_weight(weight, int8=True), x, out)
        want_int8 = F.linear(x, q.float() * scales[:, None])
        torch.testing.assert_close(got_int8, want_int8, atol=1e-4, rtol=1e-4)
    with pytest.raises(EngineError, match="input width 71"):
        matmul(pack_weight(torch.zeros(8, 72)), torch.zeros(1, 71), 8)


#: Each vector path of decode.c, forced with $INFERNO_NATIVE_CFLAGS on an x86 machine that has
#: a wider one, so all of them stay correct whichever CPU runs the tests ("avx2-unbuffered":
#: the AVX2 bf16 fallback for when the buffer of widened inputs cannot be allocated).
_FORCED = {
    "avx2": "-mno-avx512f",
    "avx2-unbuffered": "-mno-avx512f -DINFERNO_NO_WIDEN_BUFFER",
    "portable": "-mno-avx512f -mno-avx2 -mno-fma",
}


@pytest.fixture(scope="module")
def forced_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, NativeLibrary]:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the forced builds use x86 flags")
    built = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INFERNO_CACHE_DIR", str(tmp_path_factory.mktemp("isa")))
        for isa, flags in _FORCED.items():
            mp.setenv(build.FLAGS_ENV, flags)
            built[isa] = build._load("decode")
    return built


def test_the_build_reports_its_vector_path(forced_builds: dict[str, NativeLibrary]) -> None:
    assert _NATIVE.isa in ("avx512-bf16", "avx512", "avx2", "portable")
    assert forced_builds["portable"].isa == "portable"
    # A CPU without AVX2 builds the portable loops even when asked for no more than AVX2.
    for isa in ("avx2", "avx2-unbuffered"):
        assert forced_builds[isa].isa == ("portable" if _NATIVE.isa == "portable" else "avx2")
    paths = {lib.path for lib in forced_builds.values()}
    # The flags are part of the cache key: a library per build.
    assert len(paths) == len(_FORCED)
    assert _NATIVE.path not in paths


@pytest.mark.usefixtures("two_threads")
@pytest.mark.parametrize("isa", sorted(_FORCED))
def test_every_vector_path_computes_the_same_products_and_steps(
    isa: str, forced_builds: dict[str, NativeLibrary]
) -> None:
    library = forced_builds[isa]
    assert library.lib is not None, library.reason
    for rows in (1, 7, 12, 70):
        _check_matmul(library, rows)
    for rows in (1, 5, 9):
        ours, want, _ = _decode_both_ways(torch.float32, rows, library=library)
        torch.testing.assert_close(ours, want, atol=1e-4, rtol=1e-4)
    ours, _, _ = _decode_both_ways(torch.bfloat16, 5, library=library)
    best, _, _ = _decode_both_ways(torch.bfloat16, 5)
    exact, _, _ = _decode_both_ways(torch.float32, 5)
    # Sums in another order than the default build's, over the same bf16 operands.
    assert float((ours - exact).abs().max()) <= 1.25 * float((best - exact).abs().max()) + 1e-3
    for config in (_odd_config(), _wide_head_config()):
        mixed, want, _, _ = _mixed_both_ways(torch.float32, library, config)
        torch.testing.assert_close(mixed, want, atol=1e-4, rtol=1e-4)
        mixed_bf16, want_bf16, _, _ = _mixed_both_ways(torch.bfloat16, library, config)
        mixed_exact, _, _, _ = _mixed_both_ways(torch.float32, config=config)
        err = float((mixed_bf16 - mixed_exact).abs().max())
        assert err <= 1.25 * float((want_bf16 - mixed_exact).abs().max()) + 1e-3
    # Long contexts: the prefill tiles and the decode ranges of this build's vector width.
    long_config = _grouped_config(9, 3, 16)
    for both_ways in (_long_chunks_both_ways, _long_decodes_both_ways):
        ours, want = both_ways(long_config, torch.float32, 2, library)
        torch.testing.assert_close(ours, want, atol=1e-4, rtol=1e-4)


def test_with_native_matmuls_the_packed_copy_is_the_only_one() -> None:
    def projections(**kwargs: object) -> list[Projection]:
        model = tiny_llm_engine(seed=5, **kwargs).runner.model
        layers = model.layers
        return [p for lay in layers for p in (lay.qkv, lay.o, lay.gate_up, lay.down)]

    for p in projections():
        assert p.native is not None
        assert p.matmul is not None
        assert (p.packed, p.gemv, p.int8) == (None, None, None)
    for p in projections(cpu_native_matmuls=False):
        assert p.native is not None
        assert p.matmul is None
        assert p.packed is not None or p.gemv is not None  # oneDNN's copy for prefill


@pytest.mark.usefixtures("two_threads")
def test_greedy_tokens_are_the_same_with_native_or_onednn_prefill() -> None:
    # Staggered arrivals and an 8-token budget: prefill chunks in every other step.
    native = _greedy({"cpu_native_matmuls": True}, staggered=True)
    assert native == _greedy({"cpu_native_matmuls": False}, staggered=True)
    assert native == _greedy({"cpu_native_decode": False}, staggered=True)


def test_native_takes_steps_within_max_rows_and_the_prefill_context() -> None:
    config = tiny_config()
    model = LlamaModel(
        config,
        random_weights(config),
        dtype=torch.float32,
        device=CPU,
        max_len=32,
        native_layout=pack_weight,
    )
    native = NativeDecoder(model, max_rows=2, max_prefill_context=6)
    assert native.can_run(_decode_meta([3, 4], width=16))
    assert not native.can_run(_decode_meta([3, 4, 5], width=16))
    mixed = _decode_meta([3], width=16)
    mixed.prefills = [PrefillSegment(1, 3, 6, torch.arange(6) + 16)]
    assert native.can_run(mixed)
    mixed.prefills.append(PrefillSegment(3, 10, 7, None))  # one token past the limit
    assert not native.can_run(mixed)
    with pytest.raises(EngineError, match="not a step the native path takes"):
        native.run(torch.tensor([1, 2, 3]), _decode_meta([3, 4, 5], width=16), [])


def _wide_head_config() -> ModelConfig:
    # Heads of 72: one 64-wide register block of the C attention's weighted sum, and a tail.
    return tiny_config(
        hidden_size=144,
        intermediate_size=100,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=321,
        num_hidden_layers=2,
    )


def _qwen3_config() -> ModelConfig:
    # Query/key head norms in C, on heads wider than hidden / heads (4 x 36 = 144 > 72).
    return tiny_config(
        architecture="qwen3",
        hidden_size=72,
        head_dim=36,
        intermediate_size=100,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=321,
        llama3_rope=False,
    )


MIXED_CONFIGS = pytest.mark.parametrize(
    "config",
    [
        _odd_config(),
        _wide_head_config(),
        _qwen3_config(),
        # Layer 3 of 4 unrotated, in C as in torch.
        tiny_config(architecture="smollm3", hidden_size=72, num_hidden_layers=4, vocab_size=321),
    ],
    ids=["odd", "wide-heads", "qwen3", "smollm3"],
)


def _mixed_both_ways(
    dtype: torch.dtype,
    library: NativeLibrary | None = None,
    config: ModelConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, ...]], torch.Tensor]:
    """One step of two decodes, a prompt's second chunk (its first chunk cached), a one-token
    chunk from the middle of a prompt and a whole fresh prompt, natively and in torch: the
    logits of the sampled rows, the caches each wrote, and the logits of a step that samples
    nothing (native). ``config`` defaults to `_odd_config`."""
    config = config or _odd_config()
    model = LlamaModel(
        config,
        random_weights(config, seed=13),
        dtype=dtype,
        device=CPU,
        max_len=96,
        native_layout=pack_weight,
    )
    native = NativeDecoder(model, max_rows=16, library=library)
    width = 32
    vocab = config.vocab_size
    prompts = [[(5 * j + i) % vocab for j in range(n)] for i, n in enumerate((5, 14, 6, 9))]
    caches = _prefilled(model, prompts, width)
    decodes = _decode_meta([5, 14], width)
    # Sequence 2 continues with 5 tokens after its 6 cached ones; sequence 3 computes its
    # 10th token (a one-token chunk, unsampled); sequence 4 is a fresh 7-token prompt.
    chunk = [(11 * j + 1) % vocab for j in range(5)]
    fresh = [(13 * j + 2) % vocab for j in range(7)]
    ids = torch.tensor([3, 4, *chunk, 17, *fresh])
    positions = torch.cat(
        [decodes.positions, torch.arange(6, 11), torch.tensor([9]), torch.arange(7)]
    )
    slot_mapping = torch.cat(
        [
            decodes.slot_mapping,
            torch.arange(6, 11) + 2 * width,
            torch.tensor([9 + 3 * width]),
            torch.arange(7) + 4 * width,
        ]
    )
    # The one-token chunk attends like a decode row; sequence 4 has a region of its own.
    caches = [
        (
            torch.cat([k, torch.zeros(width, *k.shape[1:], dtype=dtype)]),
            torch.cat([v, torch.zeros(width, *v.shape[1:], dtype=dtype)]),
        )
        for k, v in caches
    ]
    assert decodes.decode_slots is not None
    assert decodes.decode_context_lens is not None
    row3 = torch.zeros(1, decodes.decode_slots.shape[1], dtype=torch.long)
    row3[0, :10] = torch.arange(10) + 3 * width
    meta = AttentionMetadata(
        positions=positions,
        slot_mapping=slot_mapping,
        num_decodes=3,
        decode_slots=torch.cat([decodes.decode_slots, row3]),
        decode_context_lens=torch.cat([decodes.decode_context_lens, torch.tensor([10])]),
        prefills=[
            PrefillSegment(3, 8, 11, torch.arange(11) + 2 * width),
            PrefillSegment(8, 15, 7, None),
        ],
        logits_indices=torch.tensor([0, 1, 7, 14]),
    )
    theirs = [(k.clone(), v.clone()) for k, v in caches]
    assert native.can_run(meta)
    ours = native.run(ids, meta, caches)
    with torch.inference_mode():
        want = model.forward(ids, meta, theirs)
    pairs = [(k, v, k2, v2) for (k, v), (k2, v2) in zip(caches, theirs, strict=True)]
    silent = AttentionMetadata(
        positions=torch.arange(4),
        slot_mapping=torch.arange(4) + 4 * width + 8,
        num_decodes=0,
        decode_slots=None,
        decode_context_lens=None,
        prefills=[PrefillSegment(0, 4, 4, None)],
        logits_indices=torch.tensor([], dtype=torch.long),
    )
    none = native.run(
        torch.tensor([1, 2, 3, 4]), silent, [(k.clone(), v.clone()) for k, v in caches]
    )
    return ours, want, pairs, none


@pytest.mark.usefixtures("two_threads")
@MIXED_CONFIGS
def test_native_mixed_prefill_and_decode_step_matches_the_torch_path(config: ModelConfig) -> None:
    ours, want, pairs, none = _mixed_both_ways(torch.float32, config=config)
    assert ours.shape == want.shape == (4, config.vocab_size)
    torch.testing.assert_close(ours, want, atol=1e-4, rtol=1e-4)
    for k, v, k2, v2 in pairs:
        torch.testing.assert_close(k, k2, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v, v2, atol=1e-5, rtol=1e-5)
    assert none.shape == (0, config.vocab_size)


@pytest.mark.usefixtures("two_threads")
@MIXED_CONFIGS
def test_native_bf16_mixed_step_is_as_close_to_fp32_as_the_torch_bf16_path(
    config: ModelConfig,
) -> None:
    ours, want, _, _ = _mixed_both_ways(torch.bfloat16, config=config)
    exact, _, _, _ = _mixed_both_ways(torch.float32, config=config)
    assert float((ours - exact).abs().max()) <= 1.25 * float((want - exact).abs().max()) + 1e-3


def test_native_needs_packed_weights_and_a_supported_dtype() -> None:
    config = tiny_config()
    weights = random_weights(config)
    plain = LlamaModel(config, weights, dtype=torch.float32, device=CPU, max_len=16)
    with pytest.raises(EngineError, match="native-layout"):
        NativeDecoder(plain)
    half = LlamaModel(config, weights, dtype=torch.float16, device=CPU, max_len=16)
    with pytest.raises(EngineError, match="float32 and bfloat16"):
        NativeDecoder(half)


def _greedy(engine_kwargs: dict[str, object], *, staggered: bool = False) -> list[list[int]]:
    """Greedy tokens of four prompts; ``staggered`` adds one every third step, with a small
    token budget, so prefill chunks share steps with running decodes."""
    if staggered:
        engine_kwargs = {"max_num_batched_tokens": 8, **engine_kwargs}
    engine = tiny_llm_engine(seed=5, kv_cache_bytes=1 << 20, **engine_kwargs)
    prompts = [tuple(range(1 + i, 12 + 3 * i)) for i in range(4)]
    requests = [
        GenerationRequest(
            request_id=str(i),
            prompt_token_ids=p,
            sampling=SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True),
        )
        for i, p in enumerate(prompts)
    ]
    tokens: dict[str, list[int]] = {str(i): [] for i in range(len(prompts))}
    step = 0
    while requests or engine.has_work():
        if requests and (not staggered or step % 3 == 0):
            for r in requests if not staggered else requests[:1]:
                engine.add_request(r)
            requests = [] if not staggered else requests[1:]
        for out in engine.step():
            tokens[out.request_id].extend(out.token_ids)
        step += 1
    assert engine.scheduler.block_manager.num_used_blocks == 0
    return [tokens[str(i)] for i in range(len(prompts))]


@pytest.mark.usefixtures("two_threads")
def test_engine_greedy_tokens_are_the_same_with_and_without_native_decode() -> None:
    with_native = _greedy({"cpu_native_decode": True})
    without = _greedy({"cpu_native_decode": False})
    assert with_native == without
    assert all(len(t) == 24 for t in with_native)


@pytest.mark.usefixtures("two_threads")
def test_mixed_steps_run_natively_in_one_pass_and_keep_the_tokens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import inferno_inference.runner as runner

    splits = 0
    native_prefills = 0
    real_split = runner._split_decodes
    real_run = NativeDecoder.run

    def counting_split(
        meta: AttentionMetadata,
    ) -> tuple[AttentionMetadata, AttentionMetadata] | None:
        nonlocal splits
        out = real_split(meta)
        splits += out is not None
        return out

    def counting_run(
        self: NativeDecoder,
        ids: torch.Tensor,
        meta: AttentionMetadata,
        kv: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        nonlocal native_prefills
        native_prefills += bool(meta.prefills and meta.num_decodes)
        return real_run(self, ids, meta, kv)

    monkeypatch.setattr(runner, "_split_decodes", counting_split)
    monkeypatch.setattr(NativeDecoder, "run", counting_run)
    with_native = _greedy({"cpu_native_decode": True}, staggered=True)
    assert native_prefills > 0
    assert splits == 0
    assert with_native == _greedy({"cpu_native_decode": False}, staggered=True)
    assert with_native == _greedy({"cpu_native_decode": True})  # batching does not matter
    # With prefill kept out of the C path, mixed steps split: decodes in C, chunks in torch.
    native_prefills = 0
    split = _greedy(
        {"cpu_native_decode": True, "cpu_native_max_prefill_context": 0}, staggered=True
    )
    assert splits > 0
    assert native_prefills == 0
    assert split == with_native


def test_the_engine_falls_back_to_torch_without_native_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import inferno_inference.factory as factory

    monkeypatch.setattr(factory, "load_native", lambda name: NativeLibrary(None, "no compiler"))
    engine = tiny_llm_engine(seed=5)
    assert engine.runner.native is None
    assert _greedy({"cpu_native_decode": False}) == _greedy({"cpu_native_decode": True})


def test_engine_config_knobs_are_validated() -> None:
    with pytest.raises(ValueError, match="cpu_native_max_rows"):
        EngineConfig(cpu_native_max_rows=0)


def test_a_missing_compiler_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERNO_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    lib = build._load("decode")
    assert lib.lib is None
    assert "no-such-cc" in lib.reason
    assert not list((tmp_path / "kernels").glob("*.so"))


def test_a_failing_build_is_reported_with_the_compiler_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_cc = tmp_path / "fake-cc"
    fake_cc.write_text("#!/bin/sh\necho 'fatal: this compiler refuses' >&2\nexit 1\n")
    fake_cc.chmod(0o755)
    monkeypatch.setenv("INFERNO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(fake_cc))
    lib = build._load("decode")
    assert lib.lib is None
    assert "this compiler refuses" in lib.reason


def test_builds_are_cached_per_machine_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERNO_CACHE_DIR", str(tmp_path))
    first = build._load("decode")
    assert first.lib is not None
    assert first.path is not None
    assert first.path.parent == tmp_path / "kernels"
    stamp = first.path.stat().st_mtime_ns
    second = build._load("decode")
    assert second.path == first.path
    assert first.path.stat().st_mtime_ns == stamp  # loaded, not rebuilt
    assert not list(first.path.parent.glob("*.tmp"))


@pytest.mark.usefixtures("two_threads")
def test_steps_from_several_python_threads_are_serialized_and_correct() -> None:
    want, _, _ = _decode_both_ways(torch.float32, 3)
    results: list[torch.Tensor] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                results.append(_decode_both_ways(torch.float32, 3)[0])
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert len(results) == 9
    for got in results:
        # fp32 sums in another order than oneDNN's: equal to about 1e-6 of their magnitude.
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_mixed_steps_with_an_unsampled_single_token_chunk_keep_the_tokens() -> None:
    # A 4-token budget and arrivals every other step: some mixed steps hold a decode, a
    # one-token chunk from the middle of a prompt (not sampled) and a final prefill chunk
    # (sampled), so the logits of the C decodes and the torch prefill must be told apart by
    # the token they belong to, not by the count of single-token rows.
    config = tiny_config()
    weights = random_weights(config, seed=3)

    def run(native: bool) -> dict[str, list[int]]:
        engine = tiny_llm_engine(
            config=config,
            weights=weights,
            cpu_native_decode=native,
            max_num_batched_tokens=4,
            max_num_seqs=4,
        )
        sp = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
        requests = [
            GenerationRequest(f"r{i}", tuple(range(10 + i, 10 + i + n)), sp)
            for i, n in enumerate((3, 12, 3))
        ]
        out: dict[str, list[int]] = {}
        step = 0
        while requests or engine.has_work():
            if requests and step % 2 == 0:
                engine.add_request(requests.pop(0))
            for o in engine.step():
                assert o.error is None
                out.setdefault(o.request_id, []).extend(o.token_ids)
            step += 1
        return out

    native = run(True)
    assert native == run(False)
    assert [len(native[f"r{i}"]) for i in range(3)] == [5, 5, 5]


def _grouped_config(heads: int, kv_heads: int, head_dim: int) -> ModelConfig:
    return tiny_config(
        hidden_size=heads * head_dim,
        intermediate_size=96,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=321,
        num_hidden_layers=2,
    )


def _packed_model(config: ModelConfig, dtype: torch.dtype, seed: int, max_len: int) -> LlamaModel:
    return LlamaModel(
        config,
        random_weights(config, seed=seed),
        dtype=dtype,
        device=CPU,
        max_len=max_len,
        native_layout=pack_weight,
    )


def _scattered_caches(
    model: LlamaModel, n_slots: int
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Empty KV caches of ``n_slots`` slots, and the slots in a shuffled order, as paging
    hands them out."""
    order = torch.randperm(n_slots, generator=torch.Generator().manual_seed(5))
    return _empty_caches(model, n_slots), order


def _both_ways(
    native: NativeDecoder,
    ids: torch.Tensor,
    meta: AttentionMetadata,
    caches: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's logits from the C path and from torch, each on its own copy of ``caches``."""
    theirs = [(k.clone(), v.clone()) for k, v in caches]
    assert native.can_run(meta)
    ours = native.run(ids, meta, caches)
    with torch.inference_mode():
        want = native.model.forward(ids, meta, theirs)
    return ours, want


def _long_chunks_both_ways(
    config: ModelConfig, dtype: torch.dtype, threads: int, library: NativeLibrary | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A step of a 150-token chunk after 100 cached tokens (slots scattered as paging leaves
    them), a fresh 70-token prompt and a decode, natively and in torch: the logits of every
    chunk token and the decode. Their contexts span several 64-key blocks and several tiles."""
    model = _packed_model(config, dtype, seed=21, max_len=320)
    native = NativeDecoder(
        model, max_rows=16, max_prefill_context=1 << 20, threads=threads, library=library
    )
    vocab = config.vocab_size
    caches, order = _scattered_caches(model, 640)
    long_slots, fresh_slots, dec_slots = order[:250], order[250:320], order[320:352]
    long_ids = [(7 * j + 3) % vocab for j in range(250)]
    dec_ids = [(5 * j + 1) % vocab for j in range(32)]
    _prefill(model, long_ids[:100], long_slots[:100], caches)
    _prefill(model, dec_ids[:31], dec_slots[:31], caches)
    fresh_ids = [(11 * j + 2) % vocab for j in range(70)]
    ids = torch.tensor([dec_ids[31], *long_ids[100:], *fresh_ids])
    meta = AttentionMetadata(
        positions=torch.cat([torch.tensor([31]), torch.arange(100, 250), torch.arange(70)]),
        slot_mapping=torch.cat([dec_slots[31:], long_slots[100:], fresh_slots]),
        num_decodes=1,
        decode_slots=dec_slots[None, :],
        decode_context_lens=None,
        prefills=[PrefillSegment(1, 151, 250, long_slots), PrefillSegment(151, 221, 70, None)],
        logits_indices=torch.arange(221),
    )
    return _both_ways(native, ids, meta, caches)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim"),
    [(4, 2, 16), (9, 3, 16), (2, 1, 72), (4, 4, 32), (8, 1, 16)],
    ids=["group2", "group3", "wide-heads", "no-grouping", "group8"],
)
@pytest.mark.parametrize("threads", [1, 3])
def test_long_prefill_chunks_in_tiles_match_the_torch_path(
    heads: int, kv_heads: int, head_dim: int, threads: int
) -> None:
    config = _grouped_config(heads, kv_heads, head_dim)
    ours, want = _long_chunks_both_ways(config, torch.float32, threads)
    torch.testing.assert_close(ours, want, atol=1e-4, rtol=1e-4)


def test_long_bf16_prefill_chunks_are_as_close_to_fp32_as_the_torch_bf16_path() -> None:
    config = _grouped_config(9, 3, 16)
    ours, want = _long_chunks_both_ways(config, torch.bfloat16, 2)
    exact, _ = _long_chunks_both_ways(config, torch.float32, 2)
    assert float((ours - exact).abs().max()) <= 1.25 * float((want - exact).abs().max()) + 1e-3


def _long_decodes_both_ways(
    config: ModelConfig, dtype: torch.dtype, threads: int, library: NativeLibrary | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step of four sequences natively and in torch (their logits)."""
    # Contexts of several 256-key ranges (merged after the threads take them apart), of one
    # range plus a partial block, and of one key; slots scattered as paging leaves them.
    model = _packed_model(config, dtype, seed=23, max_len=1024)
    native = NativeDecoder(model, max_rows=8, threads=threads, library=library)
    lengths = [700, 257, 33, 0]
    caches, order = _scattered_caches(model, 1100)
    slot_lists, start = [], 0
    for i, n in enumerate(lengths):
        slots = order[start : start + n + 1]
        start += n + 1
        slot_lists.append(slots)
        if n:
            _prefill(
                model,
                [(5 * j + 3 * i + 1) % config.vocab_size for j in range(n)],
                slots[:n],
                caches,
            )
    span = max(lengths) + 1
    decode_slots = torch.zeros(len(lengths), span, dtype=torch.long)
    for i, slots in enumerate(slot_lists):
        decode_slots[i, : slots.numel()] = slots
    meta = AttentionMetadata(
        positions=torch.tensor(lengths),
        slot_mapping=torch.stack([slots[-1] for slots in slot_lists]),
        num_decodes=len(lengths),
        decode_slots=decode_slots,
        decode_context_lens=torch.tensor([n + 1 for n in lengths]),
        prefills=[],
        logits_indices=torch.arange(len(lengths)),
    )
    ids = torch.tensor([7, 8, 9, 10])
    return _both_ways(native, ids, meta, caches)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim"),
    [(9, 3, 16), (4, 4, 32), (8, 1, 16), (2, 1, 72)],
    ids=["group3", "no-grouping", "group8", "wide-heads"],
)
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_decode_rows_over_long_contexts_match_the_torch_path(
    heads: int, kv_heads: int, head_dim: int, threads: int, dtype: torch.dtype
) -> None:
    config = _grouped_config(heads, kv_heads, head_dim)
    ours, want = _long_decodes_both_ways(config, dtype, threads)
    if dtype == torch.float32:
        torch.testing.assert_close(ours, want, atol=1e-4, rtol=1e-4)
    else:
        # bf16 rounds at other points in each path (the C scores multiply bf16 pairs): as
        # close to the fp32 logits as torch's bf16 path is.
        exact, _ = _long_decodes_both_ways(config, torch.float32, threads)
        err, theirs = (float((x - exact).abs().max()) for x in (ours, want))
        assert err <= 1.25 * theirs + 1e-3
