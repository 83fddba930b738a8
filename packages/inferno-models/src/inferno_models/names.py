"""Canonical tensor names: the Hugging Face Llama naming, used for every loaded model (Qwen2's
is the same plus attention biases, Qwen3's plus the query and key norms).

Loaders map their own names (GGUF ``blk.N.attn_q.weight``) onto these, so the engine and the
converter see one naming whatever the source format. Phi-3 checkpoints store some of these
tensors concatenated (`FUSED`); the loaders split them on the way in (`split_fused`) and the
converter joins them again (`fuse`), so a Phi-3 model, once loaded, has the Llama layout.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from inferno_models.config import ModelConfig

__all__ = [
    "EMBED",
    "FINAL_NORM",
    "FUSED",
    "LAYER_TENSORS",
    "LM_HEAD",
    "checkpoint_shapes",
    "expected_shapes",
    "fuse",
    "layer_name",
    "split_fused",
]

EMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"

#: Per-layer tensor suffixes, after ``model.layers.{i}.``.
LAYER_TENSORS = (
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)


def layer_name(layer: int, suffix: str) -> str:
    """Canonical name of one per-layer tensor, e.g. ``model.layers.3.self_attn.q_proj.weight``."""
    return f"model.layers.{layer}.{suffix}"


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a model with ``config`` must have, with its shape (``[out, in]`` for linears).

    ``lm_head.weight`` is absent when the embeddings are tied; attention biases are present
    when the config has them (``self_attn.{q,k,v,o}_proj.bias``), and so are Qwen3's per-head
    norms (``self_attn.{q,k}_norm.weight``, ``[head_dim]``).
    """
    h, i = config.hidden_size, config.intermediate_size
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    per_layer = {
        "input_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q),
        "post_attention_layernorm.weight": (h,),
        "mlp.gate_proj.weight": (i, h),
        "mlp.up_proj.weight": (i, h),
        "mlp.down_proj.weight": (h, i),
    }
    if config.qkv_bias:
        per_layer.update(
            {
                "self_attn.q_proj.bias": (q,),
                "self_attn.k_proj.bias": (kv,),
                "self_attn.v_proj.bias": (kv,),
            }
        )
    if config.o_bias:
        per_layer["self_attn.o_proj.bias"] = (h,)
    if config.qk_norm:
        per_layer["self_attn.q_norm.weight"] = (config.head_dim,)
        per_layer["self_attn.k_norm.weight"] = (config.head_dim,)
    shapes: dict[str, tuple[int, ...]] = {EMBED: (config.vocab_size, h), FINAL_NORM: (h,)}
    for layer in range(config.num_hidden_layers):
        for suffix, shape in per_layer.items():
            shapes[layer_name(layer, suffix)] = shape
    if not config.tie_word_embeddings:
        shapes[LM_HEAD] = (config.vocab_size, h)
    return shapes


#: Per-layer tensors that Phi-3 checkpoints store as one, concatenated along dim 0 in this
#: order (``Phi3Attention.qkv_proj``; ``Phi3MLP.gate_up_proj``, whose first half is the gate).
FUSED: dict[str, tuple[str, ...]] = {
    "self_attn.qkv_proj.weight": (
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
    ),
    "mlp.gate_up_proj.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
}


def _fused_groups(config: ModelConfig) -> Iterator[tuple[str, tuple[str, ...]]]:
    """``(fused name, canonical part names)`` for every fused tensor of a ``config`` model."""
    if config.architecture != "phi3":
        return
    for layer in range(config.num_hidden_layers):
        for fused, parts in FUSED.items():
            yield layer_name(layer, fused), tuple(layer_name(layer, p) for p in parts)


def checkpoint_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a ``config`` model as its family's Hugging Face checkpoint stores it
    (and its GGUF file, under GGUF names): `expected_shapes`, with Phi-3's fused tensors in
    place of their parts (``self_attn.qkv_proj.weight``, ``[q + 2 * kv, hidden]``, and
    ``mlp.gate_up_proj.weight``, ``[2 * intermediate, hidden]``)."""
    shapes = expected_shapes(config)
    groups = {parts[0]: (fused, parts) for fused, parts in _fused_groups(config)}
    joined = {p for _, parts in groups.values() for p in parts}
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in shapes.items():
        if name in groups:
            fused, parts = groups[name]
            out[fused] = (sum(shapes[p][0] for p in parts), *shape[1:])
        elif name not in joined:
            out[name] = shape
    return out


def split_fused(
    config: ModelConfig, name: str, tensor: torch.Tensor
) -> Iterator[tuple[str, torch.Tensor]]:
    """The canonical tensors of the checkpoint tensor ``name`` (of a `checkpoint_shapes`
    shape): its parts, when it is a fused one, else ``(name, tensor)`` itself.

    The parts are views of ``tensor`` (rows of it, each contiguous): splitting copies
    nothing, and together they hold exactly its memory."""
    parts = dict(_fused_groups(config)).get(name)
    if parts is None:
        yield name, tensor
        return
    shapes = expected_shapes(config)
    pieces = torch.split(tensor, [shapes[p][0] for p in parts], dim=0)
    yield from zip(parts, pieces, strict=True)


def fuse(config: ModelConfig, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` (canonical names) in the layout of `checkpoint_shapes`: for Phi-3, each
    group of `FUSED` parts concatenated under its fused name. A group with a part missing is
    left as it is, and so is every other tensor (to build inconsistent files in tests)."""
    first: dict[str, tuple[str, tuple[str, ...]]] = {}
    for fused, parts in _fused_groups(config):
        if all(p in weights for p in parts):
            first[parts[0]] = (fused, parts)
    joined = {p for _, parts in first.values() for p in parts}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        if name in first:
            fused, parts = first[name]
            out[fused] = torch.cat([weights[p] for p in parts], dim=0)
        elif name not in joined:
            out[name] = tensor
    return out
