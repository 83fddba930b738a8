"""LoRA adapters in llama.cpp's GGUF format: a PEFT adapter written as llama.cpp's converter
writes it merges into the same weights as the PEFT adapter itself (whose merge test_lora checks
against peft's ``merge_and_unload``), and files that are malformed, not LoRA adapters or not
mergeable are typed errors naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from inferno_models import (
    LlamaLoader,
    LoadedModel,
    ModelFormatError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from inferno_models.config import ModelConfig
from inferno_models.gguf_loader import ROPE_PERMUTED, permute_rope
from inferno_models.lora import LoraAdapter, apply_lora, load_lora
from inferno_models.testing import (
    random_weights,
    tiny_config,
    write_gguf_lora,
    write_peft_adapter,
    write_tiny_gguf,
)

CONFIGS = {
    "llama": tiny_config(),
    "qwen2": tiny_config(architecture="qwen2", llama3_rope=False),
    "qwen3": tiny_config(architecture="qwen3", llama3_rope=False, head_dim=32),
    "smollm3": tiny_config(architecture="smollm3", num_hidden_layers=4),
}
Q = "model.layers.0.self_attn.q_proj.weight"
K = "model.layers.1.self_attn.k_proj.weight"


def _hf(config: ModelConfig) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(**config.to_hf_dict())
    return AutoModelForCausalLM.from_config(hf_config)


def peft_adapter(directory: Path, config: ModelConfig, **lora: Any) -> LoraAdapter:
    """A PEFT adapter (random matrices) of a transformers model of ``config``, saved to
    ``directory`` and read back."""
    write_peft_adapter(directory, _hf(config), **lora)
    return load_lora(directory)


@pytest.fixture(scope="module", params=list(CONFIGS))
def base(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """A tiny model of each architecture, loaded from a GGUF file (Q/K rows un-permuted)."""
    config = CONFIGS[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    path = write_tiny_gguf(directory / "base.gguf", config, random_weights(config, seed=7))
    return LlamaLoader().load(path)


@pytest.mark.parametrize(
    "lora",
    [{}, {"rank_pattern": {"down_proj": 2, "q_proj": 6}}, {"target_modules": ["q_proj", "k_proj"]}],
    ids=["all-projections", "rank-pattern", "q-and-k"],
)
def test_a_converted_adapter_merges_as_the_peft_one(
    base: LoadedModel, tmp_path: Path, lora: dict[str, Any]
) -> None:
    peft = peft_adapter(tmp_path / "peft", base.config, **lora)
    path = write_gguf_lora(tmp_path / "adapter.gguf", base.config, peft)
    adapter = load_lora(path)
    assert (adapter.path, adapter.name) == (path, "adapter")
    assert (adapter.alpha, adapter.rank) == (
        peft.alpha,
        max(a.shape[0] for a, _, _ in peft.pairs.values()),
    )
    assert adapter.architecture == base.config.architecture
    assert {n: s for n, (_, _, s) in adapter.pairs.items()} == {
        n: s for n, (_, _, s) in peft.pairs.items()
    }
    expected = apply_lora(base, peft)
    merged = apply_lora(base, adapter)
    for name, tensor in merged.weights.items():
        torch.testing.assert_close(tensor, expected.weights[name], rtol=0, atol=0, msg=name)
    changed = next(iter(peft.pairs))
    assert not torch.equal(merged.weights[changed], base.weights[changed])


def test_llama_q_and_k_rows_are_stored_permuted_and_restored(
    base: LoadedModel, tmp_path: Path
) -> None:
    """The file holds a Llama (or SmolLM3) adapter's Q/K ``lora_b`` in llama.cpp's rotary
    order (what ``gguf``'s own reader sees), its ``lora_a`` and every other matrix as they
    are; Qwen adapters are not permuted."""
    from gguf import GGUFReader

    config = base.config
    peft = peft_adapter(tmp_path / "peft", config)
    path = write_gguf_lora(tmp_path / "adapter.gguf", config, peft)
    stored = {t.name: torch.from_numpy(np.array(t.data)) for t in GGUFReader(path).tensors}
    a, b, _ = peft.pairs[Q]
    _, k_b, _ = peft.pairs[K]
    llama = config.architecture in ROPE_PERMUTED
    q_rows = permute_rope(b, config.num_attention_heads) if llama else b
    k_rows = permute_rope(k_b, config.num_key_value_heads) if llama else k_b
    torch.testing.assert_close(stored["blk.0.attn_q.weight.lora_b"], q_rows, rtol=0, atol=0)
    torch.testing.assert_close(stored["blk.1.attn_k.weight.lora_b"], k_rows, rtol=0, atol=0)
    torch.testing.assert_close(stored["blk.0.attn_q.weight.lora_a"], a, rtol=0, atol=0)
    v_b = peft.pairs["model.layers.0.self_attn.v_proj.weight"][1]
    torch.testing.assert_close(stored["blk.0.attn_v.weight.lora_b"], v_b, rtol=0, atol=0)
    assert llama != torch.equal(q_rows, b)  # the permutation moved rows (Llama only)
    adapter = load_lora(path)
    assert adapter.rope_permuted is llama
    torch.testing.assert_close(adapter.pairs[Q][1], q_rows, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("quantization", "tolerance"), [("F16", 2e-3), ("BF16", 1e-2), ("Q8_0", 1e-2)]
)
def test_a_stored_adapter_merges_close(
    base: LoadedModel, tmp_path: Path, quantization: str, tolerance: float
) -> None:
    """F16, BF16 and Q8_0 matrices (Q8_0 falls back to F16 for ``lora_b``, whose rows of
    rank 4 are not whole blocks, as llama.cpp's converter does) merge close to the exact
    merge."""
    from gguf import GGUFReader

    peft = peft_adapter(tmp_path / "peft", base.config)
    path = write_gguf_lora(tmp_path / "q.gguf", base.config, peft, quantization=quantization)
    kinds = {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}
    assert kinds["blk.0.attn_q.weight.lora_a"] == quantization
    assert kinds["blk.0.attn_q.weight.lora_b"] == (
        "F16" if quantization == "Q8_0" else quantization
    )
    expected = apply_lora(base, peft)
    merged = apply_lora(base, load_lora(path))
    for name in peft.pairs:
        delta = merged.weights[name] - base.weights[name]
        reference = expected.weights[name] - base.weights[name]
        torch.testing.assert_close(delta, reference, rtol=0, atol=tolerance * reference.abs().max())


def test_no_alpha_scales_by_one_and_each_pair_by_its_own_rank(tmp_path: Path) -> None:
    config = CONFIGS["llama"]
    gen = torch.Generator().manual_seed(0)
    pairs = {
        Q: (torch.randn(3, 64, generator=gen), torch.randn(64, 3, generator=gen)),
        "model.layers.0.mlp.down_proj.weight": (
            torch.randn(5, 128, generator=gen),
            torch.randn(64, 5, generator=gen),
        ),
    }
    plain = load_lora(write_gguf_lora(tmp_path / "plain.gguf", config, pairs))
    assert plain.alpha == 0.0
    assert [s for _, _, s in plain.pairs.values()] == [1.0, 1.0]
    scaled = load_lora(write_gguf_lora(tmp_path / "scaled.gguf", config, pairs, alpha=15.0))
    assert [s for _, _, s in scaled.pairs.values()] == [15.0 / 5, 15.0 / 3]  # down, q
    assert scaled.rank == 5
    model = LlamaLoader().load(write_tiny_gguf(tmp_path / "m.gguf", config, random_weights(config)))
    merged = apply_lora(model, plain)
    a, b = pairs[Q]
    torch.testing.assert_close(merged.weights[Q], model.weights[Q] + b @ a, rtol=1e-5, atol=1e-5)


def test_any_file_with_a_gguf_header_is_read_as_one(tmp_path: Path) -> None:
    config = CONFIGS["qwen2"]
    pairs = {Q: (torch.ones(2, 64), torch.ones(64, 2))}
    path = write_gguf_lora(tmp_path / "adapter.gguf", config, pairs, alpha=4.0)
    renamed = path.rename(tmp_path / "adapter.bin")
    adapter = load_lora(renamed)
    assert adapter.name == "adapter.bin"
    assert adapter.pairs[Q][2] == 2.0
    with pytest.raises(ModelNotFoundError):
        load_lora(tmp_path / "gone.gguf")


def test_the_base_model_comes_from_the_converters_model_card_keys(tmp_path: Path) -> None:
    pairs = {Q: (torch.ones(2, 64), torch.ones(64, 2))}
    url = {"general.base_model.0.repo_url": "https://huggingface.co/HuggingFaceTB/SmolLM2-135M"}
    named = {"general.base_model.0.name": "SmolLM2 135M"}
    config = CONFIGS["llama"]
    assert (
        load_lora(
            write_gguf_lora(tmp_path / "a.gguf", config, pairs, metadata={**named, **url})
        ).base_model
        == "HuggingFaceTB/SmolLM2-135M"
    )
    assert (
        load_lora(write_gguf_lora(tmp_path / "b.gguf", config, pairs, metadata=named)).base_model
        == "SmolLM2 135M"
    )
    assert load_lora(write_gguf_lora(tmp_path / "c.gguf", config, pairs)).base_model is None


def test_the_writer_refuses_scales_a_single_alpha_cannot_hold(tmp_path: Path) -> None:
    peft = peft_adapter(tmp_path / "peft", CONFIGS["llama"], use_rslora=True)
    with pytest.raises(ValueError, match="is not alpha / r"):
        write_gguf_lora(tmp_path / "x.gguf", CONFIGS["llama"], peft)


F32 = np.float32
GOOD_A, GOOD_B = np.zeros((2, 64), F32), np.zeros((64, 2), F32)


@pytest.mark.parametrize(
    ("pairs", "extra", "options", "error", "message"),
    [
        (
            {"model.embed_tokens.weight": (torch.zeros(2, 64), torch.zeros(320, 2))},
            {},
            {},
            UnsupportedModelError,
            r"adapts the token embeddings \(token_embd\.weight\)",
        ),
        (
            {"lm_head.weight": (torch.zeros(2, 64), torch.zeros(320, 2))},
            {},
            {},
            UnsupportedModelError,
            r"adapts the output head \(output\.weight\)",
        ),
        (
            {},
            {"blk.0.attn_norm.weight.lora_a": GOOD_A, "blk.0.attn_norm.weight.lora_b": GOOD_B},
            {},
            UnsupportedModelError,
            r"adapts blk\.0\.attn_norm\.weight; only the attention and MLP projections",
        ),
        (
            {},
            {
                "blk.0.ffn_gate_exps.weight.lora_a": GOOD_A,
                "blk.0.ffn_gate_exps.weight.lora_b": GOOD_B,
            },
            {},
            UnsupportedModelError,
            "only the attention and MLP projections",
        ),
        (
            {Q: (torch.zeros(2, 64), torch.zeros(64, 2))},
            {"blk.0.attn_norm.weight": np.ones(64, F32)},
            {},
            UnsupportedModelError,
            "replaces a norm weight",
        ),
        (
            {},
            {"blk.0.attn_q.weight": GOOD_B},
            {},
            UnsupportedModelError,
            r"blk\.0\.attn_q\.weight is not a LoRA matrix",
        ),
        ({}, {"blk.0.attn_q.weight.lora_a": GOOD_A}, {}, ModelFormatError, "has no lora_b"),
        ({}, {"blk.0.attn_q.weight.lora_b": GOOD_B}, {}, ModelFormatError, "has no lora_a"),
        (
            {Q: (torch.zeros(2, 64), torch.zeros(64, 3))},
            {},
            {},
            ModelFormatError,
            r"lora_a \[2, 64\] and lora_b \[64, 3\] do not make a product",
        ),
        (
            {},
            {
                "blk.0.attn_q.weight.lora_a": np.zeros((1, 2, 64), F32),
                "blk.0.attn_q.weight.lora_b": GOOD_B,
            },
            {},
            ModelFormatError,
            "do not make a product",
        ),
        ({}, {}, {}, ModelFormatError, "no LoRA matrices"),
        (
            {Q: (torch.zeros(2, 64), torch.zeros(64, 2))},
            {},
            {"adapter_type": "cvec"},
            UnsupportedModelError,
            "adapter.type is 'cvec'",
        ),
        (
            {Q: (torch.zeros(2, 64), torch.zeros(64, 2))},
            {},
            {"metadata": {"adapter.alora.invocation_tokens": [5, 6]}},
            UnsupportedModelError,
            "activated LoRA",
        ),
        (
            {Q: (torch.zeros(2, 64), torch.zeros(64, 2))},
            {},
            {"architecture": "gemma2"},
            UnsupportedModelError,
            "for architecture 'gemma2'",
        ),
        (
            {Q: (torch.zeros(2, 64), torch.zeros(64, 2))},
            {},
            {"metadata": {"adapter.lora.alpha": "x"}},
            ModelFormatError,
            "adapter.lora.alpha must be a number",
        ),
    ],
    ids=[
        "token-embd",
        "output",
        "norm-pair",
        "experts",
        "norm-vector",
        "bare-weight",
        "no-lora-b",
        "no-lora-a",
        "rank-mismatch",
        "three-dims",
        "empty",
        "other-adapter-type",
        "alora",
        "other-architecture",
        "bad-alpha",
    ],
)
def test_malformed_or_unmergeable_files_are_typed_errors(
    tmp_path: Path,
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
    extra: dict[str, np.ndarray[Any, Any]],
    options: dict[str, Any],
    error: type[ModelFormatError],
    message: str,
) -> None:
    path = write_gguf_lora(
        tmp_path / "bad.gguf", CONFIGS["llama"], pairs, extra_tensors=extra, **options
    )
    with pytest.raises(error, match=message) as info:
        load_lora(path)
    assert info.value.path == str(path)


def test_files_that_are_not_lora_adapters_are_refused_by_name(tmp_path: Path) -> None:
    import gguf

    config = CONFIGS["llama"]
    weights = random_weights(config)
    model = write_tiny_gguf(tmp_path / "model.gguf", config, weights)
    with pytest.raises(UnsupportedModelError, match=r"is a model \(general.type None") as info:
        load_lora(model)
    assert info.value.path == str(model)
    typed = write_tiny_gguf(
        tmp_path / "typed.gguf", config, weights, metadata={"general.type": "model"}
    )
    with pytest.raises(UnsupportedModelError, match=r"is a model \(general.type 'model'"):
        load_lora(typed)
    projector = write_tiny_gguf(
        tmp_path / "mmproj.gguf", config, weights, metadata={"general.type": "mmproj"}
    )
    with pytest.raises(UnsupportedModelError, match=r"not an adapter \(general.type 'mmproj'\)"):
        load_lora(projector)
    vector = tmp_path / "control.gguf"
    writer = gguf.GGUFWriter(str(vector), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_int32("controlvector.layer_count", 1)
    writer.add_tensor("direction.1", np.ones(64, F32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedModelError, match="is a control vector") as info:
        load_lora(vector)
    assert info.value.path == str(vector)
    not_gguf = tmp_path / "text.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        load_lora(not_gguf)


def test_an_adapter_is_not_a_model(tmp_path: Path) -> None:
    """Loaded as a model it is refused by name, and a models directory does not list it."""
    from inferno_models import ModelRepository

    pairs = {Q: (torch.zeros(2, 64), torch.zeros(64, 2))}
    path = write_gguf_lora(tmp_path / "adapter.gguf", CONFIGS["llama"], pairs)
    with pytest.raises(UnsupportedModelError, match=r"is an adapter .* not a model") as info:
        LlamaLoader().load(path)
    assert info.value.path == str(path)
    repository = ModelRepository(tmp_path, include_default=False)
    assert repository.list() == []
    with pytest.raises(UnsupportedModelError, match="is an adapter, not a model"):
        repository.resolve(str(path))


def test_a_truncated_file_names_its_tensor(tmp_path: Path) -> None:
    pairs = {Q: (torch.zeros(2, 64), torch.zeros(64, 2))}
    path = write_gguf_lora(tmp_path / "adapter.gguf", CONFIGS["llama"], pairs)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelFormatError, match=r"blk\.0\.attn_q\.weight\.lora_b is truncated"):
        load_lora(path)


def test_an_adapter_of_another_model_is_refused_at_merge(base: LoadedModel, tmp_path: Path) -> None:
    config = base.config
    wider = config.model_copy(update={"hidden_size": 128, "head_dim": config.head_dim * 2})
    pairs = {Q: (torch.zeros(2, 128), torch.zeros(wider.num_attention_heads * wider.head_dim, 2))}
    path = write_gguf_lora(tmp_path / "wide.gguf", wider, pairs)
    with pytest.raises(ModelFormatError, match="another base model") as info:
        apply_lora(base, load_lora(path))
    assert info.value.path == str(path)
    deep = {"model.layers.5.self_attn.q_proj.weight": pairs[Q]}
    path = write_gguf_lora(tmp_path / "deep.gguf", wider, deep)
    with pytest.raises(
        ModelFormatError, match=r"model\.layers\.5\.self_attn\.q_proj\.weight, which"
    ):
        apply_lora(base, load_lora(path))
    other = "qwen2" if config.architecture == "llama" else "llama"
    small = {Q: (torch.zeros(2, 64), torch.zeros(config.num_attention_heads * config.head_dim, 2))}
    path = write_gguf_lora(tmp_path / "other.gguf", config, small, architecture=other)
    with pytest.raises(ModelFormatError, match=f"is for a {other} model"):
        apply_lora(base, load_lora(path))
