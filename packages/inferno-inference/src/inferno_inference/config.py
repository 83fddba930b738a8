"""`EngineConfig`: the validated knobs of one engine."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["EngineConfig"]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class EngineConfig(BaseModel):
    """How the engine sizes its KV cache and batches; a bad value names its field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    block_size: int = Field(default=16, ge=1, le=1024, description="Tokens per KV block.")
    kv_cache_bytes: int = Field(
        default=256 * 1024 * 1024, gt=0, description="Memory budget of the whole KV cache."
    )
    max_num_seqs: int = Field(default=32, ge=1, description="Most sequences in one step.")
    max_num_batched_tokens: int = Field(
        default=512, ge=1, description="Token budget of one step (prefill chunks + decodes)."
    )
    max_model_len: int | None = Field(
        default=None, ge=2, description="Context length; default: the model's."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="Weights, activations and KV cache dtype."
    )
    device: str = Field(default="cpu", description="torch device, e.g. 'cpu' or 'cuda:0'.")
    enable_prefix_caching: bool = Field(default=True, description="Reuse shared prompt blocks.")
    cuda_graphs: bool = Field(
        default=True, description="Capture decode steps in CUDA graphs (CUDA devices only)."
    )
    cuda_graph_max_batch: int = Field(
        default=64,
        ge=1,
        description="Largest decode batch captured in a CUDA graph (capped by max_num_seqs).",
    )
    cuda_graph_max_context: int = Field(
        default=8192,
        ge=1,
        description="Longest context (tokens) a captured decode graph covers; decode steps "
        "with a longer context run without a graph. With PyTorch attention, graphs are "
        "captured for spans doubling from 256 up to it (attention gathers the whole span).",
    )
    kernel_backend: Literal["auto", "torch", "triton"] = Field(
        default="auto",
        description="'triton': Triton kernels for decode attention (read in place from the "
        "paged cache instead of gathered into a padded copy), RoPE with the K/V cache writes, "
        "residual add with RMSNorm, and SiLU*up; on a CPU only under TRITON_INTERPRET=1, for "
        "tests. 'torch': PyTorch ops only. 'auto': 'triton' on CUDA when Triton is installed "
        "and the kernels pass a self-check at startup, else 'torch'.",
    )
    cpu_prepacked_weights: bool = Field(
        default=True,
        description="CPU without the native matmuls: keep oneDNN-prepacked weights for "
        "multi-row matmuls (faster batches; in fp32 without the native decode path, a second "
        "copy of the weights is kept for single-row GEMVs).",
    )
    cpu_native_decode: bool = Field(
        default=True,
        description="CPU, float32/bfloat16: run decode steps of up to cpu_native_max_rows "
        "sequences (and prefill chunks, see cpu_native_max_prefill_context) in the package's C "
        "kernels (compiled on first use with the system C "
        "compiler and cached; the PyTorch path is used where none is found), on a packed "
        "copy of the weights (see cpu_native_matmuls).",
    )
    cpu_native_matmuls: bool = Field(
        default=True,
        description="With the native decode path: run every matmul (prefill chunks and large "
        "batches too) in the C kernels on the packed copy of the weights, and keep no other "
        "copy: half the weight memory, at oneDNN's prefill speed (measured within 5%). With "
        "int8, prefill reads the int8 codes too. False keeps oneDNN-prepacked weights for "
        "those matmuls.",
    )
    cpu_native_max_rows: int = Field(
        default=64, ge=1, description="Most sequences in a decode step the C kernels take."
    )
    cpu_native_max_prefill_context: int = Field(
        default=32768,
        ge=0,
        description="The C kernels also take steps with prefill chunks (alone or beside "
        "decodes: one pass over the weights) when no chunk's sequence reaches more than this "
        "many tokens with it; longer ones go to PyTorch. The C attention stages each chunk's "
        "context in fp32 (kv_heads x tokens x 2 x head_dim floats per chunk, for the step), "
        "which this bounds. 0: prefill always in PyTorch.",
    )
    weight_quantization: Literal["none", "int8"] = Field(
        default="none",
        description="'int8': per-output-channel symmetric int8 copies of the linear weights "
        "(LM head included, embedding table not), about 2x fewer bytes per decoded token than "
        "bf16. CPU only; needs dtype bfloat16 or float32. With the native path (the default), "
        "every matmul reads the int8 codes (fp32 activations), the only copy kept, unless "
        "cpu_native_matmuls is off: then prefill keeps unquantized weights next to them. "
        "Without the native path, only single-row steps use int8 (torch's int8 kernel, bf16 "
        "activations) and memory grows by the int8 copy. Logits are close to, not equal to, "
        "the unquantized ones.",
    )
    num_threads: int | None = Field(
        default=None, ge=1, description="torch intra-op threads on the CPU; default: unchanged."
    )
    speculative_tokens: int = Field(
        default=0,
        ge=0,
        le=16,
        description="Prompt-lookup speculation: up to this many draft tokens per decode step, "
        "copied from where the sequence's last tokens occurred before in its prompt or "
        "output, and verified in the same forward pass. Every kept token is one the request "
        "would have produced (in bf16, up to the rounding of the chunk kernels a drafted "
        "position runs in, which a near-tie can feel); a step that drafts computes more "
        "rows, which pays on a CPU when text repeats its context (summaries, quotes, code "
        "edits). Such steps run outside CUDA graphs. 0 turns it off.",
    )
    speculative_step_tokens: int = Field(
        default=8,
        ge=2,
        description="Drafts fill a step up to this many tokens in all, real ones included: "
        "none join a step that is already this large. On a CPU every row of a step costs "
        "compute, and past about 8 rows a draft (kept about half the time) costs more than "
        "it saves; a GPU, where rows are nearly free until the batch is large, can take more.",
    )
    prompt_lookup_min: int = Field(
        default=2, ge=1, le=16, description="Shortest suffix (tokens) matched for a draft."
    )
    prompt_lookup_max: int = Field(
        default=4, ge=1, le=16, description="Longest suffix (tokens) matched for a draft."
    )

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least "
                f"max_num_seqs ({self.max_num_seqs}) so every running sequence can decode"
            )
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError(
                f"prompt_lookup_min ({self.prompt_lookup_min}) must not exceed "
                f"prompt_lookup_max ({self.prompt_lookup_max})"
            )
        if self.weight_quantization == "int8":
            if not self.device.startswith("cpu"):
                raise ValueError(
                    f"weight_quantization='int8' runs on the CPU only, not device={self.device!r}"
                )
            if self.dtype not in ("bfloat16", "float32"):
                raise ValueError(
                    f"weight_quantization='int8' needs dtype 'bfloat16' or 'float32', "
                    f"not {self.dtype!r}"
                )
        return self

    @property
    def torch_dtype(self) -> torch.dtype:
        """``dtype`` as a torch dtype."""
        return _DTYPES[self.dtype]
