"""`CudaGraphDecoder`: decode steps replayed from captured CUDA graphs.

A decode step of a small model on a GPU is dominated by kernel-launch overhead (hundreds of
small kernels per token); replaying a captured graph launches them all at once. Graphs have
static shapes, so one graph is captured per batch-size bucket, with every sequence's attention
span padded to the longest context the cache allows; padded rows write their K/V to a scratch
slot that no sequence owns, and the context-length mask hides padded positions.
"""

from __future__ import annotations

import bisect

import structlog
import torch

from inferno_inference.model import AttentionMetadata, LlamaModel

__all__ = ["CudaGraphDecoder"]

log = structlog.get_logger(__name__)

_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


class _Graph:
    __slots__ = ("graph", "ids", "lens", "logits", "positions", "slot_mapping", "slots")

    def __init__(self, batch: int, span: int, scratch: int, device: torch.device) -> None:
        self.ids = torch.zeros(batch, dtype=torch.long, device=device)
        self.positions = torch.zeros(batch, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((batch,), scratch, dtype=torch.long, device=device)
        self.slots = torch.full((batch, span), scratch, dtype=torch.long, device=device)
        self.lens = torch.ones(batch, dtype=torch.long, device=device)
        self.graph = torch.cuda.CUDAGraph()
        self.logits = torch.empty(0, device=device)

    def meta(self) -> AttentionMetadata:
        return AttentionMetadata(
            positions=self.positions,
            slot_mapping=self.slot_mapping,
            num_decodes=self.ids.shape[0],
            decode_slots=self.slots,
            decode_context_lens=self.lens,
            prefills=[],
            logits_indices=torch.arange(self.ids.shape[0], device=self.ids.device),
        )


class CudaGraphDecoder:
    """Captures decode graphs for batch sizes up to ``max_batch`` and replays them.

    ``span`` is the padded attention span (slots per sequence); ``scratch_slot`` is a cache
    slot outside every block the block manager hands out.
    """

    def __init__(
        self,
        model: LlamaModel,
        kv_layers: list[tuple[torch.Tensor, torch.Tensor]],
        *,
        max_batch: int,
        span: int,
        scratch_slot: int,
    ) -> None:
        if model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA model, this one is on {model.device}")
        self.model = model
        self.kv_layers = kv_layers
        self.span = span
        self.scratch_slot = scratch_slot
        self.buckets = [b for b in _BUCKETS if b < max_batch] + [max_batch]
        self._graphs: dict[int, _Graph] = {}
        self._pool = torch.cuda.graph_pool_handle()
        for batch in reversed(self.buckets):  # largest first so smaller ones reuse its pool
            self._graphs[batch] = self._capture(batch)
        log.info("cuda graphs captured", buckets=self.buckets, span=span)

    def _capture(self, batch: int) -> _Graph:
        g = _Graph(batch, self.span, self.scratch_slot, self.model.device)
        meta = g.meta()
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(2):  # warm up kernels and allocator outside the graph
                self.model.forward(g.ids, meta, self.kv_layers)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.inference_mode(), torch.cuda.graph(g.graph, pool=self._pool):
            g.logits = self.model.forward(g.ids, meta, self.kv_layers)
        return g

    def can_run(self, num_decodes: int, span: int) -> bool:
        """A decode-only step of this size fits a captured graph."""
        return num_decodes <= self.buckets[-1] and span <= self.span

    def run(self, input_ids: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Replay the graph for a decode-only step given as host tensors; returns its logits."""
        nd = meta.num_decodes
        slots = meta.decode_slots
        if slots is None or meta.prefills:
            raise ValueError("CudaGraphDecoder runs decode-only steps")
        g = self._graphs[self.buckets[bisect.bisect_left(self.buckets, nd)]]
        batch, span = g.ids.shape[0], slots.shape[1]
        lens = meta.decode_context_lens
        if lens is None:
            lens = torch.full((nd,), span, dtype=torch.long)
        # Build full-size host inputs (padding rows point at the scratch slot) and copy once.
        ids = torch.zeros(batch, dtype=torch.long)
        pos = torch.zeros(batch, dtype=torch.long)
        mapping = torch.full((batch,), self.scratch_slot, dtype=torch.long)
        ctx = torch.ones(batch, dtype=torch.long)
        ids[:nd], pos[:nd], mapping[:nd], ctx[:nd] = (
            input_ids,
            meta.positions,
            meta.slot_mapping,
            lens,
        )
        g.ids.copy_(ids, non_blocking=True)
        g.positions.copy_(pos, non_blocking=True)
        g.slot_mapping.copy_(mapping, non_blocking=True)
        g.lens.copy_(ctx, non_blocking=True)
        g.slots[:nd, :span].copy_(slots, non_blocking=True)
        g.slots[nd:, 0].fill_(self.scratch_slot)
        g.graph.replay()
        return g.logits[:nd]
