"""`KVCache`: the paged key/value storage, carved out of one allocation of a `MemoryResource`.

Every layer gets a key and a value tensor of ``[num_blocks * block_size, kv_heads, head_dim]``
slots; slot ``block * block_size + offset`` holds one token. The bytes come from the injected
resource, so the resource's statistics account for the real KV memory.
"""

from __future__ import annotations

import torch
from inferno_memory import MemoryResource, TorchAllocator
from inferno_models.config import ModelConfig

__all__ = ["KVCache"]


class KVCache:
    """Key/value slots of every layer, sized by a memory budget."""

    def __init__(
        self,
        resource: MemoryResource,
        config: ModelConfig,
        *,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        #: A slot past every block the block manager hands out: padded rows of a captured
        #: CUDA graph write their K/V here.
        self.scratch_slot = num_blocks * block_size
        self._allocator = TorchAllocator(resource)
        shape = (
            config.num_hidden_layers,
            2,
            num_blocks * block_size + 1,
            config.num_key_value_heads,
            config.head_dim,
        )
        self._storage: torch.Tensor | None = self._allocator.zeros(shape, dtype, device)
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = [
            (self._storage[i, 0], self._storage[i, 1]) for i in range(config.num_hidden_layers)
        ]

    @staticmethod
    def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        """Bytes one block takes across all layers (keys and values)."""
        per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
        return per_token * block_size * dtype.itemsize

    @classmethod
    def blocks_for_budget(
        cls, budget_bytes: int, config: ModelConfig, block_size: int, dtype: torch.dtype
    ) -> int:
        """How many blocks fit in ``budget_bytes`` (one token slot is kept as scratch)."""
        per_token = cls.bytes_per_block(config, 1, dtype)
        return max(0, budget_bytes - per_token) // cls.bytes_per_block(config, block_size, dtype)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cache (0 once released)."""
        s = self._storage
        return 0 if s is None else s.numel() * s.element_size()

    def release(self) -> None:
        """Give the storage back to the resource; the cache must not be used afterwards."""
        if self._storage is not None:
            storage, self._storage = self._storage, None
            self.layers = []
            self._allocator.release(storage)
