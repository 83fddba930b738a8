"""A continuous-batching Llama inference engine with a paged KV cache."""

__all__: list[str] = []
