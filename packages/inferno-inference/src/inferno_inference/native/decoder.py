"""`NativeDecoder`: runs a `LlamaModel`'s steps through ``decode.c``, one call each.

The decoder points the C code at the model's own tensors (each `Projection`'s copy laid out by
`pack_weight`, the norms, the embedding table) and at the KV cache; it copies nothing.
It takes steps of at most ``max_rows`` decoding sequences and of prefill chunks whose sequences
reach at most ``max_prefill_context`` tokens, alone or together; the engine runs every other
step on the PyTorch path. Both paths read and write the same KV cache, so a sequence can move
between them from one step to the next.
"""

from __future__ import annotations

import ctypes

import torch
from inferno_models.config import ModelConfig

from inferno_inference.errors import EngineError
from inferno_inference.linear import NativeWeight, quantize_int8
from inferno_inference.model import AttentionMetadata, LlamaModel
from inferno_inference.native.build import NativeLibrary, load_native
from inferno_inference.rope import rope_tables

__all__ = ["NATIVE_DTYPES", "NativeDecoder", "NativeMatmul", "native_unsupported", "pack_weight"]

#: Model dtypes the C decode path runs (fp16 has no fast CPU dot product to use).
NATIVE_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
_ABI = 7
_W_INT8 = 2  # decode.c's weight type for int8 codes with per-row scales
_p = ctypes.c_void_p
_i64 = ctypes.c_int64


class _Layer(ctypes.Structure):
    _fields_ = [
        ("input_norm", _p),
        ("qkv", _p),
        ("o", _p),
        ("post_norm", _p),
        ("gate_up", _p),
        ("down", _p),
        ("k_cache", _p),
        ("v_cache", _p),
        ("qkv_scale", _p),
        ("o_scale", _p),
        ("gate_up_scale", _p),
        ("down_scale", _p),
        ("qkv_bias", _p),
        ("o_bias", _p),
        ("q_norm", _p),
        ("k_norm", _p),
        ("no_rope", _i64),
    ]


class _Model(ctypes.Structure):
    _fields_ = [
        ("hidden", _i64),
        ("inter", _i64),
        ("heads", _i64),
        ("kv_heads", _i64),
        ("head_dim", _i64),
        ("vocab", _i64),
        ("n_layers", _i64),
        ("eps", ctypes.c_float),
        ("dtype", ctypes.c_int32),
        ("wtype", ctypes.c_int32),
        ("layers", ctypes.POINTER(_Layer)),
        ("embed", _p),
        ("final_norm", _p),
        ("lm_head", _p),
        ("cos", _p),
        ("sin", _p),
        ("lm_head_scale", _p),
    ]


_BLOCK = 16  # output rows per packed block (one 64-byte vector of fp32)
_TILE = 32  # rows per register tile in decode.c: the row count is padded to it


def pack_weight(
    weight: torch.Tensor, *, int8: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``weight`` (``[out, in]``, fp32 or bf16) in the layout ``decode.c`` streams, and the
    per-row scales when ``int8`` (else ``None``).

    Output rows go in blocks of 16, zero rows padding ``out`` to a multiple of 32. Within a
    block, fp32 stores column ``k`` of the 16 rows side by side (``[out/16, in, 16]``); bf16
    stores columns in pairs, ``(k, k+1)`` of row 0, then of row 1, ... (``[out/16, in/2, 16,
    2]``), the operand order of the bf16 dot-product instruction. ``int8`` stores the
    per-output-channel symmetric codes of `quantize_int8` like fp32 (``[out/16, in, 16]``),
    with fp32 scales ``[padded out]``. Raises `EngineError` for other dtypes or an odd bf16
    ``in``.
    """
    if weight.dtype not in NATIVE_DTYPES or weight.dim() != 2:
        raise EngineError(f"cannot pack a {weight.dtype} weight of shape {tuple(weight.shape)}")
    out, cols = weight.shape
    rows = -(-out // _TILE) * _TILE
    scales = None
    w = weight.detach().contiguous()
    if int8:
        w, scales = quantize_int8(w)
        scales = torch.cat([scales, scales.new_ones(rows - out)])
    if rows != out:
        w = torch.cat([w, w.new_zeros(rows - out, cols)])
    if w.dtype == torch.bfloat16:
        if cols % 2:
            raise EngineError(f"bf16 native layout needs an even input width, not {cols}")
        packed = w.view(rows // _BLOCK, _BLOCK, cols // 2, 2).permute(0, 2, 1, 3)
    else:
        packed = w.view(rows // _BLOCK, _BLOCK, cols).permute(0, 2, 1)
    return packed.contiguous(), scales


def _bind(library: NativeLibrary | None) -> ctypes.CDLL:
    """The compiled kernels (``library``, or built now), checked for this module's ABI."""
    native = library or load_native("decode")
    if native.lib is None:
        raise EngineError(f"native kernels unavailable: {native.reason}")
    if native.lib.inferno_decode_abi() != _ABI:
        raise EngineError(f"native kernel ABI mismatch in {native.path}")
    lib: ctypes.CDLL = native.lib
    return lib


class NativeMatmul:
    """``x @ W.T`` over a `pack_weight` layout, in ``decode.c``: the matmuls of the steps the
    step call does not take (long prefills, steps of more than ``max_rows`` sequences), so a
    model's packed copy can be its only one (`Projection(native_matmul=...)`)."""

    def __init__(self, library: NativeLibrary | None = None, threads: int | None = None) -> None:
        self._matmul = _bind(library).inferno_matmul
        self._matmul.restype = None
        self._matmul.argtypes = [_p, ctypes.c_int32, _p, _p, _i64, _i64, _i64, _p, ctypes.c_int32]
        self.threads = threads

    def __call__(self, weight: NativeWeight, x: torch.Tensor, out_features: int) -> torch.Tensor:
        """``x`` (``[rows, in]``, any float dtype) times the packed ``weight`` of
        ``out_features`` rows; the result in ``x``'s dtype."""
        packed, scales = weight
        if scales is not None:
            wt, act = _W_INT8, torch.float32
        else:
            wt, act = NATIVE_DTYPES[packed.dtype], packed.dtype
        rows, cols = x.shape
        inner = packed.shape[1] * (2 if packed.dim() == 4 else 1)
        if cols != inner:
            raise EngineError(f"input width {cols} does not match the packed weight's {inner}")
        xa = x.to(act).contiguous()
        y = torch.empty(rows, out_features, dtype=torch.float32)
        self._matmul(
            _ptr(packed),
            wt,
            None if scales is None else _ptr(scales),
            _ptr(xa),
            rows,
            out_features,
            cols,
            _ptr(y),
            self.threads or torch.get_num_threads(),
        )
        return y if x.dtype == torch.float32 else y.to(x.dtype)


def native_unsupported(config: ModelConfig, dtype: torch.dtype) -> str | None:
    """Why the C decode path cannot run this model in ``dtype``, or ``None`` when it can."""
    if dtype not in NATIVE_DTYPES:
        return f"native decode supports float32 and bfloat16, not {dtype}"
    widths = (config.hidden_size, config.intermediate_size, config.head_dim)
    if dtype == torch.bfloat16 and any(w % 2 for w in widths):
        return f"bf16 native decode needs even widths, got {widths}"
    return None


def _ptr(t: torch.Tensor) -> int:
    if not t.is_contiguous():
        raise EngineError("native decode needs contiguous tensors")
    return int(t.data_ptr())


class NativeDecoder:
    """Pure decode steps of ``model`` (CPU, fp32 or bf16) in C; see the module docstring."""

    def __init__(
        self,
        model: LlamaModel,
        *,
        max_rows: int = 64,
        max_prefill_context: int = 32768,
        library: NativeLibrary | None = None,
        threads: int | None = None,
    ) -> None:
        """Bind ``model``; raises `EngineError` when it cannot run natively (the message says
        why: device, dtype, missing packed weights or no compiled library). Steps run on
        ``threads`` threads (default: torch's intra-op thread count at each step).

        ``max_prefill_context`` is where prefill chunks stop being taken: the C attention
        stages a chunk's whole context in fp32 for the step, so this bounds that buffer."""
        if model.device.type != "cpu":
            raise EngineError(f"native decode runs on the CPU, not {model.device}")
        unsupported = native_unsupported(model.config, model.dtype)
        if unsupported is not None:
            raise EngineError(unsupported)
        self._step = _bind(library).inferno_decode_step
        self._step.restype = ctypes.c_int
        self._step.argtypes = [
            ctypes.POINTER(_Model),
            _i64,  # tokens
            _p,  # token ids
            _p,  # positions
            _p,  # slot mapping
            _p,  # context slots, all tokens' lists end to end
            _p,  # where each token's list starts
            _p,  # its length
            _i64,  # tokens to compute logits for
            _p,  # their rows
            _p,  # logits
            ctypes.c_int32,
        ]
        self.model = model
        self.max_rows = max_rows
        self.max_prefill_context = max_prefill_context
        self.threads = threads
        cfg = model.config
        # fp32 rope tables whatever the model dtype: the C code rotates in fp32.
        self._cos, self._sin = rope_tables(
            cfg, model.cos.shape[0], dtype=torch.float32, device=model.device
        )
        lm_head, lm_scale = model.lm_head.native_weight()
        #: Whether the projections are int8 codes with per-row scales.
        self.int8 = lm_scale is not None
        self._layers = (_Layer * cfg.num_hidden_layers)()
        # fp32 copies the C structs point at (biases, Qwen3's head norms): kept alive here.
        self._biases: list[torch.Tensor] = []
        for dst, layer in zip(self._layers, model.layers, strict=True):
            dst.input_norm = _ptr(layer.input_norm)
            dst.post_norm = _ptr(layer.post_norm)
            for name in ("qkv", "o", "gate_up", "down"):
                weight, scales = getattr(layer, name).native_weight()
                if (scales is not None) != self.int8:
                    raise EngineError("projections must be all int8 or all unquantized")
                setattr(dst, name, _ptr(weight))
                setattr(dst, f"{name}_scale", None if scales is None else _ptr(scales))
            for name in ("qkv", "o"):
                bias = getattr(layer, name).bias_f32()
                if bias is not None:
                    self._biases.append(bias)
                    setattr(dst, f"{name}_bias", _ptr(bias))
            if layer.q_norm is not None and layer.k_norm is not None:
                q_norm, k_norm = (
                    layer.q_norm.float().contiguous(),
                    layer.k_norm.float().contiguous(),
                )
                self._biases += [q_norm, k_norm]
                dst.q_norm, dst.k_norm = _ptr(q_norm), _ptr(k_norm)
            dst.no_rope = int(not layer.rotary)
        self._struct = _Model(
            hidden=cfg.hidden_size,
            inter=cfg.intermediate_size,
            heads=cfg.num_attention_heads,
            kv_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim,
            vocab=cfg.vocab_size,
            n_layers=cfg.num_hidden_layers,
            eps=cfg.rms_norm_eps,
            dtype=NATIVE_DTYPES[model.dtype],
            wtype=_W_INT8 if self.int8 else NATIVE_DTYPES[model.dtype],
            layers=self._layers,
            embed=_ptr(model.embed),
            final_norm=_ptr(model.norm),
            lm_head=_ptr(lm_head),
            cos=_ptr(self._cos),
            sin=_ptr(self._sin),
            lm_head_scale=None if lm_scale is None else _ptr(lm_scale),
        )
        self._bound_cache: tuple[int, ...] = ()

    def can_run(self, meta: AttentionMetadata) -> bool:
        """Whether this step is one the C path takes: at most ``max_rows`` decodes, and
        prefill chunks whose context is at most ``max_prefill_context`` tokens."""
        nd = meta.num_decodes
        if nd > self.max_rows or (nd and meta.decode_slots is None):
            return False
        if not meta.prefills:
            return nd > 0
        return all(seg.context_len <= self.max_prefill_context for seg in meta.prefills)

    def _bind_cache(self, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        ptrs = tuple(_ptr(t) for pair in kv_caches for t in pair)
        if ptrs == self._bound_cache:
            return
        dtype = self.model.dtype
        for dst, (k, v) in zip(self._layers, kv_caches, strict=True):
            if k.dtype != dtype or v.dtype != dtype:
                raise EngineError("the KV cache dtype must match the model dtype")
            dst.k_cache, dst.v_cache = _ptr(k), _ptr(v)
        self._bound_cache = ptrs

    def run(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> torch.Tensor:
        """Run one step; fp32 logits ``[len(meta.logits_indices), vocab]`` of the tokens
        ``meta.logits_indices`` lists, in that order."""
        if not self.can_run(meta):
            raise EngineError("not a step the native path takes")
        self._bind_cache(kv_caches)
        ids = input_ids.to(torch.int64).contiguous()
        positions = meta.positions.to(torch.int64).contiguous()
        slot_mapping = meta.slot_mapping.to(torch.int64).contiguous()
        ctx, starts, lens = _contexts(meta, slot_mapping, self.model.config.sliding_window)
        out_rows = meta.logits_indices.to(torch.int64).contiguous()
        n_out = out_rows.numel()
        logits = torch.empty(n_out, self.model.config.vocab_size, dtype=torch.float32)
        rc = self._step(
            ctypes.byref(self._struct),
            ids.numel(),
            _ptr(ids),
            _ptr(positions),
            _ptr(slot_mapping),
            _ptr(ctx),
            _ptr(starts),
            _ptr(lens),
            n_out,
            _ptr(out_rows),
            _ptr(logits),
            self.threads or torch.get_num_threads(),
        )
        if rc != 0:
            raise EngineError("native step ran out of memory")
        return logits


def _contexts(
    meta: AttentionMetadata, slot_mapping: torch.Tensor, window: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cache slots each token of the step attends to, as one flat list with each token's
    start and length in it: a decode row's own list; for a prefill chunk, its sequence's
    slots (earlier tokens first), of which each token takes the prefix up to itself, or
    under a sliding ``window`` the last ``window`` slots of that prefix."""
    lists: list[torch.Tensor] = []
    starts: list[torch.Tensor] = []
    lens: list[torch.Tensor] = []
    nd = meta.num_decodes
    offset = 0
    if nd:
        assert meta.decode_slots is not None
        span = meta.decode_slots.shape[1]
        lists.append(meta.decode_slots.reshape(-1))
        starts.append(torch.arange(nd, dtype=torch.int64) * span)
        lens.append(
            torch.full((nd,), span, dtype=torch.int64)
            if meta.decode_context_lens is None
            else meta.decode_context_lens.to(torch.int64)
        )
        offset = nd * span
    for seg in meta.prefills:
        n_q = seg.end - seg.start
        slots = slot_mapping[seg.start : seg.end] if seg.slots is None else seg.slots
        lists.append(slots)
        ends = torch.arange(seg.context_len - n_q + 1, seg.context_len + 1)
        if window is None or seg.context_len <= window:
            starts.append(torch.full((n_q,), offset, dtype=torch.int64))
            lens.append(ends)
        else:
            first = (ends - window).clamp(min=0)
            starts.append(first + offset)
            lens.append(ends - first)
        offset += slots.numel()
    if len(lists) == 1:  # the common step, decodes alone: no copies
        return lists[0].to(torch.int64).contiguous(), starts[0], lens[0].contiguous()
    return (
        torch.cat(lists).to(torch.int64).contiguous(),
        torch.cat(starts).contiguous(),
        torch.cat(lens).contiguous(),
    )
