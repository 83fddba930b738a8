"""GGUF -> Hugging Face directory conversion (config.json, model.safetensors, tokenizer files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import structlog
import torch

from inferno_models.errors import ModelError
from inferno_models.generation import GenerationDefaults
from inferno_models.gguf_loader import GGUFFile
from inferno_models.loader import gguf_generation_defaults
from inferno_models.names import fuse
from inferno_models.progress import byte_progress
from inferno_models.tokenizer import Tokenizer

__all__ = ["convert_gguf_to_hf"]

log = structlog.get_logger(__name__)


def convert_gguf_to_hf(
    source: str | Path, destination: str | Path, *, dtype: torch.dtype = torch.float32
) -> Path:
    """Write the GGUF model at ``source`` as a Hugging Face directory at ``destination``.

    The result loads with ``transformers.AutoModelForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained``; its weights are the GGUF's, dequantized to ``dtype``,
    in the layout of the family's own checkpoints (a Phi-3's Q, K and V fused again).

    Raises:
        ModelFormatError: the source is not a readable Llama GGUF.
        ModelError: ``destination`` exists and is not an empty directory.
    """
    from safetensors.torch import save_file

    src, dst = Path(source), Path(destination)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ModelError(f"{dst}: destination exists and is not an empty directory")
    gguf = GGUFFile(src)
    config = gguf.config()
    tokenizer = Tokenizer.from_gguf_metadata(gguf.metadata, source=str(src))
    with byte_progress(f"converting {src.name}", gguf.total_tensor_bytes()) as advance:
        weights = fuse(config, dict(gguf.iter_weights(config, dtype=dtype, progress=advance)))
    weights = {name: tensor.contiguous() for name, tensor in weights.items()}
    dst.mkdir(parents=True, exist_ok=True)
    hf_config = config.to_hf_dict()
    hf_config["torch_dtype"] = str(dtype).removeprefix("torch.")
    (dst / "config.json").write_text(json.dumps(hf_config, indent=2), encoding="utf-8")
    generation: dict[str, Any] = {
        "bos_token_id": config.bos_token_id,
        "eos_token_id": hf_config["eos_token_id"],
        **_hf_sampling(gguf_generation_defaults(src, gguf.metadata)),
    }
    (dst / "generation_config.json").write_text(json.dumps(generation, indent=2), encoding="utf-8")
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(dst, chat_template=gguf.get("tokenizer.chat_template"))
    log.info("converted", source=str(src), destination=str(dst), tensors=len(weights))
    return dst


def _hf_sampling(defaults: GenerationDefaults) -> dict[str, Any]:
    """``generation_config.json`` keys for ``defaults``, read back the same by transformers
    and by `GenerationDefaults.from_hf_generation_config`."""
    out: dict[str, Any] = dict(defaults.to_dict())
    if "max_tokens" in out:
        out["max_new_tokens"] = out.pop("max_tokens")
    if defaults.temperature == 0:
        # transformers samples only with do_sample, and greedy is how it spells temperature 0
        # (it warns about sampling settings next to greedy, which change nothing then).
        for key in ("temperature", "top_p", "top_k", "min_p"):
            out.pop(key, None)
        out["do_sample"] = False
    elif any(k in out for k in ("temperature", "top_p", "top_k", "min_p")):
        out["do_sample"] = True
    return out
