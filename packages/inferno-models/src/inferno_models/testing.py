"""Builders of tiny random Llama models for tests, in memory and on disk."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inferno_models.config import Architecture, ModelConfig, RopeScaling
from inferno_models.lora import LoraAdapter
from inferno_models.names import EMBED, FINAL_NORM, LM_HEAD, expected_shapes, fuse
from inferno_models.tokenizer import Tokenizer, byte_to_unicode

__all__ = [
    "LORA_TARGETS",
    "TINY_CHAT_TEMPLATE",
    "TINY_LONGROPE_ORIGINAL",
    "random_weights",
    "tiny_config",
    "tiny_gguf_metadata",
    "tiny_tokenizer",
    "transformers_model",
    "write_gguf_lora",
    "write_peft_adapter",
    "write_tiny_gguf",
    "write_tiny_hf_dir",
]

#: The modules a test adapter adapts by default: every projection LoRA may touch.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

#: A ChatML template, as small chat models use.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
#: The original context of `tiny_config`'s longrope scaling.
TINY_LONGROPE_ORIGINAL = 32

_SPECIALS = ("<unk>", "<|im_start|>", "<|im_end|>")
_MERGES = ("t h", "th e", "i n", "a n", "e r", "o n", "Ġ t", "Ġ the", "r e", "a t")


def tiny_config(
    *,
    vocab_size: int = 320,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    max_position_embeddings: int | None = None,
    tie_word_embeddings: bool = False,
    llama3_rope: bool | None = None,
    longrope: bool = False,
    architecture: Architecture = "llama",
    head_dim: int | None = None,
    sliding_window: int | None = None,
    partial_rotary_factor: float = 1.0,
) -> ModelConfig:
    """A small Llama config with GQA and (by default) llama3 rope scaling; with
    ``architecture="qwen2"`` a Qwen2 one (biases on Q, K and V), with ``"qwen3"`` a Qwen3 one
    (query and key norms), with ``"phi3"`` a Phi-3 one (no rope scaling by default: Phi-3
    has no llama3 scaling). ``head_dim`` defaults to ``hidden_size // num_attention_heads``;
    Qwen3's heads are wider than that. ``sliding_window`` gives every layer that window;
    ``partial_rotary_factor`` (Phi-3 only) turns that share of each head.

    ``longrope=True`` gives it Phi-3-*-128k's scaling instead, in small: an original context
    of `TINY_LONGROPE_ORIGINAL` (32) positions in a context of 128 (unless
    ``max_position_embeddings`` says otherwise), random but fixed factors, the short ones in
    [1, 1.5] and the long ones in [1, 4], each a float32 value (as GGUF stores them). The
    context defaults to 512 otherwise.

    Raises:
        ValueError: both ``llama3_rope`` and ``longrope`` are asked for.
    """
    if llama3_rope and longrope:
        raise ValueError("a config has one rope scaling: llama3_rope or longrope, not both")
    if llama3_rope is None:
        llama3_rope = architecture != "phi3" and not longrope
    if max_position_embeddings is None:
        max_position_embeddings = 4 * TINY_LONGROPE_ORIGINAL if longrope else 512
    head_dim = head_dim or hidden_size // num_attention_heads
    scaling = None
    if llama3_rope:
        scaling = RopeScaling(type="llama3", factor=8.0, original_max_position_embeddings=64)
    elif longrope:
        gen = torch.Generator().manual_seed(head_dim)
        frequencies = int(head_dim * partial_rotary_factor + 1e-6) // 2
        short = 1 + 0.5 * torch.rand(frequencies, generator=gen)
        long = 1 + 3 * torch.rand(frequencies, generator=gen)
        scaling = RopeScaling(
            type="longrope",
            factor=max_position_embeddings / TINY_LONGROPE_ORIGINAL,
            original_max_position_embeddings=TINY_LONGROPE_ORIGINAL,
            short_factor=tuple(short.tolist()),
            long_factor=tuple(long.tolist()),
        )
    return ModelConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=scaling,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,
        eos_token_ids=(2,),
        architecture=architecture,
        sliding_window=sliding_window,
        partial_rotary_factor=partial_rotary_factor,
        qkv_bias=architecture == "qwen2",
        qk_norm=architecture == "qwen3",
        # SmolLM3's every fourth layer, as its GGUF files imply.
        nope_layers=tuple(
            i for i in range(num_hidden_layers) if architecture == "smollm3" and (i + 1) % 4 == 0
        ),
    )


def random_weights(
    config: ModelConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Random weights under the canonical names, scaled so activations stay well-conditioned."""
    gen = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for name, shape in expected_shapes(config).items():
        if name.endswith(".bias"):
            t = 0.5 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen) / shape[-1] ** 0.5
        weights[name] = t.to(dtype)
    return weights


def _tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    """Tokens, GGUF token types and merges of a byte-level BPE vocabulary of ~270 entries:
    three control tokens, the 256 byte symbols, and a few merges."""
    tokens = list(_SPECIALS)
    types = [3, 3, 3]
    tokens += [byte_to_unicode()[b] for b in range(256)]
    types += [1] * 256
    for merge in _MERGES:
        tokens.append(merge.replace(" ", ""))
        types.append(1)
    return tokens, types, list(_MERGES)


def tiny_gguf_metadata() -> dict[str, Any]:
    """``tokenizer.ggml.*`` metadata of the tiny byte-level vocabulary (BOS 1, EOS 2)."""
    tokens, types, merges = _tiny_vocab()
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": False,
    }


def tiny_tokenizer() -> Tokenizer:
    """A byte-level BPE tokenizer with 269 ids: every text round-trips; fits `tiny_config`."""
    return Tokenizer.from_gguf_metadata(tiny_gguf_metadata(), source="<tiny>")


_GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.bias": "attn_output.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    # Phi-3's fused tensors: its ffn_up holds the gate and up projections.
    "self_attn.qkv_proj.weight": "attn_qkv.weight",
    "mlp.gate_up_proj.weight": "ffn_up.weight",
}


def _gguf_name(name: str) -> str:
    if name == EMBED:
        return "token_embd.weight"
    if name == FINAL_NORM:
        return "output_norm.weight"
    if name == LM_HEAD:
        return "output.weight"
    _, _, layer, rest = name.split(".", 3)
    return f"blk.{layer}.{_GGUF_NAMES[rest]}"


def write_tiny_gguf(
    path: str | Path,
    config: ModelConfig,
    weights: dict[str, torch.Tensor],
    *,
    quantization: str = "F32",
    chat_template: str | None = TINY_CHAT_TEMPLATE,
    rope_freqs: bool = False,
    extra_tensors: dict[str, np.ndarray[Any, Any]] | None = None,
    metadata: dict[str, int | float | str] | None = None,
    drop_metadata: tuple[str, ...] = (),
) -> Path:
    """Write a Llama GGUF as llama.cpp's converter does (Q/K rows permuted for its rotary
    layout); 2-D weights are stored as ``quantization`` (F32, F16, BF16, Q8_0, Q4_0, Q4_1,
    Q5_0, Q5_1). Rope scaling is written as scaling keys, or with ``rope_freqs`` as the
    converter writes Llama 3.1's: a ``rope_freqs.weight`` tensor of divisors and no keys.
    A Phi-3 file is written as the converter's ``Phi3MiniModel`` writes one: Q, K and V fused
    (``attn_qkv``), the gate and up projections too (``ffn_up``), no key length and its
    sliding window (0 for none); weights already fused, or a fused group with a part missing,
    are written as they are. A Phi-3 with longrope scaling gets what the converter writes for
    Phi-3-*-128k: ``rope_factors_long``/``rope_factors_short`` tensors, the original context
    and the attention factor (``rope.scaling.attn_factor``, written even when it is the
    default). ``extra_tensors`` are written as they are (to
    build inconsistent files); ``metadata`` adds keys, or replaces the writer's own (ints as
    int32, floats as float32, strings), e.g. ``general.sampling.temp``; ``drop_metadata``
    leaves keys of the writer's own out.

    Raises:
        ValueError: a longrope config or a sliding window in another family than Phi-3,
            or longrope asked for with ``rope_freqs`` (llama.cpp writes none of these); a
            ``drop_metadata`` key the writer does not write.
    """
    import gguf
    from gguf.quants import quantize

    from inferno_models.gguf_loader import ROPE_FREQS, ROPE_PERMUTED, permute_rope, rope_divisors
    from inferno_models.gguf_rope import ROPE_FACTORS_LONG, ROPE_FACTORS_SHORT

    path = Path(path)
    arch = config.architecture
    rs = config.rope_scaling
    longrope = rs is not None and rs.type == "longrope"
    if longrope and arch != "phi3":
        raise ValueError(f"llama.cpp writes longrope factor tensors for phi3, not {arch}")
    if longrope and rope_freqs:
        raise ValueError("longrope has no rope_freqs tensor: its divisors depend on the position")
    context, window = config.max_position_embeddings, config.sliding_window or 0
    if window and arch != "phi3":
        raise ValueError(f"llama.cpp writes a sliding window for phi3, not {arch}")
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(context)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.rotary_dim)
    if arch != "phi3" or config.head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    if arch == "phi3":
        # Phi-3-*-4k's config.json gives its context as the original one too.
        original = rs.original_max_position_embeddings if rs is not None else context
        writer.add_rope_scaling_orig_ctx_len(original)
        writer.add_sliding_window(window)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if rs is not None and longrope:
        writer.add_rope_scaling_attn_factors(rs.attention_scale)
        for name, factors in (
            (ROPE_FACTORS_LONG, rs.long_factor),
            (ROPE_FACTORS_SHORT, rs.short_factor),
        ):
            writer.add_tensor(name, np.asarray(factors, dtype=np.float32))
    elif rs is not None and rope_freqs:
        divisors = rope_divisors(rs, config.head_dim, config.rope_theta)
        writer.add_tensor(ROPE_FREQS, divisors.astype(np.float32))
    elif rs is not None:
        writer.add_string(f"{arch}.rope.scaling.type", rs.type)
        writer.add_float32(f"{arch}.rope.scaling.factor", rs.factor)
        writer.add_uint32(
            f"{arch}.rope.scaling.original_context_length", rs.original_max_position_embeddings
        )
        writer.add_float32(f"{arch}.rope.scaling.low_freq_factor", rs.low_freq_factor)
        writer.add_float32(f"{arch}.rope.scaling.high_freq_factor", rs.high_freq_factor)
    meta = tiny_gguf_metadata()
    writer.add_tokenizer_model(meta["tokenizer.ggml.model"])
    # llama.cpp's converter writes Qwen2's pre-tokenizer for Qwen3 too.
    qwen = arch in ("qwen2", "qwen3")
    writer.add_tokenizer_pre("qwen2" if qwen else meta["tokenizer.ggml.pre"])
    writer.add_token_list(meta["tokenizer.ggml.tokens"])
    writer.add_token_types(meta["tokenizer.ggml.token_type"])
    writer.add_token_merges(meta["tokenizer.ggml.merges"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    if arch == "phi3":
        # Phi-3's tokenizer pads with its end-of-text token, and the converter writes that;
        # transformers' GGUF reader would otherwise keep Phi3Config's own padding id, 32000.
        writer.add_pad_token_id(2)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    for key, value in (metadata or {}).items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, int):
            writer.add_int32(key, value)
        else:
            writer.add_float32(key, value)
    for key in drop_metadata:
        if key not in writer.kv_data[0]:
            raise ValueError(f"the writer writes no {key!r} to leave out")
        del writer.kv_data[0][key]
    for name, array in (extra_tensors or {}).items():
        writer.add_tensor(name, array)
    qtype = getattr(gguf.GGMLQuantizationType, quantization)
    for name, tensor in fuse(config, weights).items():
        t = tensor.detach().to(torch.float32)
        # llama.cpp's converter permutes Llama's Q/K rows (and biases), not Qwen2's or Qwen3's.
        if arch in ROPE_PERMUTED and name.endswith(("q_proj.weight", "q_proj.bias")):
            t = permute_rope(t, config.num_attention_heads)
        elif arch in ROPE_PERMUTED and name.endswith(("k_proj.weight", "k_proj.bias")):
            t = permute_rope(t, config.num_key_value_heads)
        array = t.numpy()
        if array.ndim == 1 or quantization == "F32":
            writer.add_tensor(_gguf_name(name), array.astype(np.float32))
        else:
            writer.add_tensor(_gguf_name(name), quantize(array, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def transformers_model(config: ModelConfig, weights: dict[str, torch.Tensor] | None = None) -> Any:
    """transformers' own class for ``config``'s family (LlamaForCausalLM, Qwen3ForCausalLM,
    SmolLM3ForCausalLM, Phi3ForCausalLM...), in eval mode, with ``weights`` (canonical names,
    fused as Phi-3's checkpoints fuse them) when given: the numerical reference of the tests.
    Raises `AssertionError` when the weights do not fit."""
    from transformers import AutoConfig, AutoModelForCausalLM

    auto: Any = AutoModelForCausalLM  # its methods are untyped
    hf: Any = auto.from_config(AutoConfig.for_model(**config.to_hf_dict()))
    hf.eval()
    if weights is not None:
        missing, unexpected = hf.load_state_dict(fuse(config, weights), strict=False)
        assert not unexpected, unexpected
        assert set(missing) <= {"lm_head.weight"}, missing
        hf.tie_weights()
    return hf


def write_tiny_hf_dir(
    directory: str | Path,
    config: ModelConfig,
    weights: dict[str, torch.Tensor],
    *,
    shards: int = 1,
    chat_template: str | None = TINY_CHAT_TEMPLATE,
) -> Path:
    """Write a Hugging Face directory (config, safetensors in ``shards`` files, tokenizer);
    ``weights`` have canonical names and are stored in the family's checkpoint layout
    (`inferno_models.names.fuse`)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config.to_hf_dict()), encoding="utf-8")
    weights = fuse(config, weights)
    names = list(weights)
    if shards == 1:
        save_file({n: weights[n].contiguous() for n in names}, str(directory / "model.safetensors"))
    else:
        weight_map: dict[str, str] = {}
        for i in range(shards):
            part = names[i::shards]
            file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            save_file({n: weights[n].contiguous() for n in part}, str(directory / file))
            weight_map.update(dict.fromkeys(part, file))
        index = {"metadata": {}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    tiny_tokenizer().save(directory, chat_template=chat_template)
    return directory


def write_peft_adapter(directory: str | Path, hf_model: Any, *, seed: int = 3, **lora: Any) -> Any:
    """Wrap the transformers model ``hf_model`` (changed in place) in a ``peft`` LoRA with
    random, non-zero matrices (``peft`` starts B at zero, which would adapt nothing), save the
    adapter to ``directory`` and return the PEFT model. ``lora`` overrides the `LoraConfig`
    fields (default r=4, lora_alpha=8 on `LORA_TARGETS`). Needs ``peft``, a dev dependency.
    """
    from peft import LoraConfig, get_peft_model

    options = {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": list(LORA_TARGETS),
        "lora_dropout": 0.0,
        **lora,
    }
    model: Any = get_peft_model(hf_model, LoraConfig(**options))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    model.eval()
    with warnings.catch_warnings():
        # peft looks for the base model's config beside its weights (to see whether the
        # vocabulary grew); a GGUF or an in-memory model has none there, and it did not.
        warnings.filterwarnings("ignore", message="Could not find a config file")
        model.save_pretrained(str(directory))
    return model


def write_gguf_lora(
    path: str | Path,
    config: ModelConfig,
    adapter_or_pairs: LoraAdapter | Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    alpha: float | None = None,
    quantization: str = "F32",
    architecture: str | None = None,
    adapter_type: str = "lora",
    extra_tensors: dict[str, np.ndarray[Any, Any]] | None = None,
    metadata: dict[str, int | float | str | list[int]] | None = None,
) -> Path:
    """Write a LoRA adapter of a ``config`` model as llama.cpp's ``convert_lora_to_gguf.py``
    does: ``general.type = "adapter"``, ``adapter.type``, ``adapter.lora.alpha`` and each
    weight's ``<gguf name>.lora_a`` (``A``, ``[r, in]``) and ``.lora_b`` (``B``, ``[out, r]``),
    with Llama's Q/K ``B`` rows permuted as the converter permutes them.

    ``adapter_or_pairs`` is a PEFT `LoraAdapter` (from `load_lora`; its alpha is written
    unless ``alpha`` is given) or canonical weight names mapped to ``(A, B)``; with pairs and
    no ``alpha`` no alpha key is written (llama.cpp then scales by 1). The matrices are stored
    as ``quantization`` (F32, F16, BF16, Q8_0; Q8_0 falls back to F16 for rows that are not
    whole blocks, as the converter's does). ``architecture`` overrides
    ``general.architecture``; ``extra_tensors`` (written as they are) and ``metadata`` (ints
    as int32, floats as float32, strings, lists of ints as uint32 arrays) build odd files.

    Raises:
        ValueError: the adapter's scales are not ``alpha / r`` (rsLoRA or ``alpha_pattern``),
            which a GGUF adapter's single alpha cannot express.
    """
    import math

    import gguf
    from gguf.quants import quantize

    from inferno_models.gguf_loader import ROPE_PERMUTED, permute_rope

    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if isinstance(adapter_or_pairs, Mapping):
        pairs = dict(adapter_or_pairs)
    else:
        alpha = adapter_or_pairs.alpha if alpha is None else alpha
        for name, (a, b, scale) in adapter_or_pairs.pairs.items():
            if not math.isclose(scale, alpha / a.shape[0], rel_tol=1e-6):
                raise ValueError(f"{name}: scale {scale} is not alpha / r = {alpha}/{a.shape[0]}")
            pairs[name] = (a, b)
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), architecture or config.architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, adapter_type)
    if alpha is not None:
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for key, value in (metadata or {}).items():
        if isinstance(value, list):
            array_type, uint32 = gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT32
            writer.add_key_value(key, value, array_type, sub_type=uint32)
        elif isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, int):
            writer.add_int32(key, value)
        else:
            writer.add_float32(key, value)
    qtype = getattr(gguf.GGMLQuantizationType, quantization)
    for name, (a, b) in pairs.items():
        b = b.detach().to(torch.float32)
        if config.architecture in ROPE_PERMUTED and name.endswith("q_proj.weight"):
            b = permute_rope(b, config.num_attention_heads)
        elif config.architecture in ROPE_PERMUTED and name.endswith("k_proj.weight"):
            b = permute_rope(b, config.num_key_value_heads)
        for part, tensor in (("lora_a", a.detach().to(torch.float32)), ("lora_b", b)):
            array = tensor.contiguous().numpy()
            gguf_name = f"{_gguf_name(name)}.{part}"
            if quantization == "F32":
                writer.add_tensor(gguf_name, array)
                continue
            kind = qtype
            try:
                data = quantize(array, kind)
            except gguf.QuantError:  # rows that are not whole blocks
                kind = gguf.GGMLQuantizationType.F16
                data = quantize(array, kind)
            writer.add_tensor(gguf_name, data, raw_dtype=kind)
    for name, array in (extra_tensors or {}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
