"""The Llama forward pass over a flattened batch of tokens and a paged KV cache (Qwen2 too: it
is Llama with biases on Q, K and V, which the projections add; Qwen3, which RMS-normalizes
every query and key head before the rotation; and SmolLM3, whose NoPE layers do not rotate).

One step runs the tokens of every scheduled sequence at once: decode tokens first (one per
sequence, attended together in a single batched call), then the prefill chunks (each attended
on its own, since their query lengths differ). Projections of all tokens share one matmul each:
Q, K and V are fused into one weight, and so are the MLP's gate and up projections.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from inferno_models.config import ModelConfig
from inferno_models.names import EMBED, FINAL_NORM, LM_HEAD, layer_name

from inferno_inference.linear import NativeMatmulFn, NativeWeight, Projection
from inferno_inference.rope import apply_rope, rope_tables, rotary_layout

__all__ = ["AttentionMetadata", "FusedOps", "LayerWeights", "LlamaModel", "PrefillSegment"]


class FusedOps(Protocol):
    """Kernels that replace groups of the forward pass's PyTorch ops (on CUDA:
    `inferno_inference.triton_ops.TritonOps`); each must equal, within rounding, the code it
    replaces in `LlamaModel.forward`."""

    def add_rms_norm(
        self, x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
    ) -> torch.Tensor:
        """``x += delta`` in place (when given); returns RMSNorm(x) * weight."""
        ...

    def rope_kv_write(
        self,
        qkv: torch.Tensor,
        positions: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        slot_mapping: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        heads: int,
        kv_heads: int,
    ) -> torch.Tensor:
        """Rotated query and key heads ``[n, heads + kv_heads, head_dim]`` of the fused QKV
        output; keys and values written to the caches at ``slot_mapping``."""
        ...

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """``silu(gate) * up`` of the fused gate/up output."""
        ...

    def decode_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slots: torch.Tensor,
        lens: torch.Tensor | None,
    ) -> torch.Tensor:
        """One query per sequence over the cache ``slots`` it lists (the first ``lens``)."""
        ...


@dataclass(slots=True)
class PrefillSegment:
    """One sequence's prefill chunk: tokens ``[start, end)`` of the flattened batch.

    ``context_len`` counts the sequence's tokens in the cache after this step (earlier chunks
    and cached prefix included); ``slots`` lists their cache slots in order. ``slots`` is
    ``None`` when no earlier token is cached: the chunk attends only to itself, with no gather.
    """

    start: int
    end: int
    context_len: int
    slots: torch.Tensor | None


@dataclass(slots=True)
class AttentionMetadata:
    """Where each token sits and what it attends to, shared by every layer of one step.

    ``slot_mapping[t]`` is the cache slot (``block * block_size + offset``) that token ``t``'s
    K/V go to. The first ``num_decodes`` tokens are single-token decodes; ``decode_slots``
    (``[num_decodes, span]``) lists the cache slots each attends to, padded past
    ``decode_context_lens`` (``None`` when nothing is padded). ``logits_indices`` picks the
    tokens to sample from.
    """

    positions: torch.Tensor
    slot_mapping: torch.Tensor
    num_decodes: int
    decode_slots: torch.Tensor | None
    decode_context_lens: torch.Tensor | None
    prefills: list[PrefillSegment]
    logits_indices: torch.Tensor


@dataclass(slots=True)
class LayerWeights:
    """One decoder block's weights, with Q/K/V and gate/up fused.

    ``q_norm`` and ``k_norm`` (``[head_dim]``) are Qwen3's per-head norms, ``None`` for models
    without them; ``qk_norm`` is the two laid out per head of the fused Q/K output
    (``[heads + kv_heads, head_dim]``), which one multiply applies. ``rotary`` is false for a
    layer that leaves queries and keys unrotated (SmolLM3's NoPE layers).
    """

    input_norm: torch.Tensor
    qkv: Projection
    o: Projection
    post_norm: torch.Tensor
    gate_up: Projection
    down: Projection
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None
    qk_norm: torch.Tensor | None = None
    rotary: bool = True


class LlamaModel:
    """A Llama decoder with fused weights, evaluated under ``torch.inference_mode``."""

    def __init__(
        self,
        config: ModelConfig,
        weights: dict[str, torch.Tensor],
        *,
        dtype: torch.dtype,
        device: torch.device,
        max_len: int,
        prepack: bool = True,
        int8: bool = False,
        native_layout: Callable[[torch.Tensor], NativeWeight] | None = None,
        native_matmul: NativeMatmulFn | None = None,
    ) -> None:
        """Fuse and lay out ``weights``; ``int8`` quantizes every projection (LM head included,
        the embedding table kept as is) for single-row matmuls, see `Projection`.
        ``native_layout`` lays out a copy of every projection for the C decode path (see
        `inferno_inference.native.pack_weight`); with ``native_matmul`` every matmul runs on
        that copy, the only one kept."""
        self.config = config
        self.dtype = dtype
        self.device = device
        order = rotary_layout(config)
        if order is not None:
            weights = _reorder_heads(config, weights, order)

        def get(name: str) -> torch.Tensor:
            return weights[name].to(device=device, dtype=dtype).contiguous()

        def proj(*names: str, bias: bool = False) -> Projection:
            fused = torch.cat([weights[n].to(device=device, dtype=dtype) for n in names])
            fused_bias = None
            if bias:
                parts = [n.removesuffix(".weight") + ".bias" for n in names]
                fused_bias = torch.cat([weights[n].to(device=device, dtype=dtype) for n in parts])
            return Projection(
                fused,
                prepack=prepack,
                int8=int8,
                native_layout=native_layout,
                native_matmul=native_matmul,
                bias=fused_bias,
            )

        def qk_norms(i: int) -> dict[str, torch.Tensor]:
            if not config.qk_norm:
                return {}
            q = get(layer_name(i, "self_attn.q_norm.weight"))
            k = get(layer_name(i, "self_attn.k_norm.weight"))
            heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
            both = torch.cat([q.expand(heads, -1), k.expand(kv_heads, -1)]).contiguous()
            return {"q_norm": q, "k_norm": k, "qk_norm": both}

        self.embed = get(EMBED)
        self.norm = get(FINAL_NORM)
        self.lm_head = proj(EMBED if config.tie_word_embeddings else LM_HEAD)
        self.layers = [
            LayerWeights(
                input_norm=get(layer_name(i, "input_layernorm.weight")),
                qkv=proj(
                    *(layer_name(i, f"self_attn.{p}_proj.weight") for p in "qkv"),
                    bias=config.qkv_bias,
                ),
                o=proj(layer_name(i, "self_attn.o_proj.weight"), bias=config.o_bias),
                post_norm=get(layer_name(i, "post_attention_layernorm.weight")),
                gate_up=proj(
                    layer_name(i, "mlp.gate_proj.weight"), layer_name(i, "mlp.up_proj.weight")
                ),
                down=proj(layer_name(i, "mlp.down_proj.weight")),
                **qk_norms(i),
                rotary=i not in config.nope_layers,
            )
            for i in range(config.num_hidden_layers)
        ]
        self.cos, self.sin = rope_tables(config, max_len, dtype=dtype, device=device)
        self._q = config.num_attention_heads * config.head_dim
        self._kv = config.num_key_value_heads * config.head_dim
        self._inter = config.intermediate_size
        #: Fused kernels used in place of the PyTorch ops they replace, when set.
        self.ops: FusedOps | None = None

    def weight_bytes_per_token(self) -> int:
        """Bytes of weights one batch-1 decode step reads (every matrix once; int8 with its
        scales where quantized)."""
        total = sum(
            p.nbytes
            for layer in self.layers
            for p in (layer.qkv, layer.o, layer.gate_up, layer.down)
        )
        return total + self.lm_head.nbytes

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # One fused op; it normalizes in fp32 (equal to the reference in fp32, within one
        # rounding of it in bf16/fp16, where the reference rounds before the weight).
        return F.rms_norm(x, weight.shape, weight, self.config.rms_norm_eps)

    def _norm_qk(self, layer: LayerWeights, qkv: torch.Tensor) -> None:
        """Qwen3's per-head RMSNorm of the query and key heads, in place in ``qkv``, so the
        rotation (either path's) reads them normalized."""
        if layer.qk_norm is None:
            return
        hd = self.config.head_dim
        qk = qkv[:, : self._q + self._kv].view(qkv.shape[0], -1, hd)
        # Normalized and rounded to the model dtype before the weight, as the reference does.
        qk.copy_(F.rms_norm(qk, (hd,), None, self.config.rms_norm_eps).mul_(layer.qk_norm))

    def forward(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """Run one step; returns fp32 logits ``[len(logits_indices), vocab]``.

        ``kv_caches[layer]`` is ``(keys, values)``, each ``[num_slots, kv_heads, head_dim]``;
        this step's K/V are written into them at ``meta.slot_mapping``.
        """
        return self.forward_with_hidden(input_ids, meta, kv_caches, None)[0]

    def forward_with_hidden(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        hidden_indices: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`forward`, and the final hidden states (after the last norm, in the model's dtype)
        of the tokens at ``hidden_indices`` (``None``: none), which embeddings pool."""
        rows = meta.logits_indices
        if hidden_indices is not None:
            rows = torch.cat([rows, hidden_indices.to(rows.device)])
        if self.ops is not None:
            h = self._forward_fused(self.ops, input_ids, meta, kv_caches, rows)
        else:
            h = self._forward_torch(input_ids, meta, kv_caches, rows)
        n = meta.logits_indices.shape[0]
        if n == 0:  # a step of embeddings alone samples nothing
            logits = torch.empty(0, self.config.vocab_size, device=h.device)
        else:
            logits = self.lm_head(h if hidden_indices is None else h[:n]).float()
        return logits, None if hidden_indices is None else h[n:]

    def _forward_torch(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """The layers in torch operators; the final-normed hidden states at ``rows``."""
        cfg = self.config
        n_tok = input_ids.shape[0]
        heads, kv_heads, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        cos = self.cos[meta.positions].unsqueeze(1)
        sin = self.sin[meta.positions].unsqueeze(1)
        decode_mask = None
        if meta.decode_slots is not None and meta.decode_context_lens is not None:
            span = torch.arange(meta.decode_slots.shape[1], device=self.device)
            decode_mask = (span[None, :] < meta.decode_context_lens[:, None])[:, None, None, :]
        x = self.embed[input_ids]
        for layer, (k_cache, v_cache) in zip(self.layers, kv_caches, strict=True):
            h = self._rms_norm(x, layer.input_norm)
            qkv = layer.qkv(h)
            self._norm_qk(layer, qkv)
            # Rotate queries and keys in one call: they are adjacent heads of the fused output.
            qk = qkv[:, : self._q + self._kv].view(n_tok, heads + kv_heads, hd)
            if layer.rotary:
                qk = apply_rope(qk, cos, sin)
            q, k = qk[:, :heads], qk[:, heads:]
            v = qkv[:, self._q + self._kv :].view(n_tok, kv_heads, hd)
            k_cache.index_copy_(0, meta.slot_mapping, k)
            v_cache.index_copy_(0, meta.slot_mapping, v)
            attn = self._attention(q, k, v, k_cache, v_cache, meta, decode_mask)
            x = x + layer.o(attn.reshape(n_tok, heads * hd))
            h = self._rms_norm(x, layer.post_norm)
            gate_up = layer.gate_up(h)
            act = F.silu(gate_up[:, : self._inter]).mul_(gate_up[:, self._inter :])
            x = x + layer.down(act)
        return self._rms_norm(x[rows], self.norm)

    def _forward_fused(
        self,
        ops: FusedOps,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """`_forward_torch` with the elementwise work in ``ops``' kernels: each residual add
        rides with the norm after it, so a layer is nine kernels (five of them matmuls or
        attention)."""
        cfg = self.config
        n_tok = input_ids.shape[0]
        heads, kv_heads, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        eps = cfg.rms_norm_eps
        x = self.embed[input_ids]
        delta: torch.Tensor | None = None
        # A NoPE layer rotates by position 0's angles, which are zero: its heads stay as they are.
        unrotated = torch.zeros_like(meta.positions) if cfg.nope_layers else meta.positions
        for layer, (k_cache, v_cache) in zip(self.layers, kv_caches, strict=True):
            h = ops.add_rms_norm(x, delta, layer.input_norm, eps)
            qkv = layer.qkv(h)
            self._norm_qk(layer, qkv)
            qk = ops.rope_kv_write(
                qkv,
                meta.positions if layer.rotary else unrotated,
                self.cos,
                self.sin,
                meta.slot_mapping,
                k_cache,
                v_cache,
                heads,
                kv_heads,
            )
            q, k = qk[:, :heads], qk[:, heads:]
            v = qkv[:, self._q + self._kv :].view(n_tok, kv_heads, hd)
            attn = self._attention(q, k, v, k_cache, v_cache, meta, None)
            h = ops.add_rms_norm(x, layer.o(attn.reshape(n_tok, heads * hd)), layer.post_norm, eps)
            delta = layer.down(ops.silu_mul(layer.gate_up(h)))
        # The last residual add and the final norm, for the rows asked for only.
        last = x[rows]
        return ops.add_rms_norm(last, None if delta is None else delta[rows], self.norm, eps)

    def _attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        decode_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        nd = meta.num_decodes
        if nd and not meta.prefills:
            return self._decode_attention(q, k_cache, v_cache, meta, decode_mask)
        out = torch.empty_like(q)
        if nd:
            out[:nd] = self._decode_attention(q[:nd], k_cache, v_cache, meta, decode_mask)
        window = self.config.sliding_window
        for seg in meta.prefills:
            qs = q[seg.start : seg.end].transpose(0, 1)
            n_q = seg.end - seg.start
            first = seg.context_len - n_q  # the first query's position
            # The first key any query of the chunk sees: the window's start for its first.
            lo = 0 if window is None else max(0, first - window + 1)
            sliding = window is not None and seg.context_len > window
            if seg.slots is None:
                ks, vs = k[seg.start : seg.end], v[seg.start : seg.end]
            else:
                ks = k_cache.index_select(0, seg.slots[lo:])
                vs = v_cache.index_select(0, seg.slots[lo:])
            mask = None
            if seg.slots is not None or sliding:
                qpos = torch.arange(first, seg.context_len, device=self.device)[:, None]
                kpos = torch.arange(lo, seg.context_len, device=self.device)[None, :]
                mask = kpos <= qpos
                if sliding:
                    assert window is not None
                    mask &= kpos > qpos - window
            o = F.scaled_dot_product_attention(
                qs,
                ks.transpose(0, 1),
                vs.transpose(0, 1),
                attn_mask=mask,
                is_causal=mask is None,
                enable_gqa=True,
            )
            out[seg.start : seg.end] = o.transpose(0, 1)
        return out

    def _decode_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        slots = meta.decode_slots
        if slots is None:
            raise ValueError("decode tokens need AttentionMetadata.decode_slots")
        if self.ops is not None:
            return self.ops.decode_attention(q, k_cache, v_cache, slots, meta.decode_context_lens)
        nd, hd = meta.num_decodes, q.shape[-1]
        # Gather each sequence's cached K/V into [nd, span, kv_heads, hd]; the mask hides padding.
        # index_select copies whole slot rows (3-10x faster than advanced indexing on CPU).
        flat = slots.reshape(-1)
        kv_heads = k_cache.shape[1]
        kb = k_cache.index_select(0, flat).view(nd, -1, kv_heads, hd)
        vb = v_cache.index_select(0, flat).view(nd, -1, kv_heads, hd)
        # One query per sequence: the query heads sharing a KV head act as that head's query
        # rows ([nd, kv_heads, group, hd]), which avoids the slower generic GQA path.
        o = F.scaled_dot_product_attention(
            q.reshape(nd, kv_heads, -1, hd),
            kb.transpose(1, 2),
            vb.transpose(1, 2),
            attn_mask=mask,
        )
        return o.reshape(nd, -1, hd)


def _reorder_heads(
    config: ModelConfig, weights: dict[str, torch.Tensor], order: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``weights`` with every query and key head's dimensions in ``order`` (`rotary_layout`):
    the rows of the Q and K projections and their biases, and the per-head norms."""
    out = dict(weights)
    heads = {"q": config.num_attention_heads, "k": config.num_key_value_heads}
    for i in range(config.num_hidden_layers):
        for p, n in heads.items():
            for part in ("weight", "bias"):
                name = layer_name(i, f"self_attn.{p}_proj.{part}")
                if name in out:
                    w = out[name]
                    rows = w.reshape(n, config.head_dim, -1)[:, order]
                    out[name] = rows.reshape(w.shape)
            norm = layer_name(i, f"self_attn.{p}_norm.weight")
            if norm in out:
                out[norm] = out[norm][order]
    return out
