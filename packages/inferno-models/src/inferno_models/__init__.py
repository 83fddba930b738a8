"""Llama-family models from GGUF and safetensors: config, weights, tokenizer, chat template, repository, conversion."""

__all__: list[str] = []
