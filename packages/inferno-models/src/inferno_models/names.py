"""Canonical tensor names: the Hugging Face Llama naming, used for every loaded model (Qwen2's
is the same plus attention biases, Qwen3's plus the query and key norms).

Loaders map their own names (GGUF ``blk.N.attn_q.weight``) onto these, so the engine and the
converter see one naming whatever the source format.
"""

from __future__ import annotations

from inferno_models.config import ModelConfig

__all__ = ["EMBED", "FINAL_NORM", "LAYER_TENSORS", "LM_HEAD", "expected_shapes", "layer_name"]

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
