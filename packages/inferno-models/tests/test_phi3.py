"""Phi-3 (Llama whose checkpoints fuse Q, K and V into ``qkv_proj`` and the gate and up
projections into ``gate_up_proj``): config.json, safetensors, GGUF and conversion, against
transformers' own Phi3, with and without the long-context rope scaling (longrope) of
Phi-3-*-128k and Phi-3.5. Loaded, a Phi-3 has the Llama layout, so the reference for what the
engine computes is transformers' Llama on the split weights."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from inferno_models import (
    GGUFFile,
    LlamaLoader,
    ModelConfig,
    ModelFormatError,
    RopeScaling,
    UnsupportedModelError,
    apply_lora,
    convert_gguf_to_hf,
    load_lora,
)
from inferno_models.names import checkpoint_shapes, expected_shapes, fuse
from inferno_models.safetensors_loader import read_safetensors
from inferno_models.testing import (
    random_weights,
    tiny_config,
    tiny_tokenizer,
    transformers_model,
    write_gguf_lora,
    write_peft_adapter,
    write_tiny_gguf,
    write_tiny_hf_dir,
)

IDS = torch.tensor([[5, 9, 40, 77, 3, 12, 90, 4]])
QKV = "model.layers.1.self_attn.qkv_proj.weight"
GATE_UP = "model.layers.1.mlp.gate_up_proj.weight"


@pytest.fixture
def phi3() -> ModelConfig:
    # Phi-3-mini's shape in small: GQA, untied head, no rope scaling.
    return tiny_config(architecture="phi3")


def _as_llama(config: ModelConfig) -> ModelConfig:
    return config.model_copy(update={"architecture": "llama"})


def _logits(model: Any, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits  # type: ignore[no-any-return]


def test_the_config_round_trips_through_transformers(phi3: ModelConfig, tmp_path: Path) -> None:
    from transformers import Phi3Config

    Phi3Config(**phi3.to_hf_dict()).save_pretrained(tmp_path)
    again = ModelConfig.from_hf_file(tmp_path / "config.json")
    assert again == phi3
    assert (again.architecture, again.qkv_bias, again.o_bias, again.rope_scaling) == (
        "phi3",
        False,
        False,
        None,
    )
    # Loaded, the tensors are Llama's; stored, Q/K/V and gate/up are one tensor each.
    q, kv = 4 * 16, 2 * 16
    assert expected_shapes(again)["model.layers.1.self_attn.k_proj.weight"] == (kv, 64)
    stored = checkpoint_shapes(again)
    assert stored[QKV] == (q + 2 * kv, 64)
    assert stored[GATE_UP] == (2 * 128, 64)
    split = (".q_proj.weight", ".k_proj.weight", ".gate_proj.weight", ".up_proj.weight")
    assert not any(n.endswith(split) for n in stored)


def test_parameter_count_matches_transformers(phi3: ModelConfig) -> None:
    weights = random_weights(phi3)
    hf = transformers_model(phi3, weights)
    assert type(hf).__name__ == "Phi3ForCausalLM"
    assert phi3.num_parameters() == sum(t.numel() for t in weights.values())
    assert sum(t.numel() for t in hf.parameters()) == phi3.num_parameters()


def test_phi3_has_no_biases_and_no_llama3_scaling(phi3: ModelConfig) -> None:
    with pytest.raises(ValueError, match="phi3 has no attention biases"):
        ModelConfig.model_validate({**phi3.model_dump(), "qkv_bias": True, "o_bias": True})
    with pytest.raises(ValueError, match="rope_scaling"):
        tiny_config(architecture="phi3", llama3_rope=True)
    # Its projections have no biases in transformers whatever the config says.
    assert not ModelConfig.from_hf_dict({**phi3.to_hf_dict(), "attention_bias": True}).o_bias


def test_a_sliding_window_is_kept_beside_the_context(phi3: ModelConfig, tmp_path: Path) -> None:
    hf = phi3.to_hf_dict()
    assert hf["sliding_window"] is None
    # Phi-3 has no use_sliding_window switch: a window is used (Phi-3-mini-4k's is 2047).
    windowed = ModelConfig.from_hf_dict({**hf, "sliding_window": 64})
    assert (windowed.max_position_embeddings, windowed.sliding_window) == (512, 64)
    # A window as wide as the context, or wider, changes nothing.
    for wide in (512, 2047):
        assert ModelConfig.from_hf_dict({**hf, "sliding_window": wide}).sliding_window is None
    from transformers import Phi3Config

    assert Phi3Config(**windowed.to_hf_dict()).sliding_window == 64
    assert ModelConfig.from_hf_dict(windowed.to_hf_dict()) == windowed
    weights = random_weights(phi3)
    path = write_tiny_gguf(tmp_path / "w.gguf", windowed, weights)
    assert GGUFFile(path).get("phi3.attention.sliding_window") == 64
    assert GGUFFile(path).config().sliding_window == 64
    # llama.cpp writes a window of 0 for a Phi-3 (Phi-4) without one.
    plain = write_tiny_gguf(tmp_path / "p.gguf", phi3, weights)
    assert GGUFFile(plain).get("phi3.attention.sliding_window") == 0
    assert GGUFFile(plain).config().sliding_window is None
    assert GGUFFile(plain).config().max_position_embeddings == 512
    broken = write_tiny_gguf(
        tmp_path / "b.gguf", phi3, weights, metadata={"phi3.attention.sliding_window": "wide"}
    )
    with pytest.raises(ModelFormatError, match="sliding_window"):
        GGUFFile(broken).config()


@pytest.fixture
def longrope() -> ModelConfig:
    # Phi-3-mini-128k's shape in small: an original context of 32 in a context of 128.
    return tiny_config(architecture="phi3", longrope=True)


def _scaling(config: ModelConfig) -> RopeScaling:
    assert config.rope_scaling is not None
    return config.rope_scaling


def _with_attention_factor(config: ModelConfig, value: float) -> ModelConfig:
    scaling = _scaling(config).model_copy(update={"attention_factor": value})
    return config.model_copy(update={"rope_scaling": scaling})


def test_the_tiny_longrope_config(longrope: ModelConfig) -> None:
    scaling = _scaling(longrope)
    assert (scaling.type, scaling.original_max_position_embeddings) == ("longrope", 32)
    assert (longrope.max_position_embeddings, scaling.factor) == (128, 4.0)
    assert scaling.attention_factor is None
    assert scaling.attention_scale == pytest.approx(math.sqrt(1 + math.log(4) / math.log(32)))
    short, long = np.array(scaling.short_factor), np.array(scaling.long_factor)
    assert short.shape == long.shape == (8,)
    assert ((short >= 1) & (short <= 1.5)).all()
    assert ((long >= 1) & (long <= 4)).all()
    # float32 values, as GGUF files store them, and the same every time.
    assert np.array_equal(short.astype(np.float32), short)
    assert np.array_equal(long.astype(np.float32), long)
    assert tiny_config(architecture="phi3", longrope=True) == longrope
    with pytest.raises(ValueError, match="llama3_rope or longrope"):
        tiny_config(architecture="phi3", longrope=True, llama3_rope=True)


@pytest.mark.parametrize("attention_factor", [None, 1.25])
@pytest.mark.parametrize("architecture", ["phi3", "llama"])
def test_longrope_round_trips_through_transformers(
    longrope: ModelConfig, tmp_path: Path, architecture: str, attention_factor: float | None
) -> None:
    from transformers import AutoConfig

    config = longrope.model_copy(update={"architecture": architecture})
    if attention_factor is not None:
        config = _with_attention_factor(config, attention_factor)
    hf = AutoConfig.for_model(**config.to_hf_dict())
    assert type(hf).__name__ == {"phi3": "Phi3Config", "llama": "LlamaConfig"}[architecture]
    assert ModelConfig.from_hf_dict(hf.to_dict()) == config
    hf.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    # transformers 5 writes it as rope_parameters.
    assert written["rope_parameters"]["rope_type"] == "longrope"
    assert ModelConfig.from_hf_file(tmp_path / "config.json") == config
    # What transformers computes from it is what the config says.
    assert hf.rope_parameters["original_max_position_embeddings"] == 32
    assert _hf_attention_scaling(hf) == pytest.approx(_scaling(config).attention_scale, rel=1e-12)


def _hf_attention_scaling(hf_config: Any) -> float:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    _, scaling = ROPE_INIT_FUNCTIONS["longrope"](hf_config, "cpu")
    return float(scaling)


@pytest.mark.parametrize("kind", ["longrope", "su"])
def test_longrope_as_phi3_config_json_spells_it(
    longrope: ModelConfig, tmp_path: Path, kind: str
) -> None:
    # Phi-3-mini-128k's config.json: the original context beside rope_scaling, no factor.
    scaling = _scaling(longrope)
    fields = {
        **longrope.to_hf_dict(),
        "original_max_position_embeddings": 32,
        "rope_scaling": {
            "type": kind,
            "long_factor": list(scaling.long_factor or ()),
            "short_factor": list(scaling.short_factor or ()),
        },
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(fields))
    assert ModelConfig.from_hf_file(path) == longrope


def test_su_saved_by_transformers_reads_as_longrope(longrope: ModelConfig, tmp_path: Path) -> None:
    from transformers import Phi3Config

    rope = _scaling(longrope)
    scaling = {
        "type": "su",
        # transformers 5 takes su's original context from inside rope_scaling only.
        "original_max_position_embeddings": 32,
        "long_factor": list(rope.long_factor or ()),
        "short_factor": list(rope.short_factor or ()),
    }
    Phi3Config(**{**longrope.to_hf_dict(), "rope_scaling": scaling}).save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())["rope_parameters"]
    assert (written["type"], written["rope_type"], "factor" in written) == ("su", "longrope", False)
    assert ModelConfig.from_hf_file(tmp_path / "config.json") == longrope


def test_longrope_reads_the_original_context_where_transformers_does(
    longrope: ModelConfig,
) -> None:
    from transformers import LlamaConfig, Phi3Config

    # Inside rope_scaling 16, beside it 32: transformers' Phi3 reads the one beside it, its
    # Llama the one inside.
    rope = _scaling(longrope)
    scaling = {
        "rope_type": "longrope",
        "original_max_position_embeddings": 16,
        "long_factor": list(rope.long_factor or ()),
        "short_factor": list(rope.short_factor or ()),
    }
    fields = {
        **longrope.to_hf_dict(),
        "rope_scaling": scaling,
        "original_max_position_embeddings": 32,
    }
    for family, hf_class in (("phi3", Phi3Config), ("llama", LlamaConfig)):
        data = {**fields, "model_type": family, "architectures": []}
        ours = _scaling(ModelConfig.from_hf_dict(data))
        theirs = hf_class.from_dict(data).rope_parameters
        assert ours.original_max_position_embeddings == theirs["original_max_position_embeddings"]
        # The factor, the context over the original one, gives the attention factor.
        assert ours.factor == 128 / ours.original_max_position_embeddings
        assert ours.attention_scale == pytest.approx(
            _hf_attention_scaling(hf_class.from_dict(data)), rel=1e-12
        )


def test_longrope_needs_the_original_context(longrope: ModelConfig, tmp_path: Path) -> None:
    fields = longrope.to_hf_dict()
    del fields["original_max_position_embeddings"]
    del fields["rope_scaling"]["original_max_position_embeddings"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(fields))
    with pytest.raises(
        ModelFormatError,
        match=r"config\.json: longrope rope_scaling needs original_max_position_embeddings",
    ):
        ModelConfig.from_hf_file(path)
    del fields["rope_scaling"]["short_factor"]
    fields["original_max_position_embeddings"] = 32
    path.write_text(json.dumps(fields))
    with pytest.raises(
        ModelFormatError, match=r"(?s)config\.json: .*longrope needs short_factor and long_factor"
    ):
        ModelConfig.from_hf_file(path)
    # One factor per frequency: a head of 16 has 8.
    fields["rope_scaling"] = {
        "type": "longrope",
        "short_factor": [1.0] * 7,
        "long_factor": [2.0] * 7,
    }
    path.write_text(json.dumps(fields))
    with pytest.raises(ModelFormatError, match=r"longrope has 7 factors for a rotary width of 16"):
        ModelConfig.from_hf_file(path)


def test_other_long_context_scalings_are_still_refused(longrope: ModelConfig) -> None:
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
    for family in ("phi3", "llama"):
        data = {**longrope.to_hf_dict(), "model_type": family, "rope_scaling": yarn}
        with pytest.raises(
            UnsupportedModelError, match=r"rope_scaling of type 'yarn' is not supported"
        ):
            ModelConfig.from_hf_dict(data)


def test_longrope_keeps_its_window(longrope: ModelConfig, tmp_path: Path) -> None:
    windowed = ModelConfig.from_hf_dict({**longrope.to_hf_dict(), "sliding_window": 64})
    assert (windowed.max_position_embeddings, windowed.sliding_window) == (128, 64)
    assert windowed.rope_scaling == longrope.rope_scaling
    from transformers import Phi3Config

    assert ModelConfig.from_hf_dict(Phi3Config(**windowed.to_hf_dict()).to_dict()) == windowed
    path = write_tiny_gguf(tmp_path / "w.gguf", windowed, random_weights(windowed))
    gguf = GGUFFile(path)
    assert (gguf.get("phi3.context_length"), gguf.get("phi3.attention.sliding_window")) == (128, 64)
    read = gguf.config()
    assert read == windowed.model_copy(update={"rms_norm_eps": read.rms_norm_eps})


@pytest.mark.parametrize("attention_factor", [None, 1.25])
def test_longrope_rotary_embedding_in_transformers(
    longrope: ModelConfig, attention_factor: float | None
) -> None:
    from transformers import Phi3Config
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    config = longrope
    if attention_factor is not None:
        config = _with_attention_factor(config, attention_factor)
    scaling = _scaling(config)
    rotary = Phi3RotaryEmbedding(config=Phi3Config(**config.to_hf_dict()))
    d, theta = config.head_dim, config.rope_theta
    base = theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d)
    short = 1.0 / (torch.tensor(scaling.short_factor, dtype=torch.float32) * base)
    long = 1.0 / (torch.tensor(scaling.long_factor, dtype=torch.float32) * base)
    assert torch.equal(rotary.inv_freq, short)
    assert rotary.attention_scaling == pytest.approx(scaling.attention_scale, rel=1e-12)
    if attention_factor is not None:
        assert rotary.attention_scaling == attention_factor
    # Past the original context it rotates by the long factors.
    x = torch.zeros(1, 40, d)
    rotary(x, torch.arange(40)[None])
    assert torch.equal(rotary.inv_freq, long)
    rotary(x, torch.arange(32)[None])
    assert torch.equal(rotary.inv_freq, short)


def test_a_longrope_checkpoint_loads(longrope: ModelConfig, tmp_path: Path) -> None:
    weights = random_weights(longrope, seed=12)
    reference = transformers_model(longrope, weights)
    assert type(reference).__name__ == "Phi3ForCausalLM"
    assert reference.model.rotary_emb.rope_type == "longrope"
    reference.save_pretrained(tmp_path / "ckpt")
    tiny_tokenizer().save(tmp_path / "ckpt")
    ours = LlamaLoader().load(tmp_path / "ckpt")
    assert ours.config == longrope
    assert set(ours.weights) == set(weights)
    directory = write_tiny_hf_dir(tmp_path / "hf", longrope, weights)
    assert LlamaLoader().load(directory).config == longrope


def test_a_longrope_gguf_loads_as_llama_cpp_writes_it(
    longrope: ModelConfig, tmp_path: Path
) -> None:
    weights = random_weights(longrope, seed=14)
    path = write_tiny_gguf(tmp_path / "p.gguf", longrope, weights)
    gguf = GGUFFile(path)
    names = {t.name for t in gguf.file_tensors}
    assert {"rope_factors_long.weight", "rope_factors_short.weight"} <= names
    scaling = _scaling(longrope)
    assert torch.equal(
        gguf.read_tensor("rope_factors_long.weight"), torch.tensor(scaling.long_factor)
    )
    # The converter writes the attention factor even when it is the default: read back, it
    # is the default again.
    assert gguf.get("phi3.rope.scaling.attn_factor") == pytest.approx(scaling.attention_scale)
    assert gguf.get("phi3.rope.scaling.original_context_length") == 32
    ours = LlamaLoader().load(path)
    assert ours.config == longrope.model_copy(update={"rms_norm_eps": ours.config.rms_norm_eps})
    # The factors are the config's, not weights.
    assert set(ours.weights) == set(weights)
    for name, tensor in weights.items():
        assert torch.equal(ours.weights[name], tensor), name
    # An attention factor of its own is kept (as float32 holds it).
    own = _with_attention_factor(longrope, 1.25)
    read = GGUFFile(write_tiny_gguf(tmp_path / "a.gguf", own, weights)).config()
    assert _scaling(read).attention_factor == 1.25


def test_a_longrope_gguf_that_is_not_whole_names_the_file(
    phi3: ModelConfig, longrope: ModelConfig, tmp_path: Path
) -> None:
    weights = random_weights(longrope)
    key = "phi3.rope.scaling.original_context_length"
    path = write_tiny_gguf(tmp_path / "o.gguf", longrope, weights, drop_metadata=(key,))
    with pytest.raises(ModelFormatError, match=rf"o\.gguf: missing metadata '{key}'"):
        LlamaLoader().load(path)
    # Factor tensors in a file without longrope: of the wrong shape, or only one of them.
    factors = np.ones(7, dtype=np.float32)
    extra = {"rope_factors_long.weight": 2 * factors, "rope_factors_short.weight": factors}
    plain = random_weights(phi3)
    path = write_tiny_gguf(tmp_path / "s.gguf", phi3, plain, extra_tensors=extra)
    with pytest.raises(
        ModelFormatError,
        match=r"s\.gguf: tensor rope_factors_long\.weight has shape \[7\], expected \[8\]",
    ):
        LlamaLoader().load(path)
    one = {"rope_factors_long.weight": np.full(8, 2.0, dtype=np.float32)}
    path = write_tiny_gguf(tmp_path / "one.gguf", phi3, plain, extra_tensors=one)
    with pytest.raises(
        ModelFormatError,
        match=r"one\.gguf: tensor rope_factors_long\.weight has no rope_factors_short\.weight",
    ):
        LlamaLoader().load(path)
    zero = {
        "rope_factors_long.weight": np.full(8, 2.0, dtype=np.float32),
        "rope_factors_short.weight": np.zeros(8, dtype=np.float32),
    }
    path = write_tiny_gguf(tmp_path / "z.gguf", phi3, plain, extra_tensors=zero)
    with pytest.raises(
        ModelFormatError, match=r"z\.gguf: tensor rope_factors_short\.weight holds a non-positive"
    ):
        LlamaLoader().load(path)
    # llama.cpp writes these for Phi-3; another family's file with them is refused.
    llama = tiny_config(llama3_rope=False)
    factors = np.ones(8, dtype=np.float32)
    extra = {"rope_factors_long.weight": 2 * factors, "rope_factors_short.weight": factors}
    path = write_tiny_gguf(tmp_path / "l.gguf", llama, random_weights(llama), extra_tensors=extra)
    with pytest.raises(UnsupportedModelError, match=r"l\.gguf: tensors rope_factors_long"):
        LlamaLoader().load(path)


def test_conversion_keeps_longrope(longrope: ModelConfig, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    weights = random_weights(longrope, seed=16)
    src = write_tiny_gguf(tmp_path / "p.gguf", longrope, weights)
    out = convert_gguf_to_hf(src, tmp_path / "hf")
    written = json.loads((out / "config.json").read_text())
    assert written["original_max_position_embeddings"] == 32
    assert written["rope_scaling"]["rope_type"] == "longrope"
    ours = LlamaLoader().load(src)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(hf).__name__ == "Phi3ForCausalLM"
    rotary, scaling = hf.model.rotary_emb, _scaling(ours.config)
    d, theta = ours.config.head_dim, ours.config.rope_theta
    base = theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d)
    short = 1.0 / (torch.tensor(scaling.short_factor, dtype=torch.float32) * base)
    assert torch.equal(rotary.inv_freq, short)
    assert rotary.attention_scaling == pytest.approx(scaling.attention_scale, rel=1e-12)
    # Past the original context (the long factors) as well as inside it.
    long_ids = torch.arange(5, 45)[None] % 300
    for ids in (IDS, long_ids):
        torch.testing.assert_close(
            _logits(hf, ids), _logits(transformers_model(longrope, ours.weights), ids)
        )
    again = LlamaLoader().load(out)
    assert again.config == ours.config


def test_a_partial_rotary_factor_is_read_from_each_place(phi3: ModelConfig, tmp_path: Path) -> None:
    from transformers import Phi3Config

    # Phi-4-mini rotates three quarters of each head; older configs say so beside the rest,
    # transformers 5 inside rope_parameters.
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**phi3.to_hf_dict(), "partial_rotary_factor": 0.75}))
    old = ModelConfig.from_hf_file(path)
    assert (old.partial_rotary_factor, old.rotary_dim, old.head_dim) == (0.75, 12, 16)
    Phi3Config(**{**phi3.to_hf_dict(), "partial_rotary_factor": 0.75}).save_pretrained(
        tmp_path / "v5"
    )
    assert ModelConfig.from_hf_file(tmp_path / "v5" / "config.json") == old
    assert ModelConfig.from_hf_dict(old.to_hf_dict()) == old
    # llama.cpp's converter writes the rotary width as rope.dimension_count.
    gguf = write_tiny_gguf(tmp_path / "p.gguf", old, random_weights(old))
    assert GGUFFile(gguf).get("phi3.rope.dimension_count") == 12
    read = LlamaLoader().load(gguf).config
    assert (read.rotary_dim, read.partial_rotary_factor) == (12, 0.75)
    # LongRoPE's factors are one per turned pair: 6 here, in the config and in the file.
    longrope = tiny_config(architecture="phi3", longrope=True, partial_rotary_factor=0.75)
    assert longrope.rope_scaling is not None
    assert len(longrope.rope_scaling.long_factor or ()) == 6
    path = write_tiny_gguf(tmp_path / "l.gguf", longrope, random_weights(longrope))
    assert GGUFFile(path).config().rope_scaling == longrope.rope_scaling
    with pytest.raises(ValueError, match="rotary width of 16"):
        ModelConfig.model_validate({**longrope.model_dump(), "partial_rotary_factor": 1.0})


def test_bad_partial_rotary_factors_are_refused(phi3: ModelConfig, tmp_path: Path) -> None:
    llama = tiny_config().to_hf_dict()
    with pytest.raises(UnsupportedModelError, match=r"partial_rotary_factor 0\.5 .*Phi-3"):
        ModelConfig.from_hf_dict({**llama, "partial_rotary_factor": 0.5})
    for bad in (0.3125, 0.05, 1.5, 0, "half"):  # 5 of 16 dimensions, 0 of them, ...
        with pytest.raises(ModelFormatError, match="partial_rotary_factor"):
            ModelConfig.from_hf_dict({**phi3.to_hf_dict(), "partial_rotary_factor": bad})
    weights = random_weights(phi3)
    for width in (13, 18, 0):
        gguf = write_tiny_gguf(
            tmp_path / f"w{width}.gguf",
            phi3,
            weights,
            metadata={"phi3.rope.dimension_count": width},
        )
        with pytest.raises(
            ModelFormatError, match=rf"phi3\.rope\.dimension_count {width} is not an even width"
        ):
            LlamaLoader().load(gguf)
    llama_config = tiny_config()
    gguf = write_tiny_gguf(
        tmp_path / "llama.gguf",
        llama_config,
        random_weights(llama_config),
        metadata={"llama.rope.dimension_count": 8},
    )
    with pytest.raises(UnsupportedModelError, match=r"dimension_count 8 is not the head width 16"):
        LlamaLoader().load(gguf)


def test_a_transformers_checkpoint_loads_split(phi3: ModelConfig, tmp_path: Path) -> None:
    weights = random_weights(phi3, seed=4)
    reference = transformers_model(phi3, weights)
    reference.save_pretrained(tmp_path / "ckpt")
    tiny_tokenizer().save(tmp_path / "ckpt")
    stored = read_safetensors(tmp_path / "ckpt" / "model.safetensors")
    assert QKV in stored
    assert "model.layers.1.self_attn.q_proj.weight" not in stored
    ours = LlamaLoader().load(tmp_path / "ckpt")
    assert ours.config == phi3
    assert set(ours.weights) == set(weights)
    for name, tensor in weights.items():
        assert torch.equal(ours.weights[name], tensor), name
    # The split weights are a Llama's: transformers' Llama on them computes Phi-3's logits.
    llama = transformers_model(_as_llama(ours.config), ours.weights)
    assert type(llama).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(_logits(llama), _logits(reference), rtol=1e-5, atol=1e-5)


def test_a_gguf_loads_here_and_in_transformers_alike(phi3: ModelConfig, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    weights = random_weights(phi3, seed=6)
    path = write_tiny_gguf(tmp_path / "p.gguf", phi3, weights)
    names = {t.name for t in GGUFFile(path).file_tensors}
    assert {"blk.0.attn_qkv.weight", "blk.0.ffn_up.weight"} <= names
    assert not names & {"blk.0.attn_q.weight", "blk.0.ffn_gate.weight"}
    ours = LlamaLoader().load(path)
    # The file stores the epsilon as float32.
    assert ours.config == phi3.model_copy(update={"rms_norm_eps": ours.config.rms_norm_eps})
    # Phi-3 files keep the Hugging Face row order (llama.cpp rotates them NEOX-style).
    for name, tensor in weights.items():
        assert torch.equal(ours.weights[name], tensor), name
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="p.gguf", dtype=torch.float32)
    assert type(hf).__name__ == "Phi3ForCausalLM"
    state = hf.state_dict()
    for name, tensor in fuse(ours.config, ours.weights).items():
        assert torch.equal(state[name], tensor), name
    llama = transformers_model(_as_llama(ours.config), ours.weights)
    torch.testing.assert_close(_logits(llama), _logits(hf), rtol=1e-5, atol=1e-5)


def test_fused_tensors_of_the_wrong_shape_name_the_file(phi3: ModelConfig, tmp_path: Path) -> None:
    weights = random_weights(phi3)
    short = fuse(phi3, weights)
    short[QKV] = short[QKV][:-16]
    directory = write_tiny_hf_dir(tmp_path / "hf", phi3, short)
    with pytest.raises(
        ModelFormatError,
        match=r"model\.safetensors: tensor .*1\.self_attn\.qkv_proj\.weight has shape "
        r"\[112, 64\], expected \[128, 64\]",
    ):
        LlamaLoader().load(directory)
    path = write_tiny_gguf(tmp_path / "short.gguf", phi3, short)
    with pytest.raises(
        ModelFormatError,
        match=r"short\.gguf: tensor blk\.1\.attn_qkv\.weight has shape \[112, 64\], "
        r"expected \[128, 64\]",
    ):
        LlamaLoader().load(path)
    # A Llama-style up projection where Phi-3's fused gate and up belong.
    no_gate = {n: t for n, t in weights.items() if n != "model.layers.1.mlp.gate_proj.weight"}
    path = write_tiny_gguf(tmp_path / "up.gguf", phi3, no_gate)
    with pytest.raises(
        ModelFormatError,
        match=r"up\.gguf: tensor blk\.1\.ffn_up\.weight has shape \[128, 64\], "
        r"expected \[256, 64\]",
    ):
        LlamaLoader().load(path)
    # A checkpoint without the fused tensor names the one it lacks.
    del_gate_up = {n: t for n, t in fuse(phi3, weights).items() if n != GATE_UP}
    directory = write_tiny_hf_dir(tmp_path / "missing", phi3, del_gate_up)
    with pytest.raises(ModelFormatError, match=r"missing tensor .*1\.mlp\.gate_up_proj\.weight"):
        LlamaLoader().load(directory)


def test_conversion_writes_a_phi3_checkpoint(phi3: ModelConfig, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    weights = random_weights(phi3, seed=8)
    src = write_tiny_gguf(tmp_path / "p.gguf", phi3, weights, quantization="Q8_0")
    out = convert_gguf_to_hf(src, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["Phi3ForCausalLM"]
    stored = read_safetensors(out / "model.safetensors")
    assert {QKV, GATE_UP} <= set(stored)
    assert not any(n.endswith((".q_proj.weight", ".up_proj.weight")) for n in stored)
    ours = LlamaLoader().load(src)
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(hf).__name__ == "Phi3ForCausalLM"
    torch.testing.assert_close(_logits(hf), _logits(transformers_model(ours.config, ours.weights)))
    llama = transformers_model(_as_llama(ours.config), ours.weights)
    torch.testing.assert_close(_logits(llama), _logits(hf), rtol=1e-5, atol=1e-5)
    # And back: the converted checkpoint loads to the GGUF's weights.
    again = LlamaLoader().load(out)
    assert again.config == ours.config
    for name, tensor in ours.weights.items():
        assert torch.equal(again.weights[name], tensor), name


def test_adapters_of_the_unfused_projections_merge(phi3: ModelConfig, tmp_path: Path) -> None:
    weights = random_weights(phi3, seed=10)
    directory = write_tiny_hf_dir(tmp_path / "base", phi3, weights)
    peft = write_peft_adapter(
        tmp_path / "lora", transformers_model(phi3, weights), target_modules=["o_proj", "down_proj"]
    )
    merged = apply_lora(LlamaLoader().load(directory), load_lora(tmp_path / "lora"))
    want = peft.merge_and_unload().state_dict()
    for name in ("model.layers.1.self_attn.o_proj.weight", "model.layers.0.mlp.down_proj.weight"):
        torch.testing.assert_close(merged.weights[name], want[name], rtol=1e-5, atol=1e-6)


def test_adapters_of_fused_projections_are_refused(phi3: ModelConfig, tmp_path: Path) -> None:
    weights = random_weights(phi3, seed=10)
    write_peft_adapter(
        tmp_path / "lora", transformers_model(phi3, weights), target_modules=["qkv_proj"]
    )
    with pytest.raises(UnsupportedModelError, match=r"targets .*qkv_proj"):
        load_lora(tmp_path / "lora")
    rank = 2
    pair = (torch.randn(rank, 64), torch.randn(2 * 128, rank))
    path = write_gguf_lora(tmp_path / "a.gguf", phi3, {GATE_UP: pair}, alpha=4.0)
    with pytest.raises(
        UnsupportedModelError, match=r"a\.gguf: .*blk\.1\.ffn_up\.weight, a Phi-3 fused"
    ):
        load_lora(path)
