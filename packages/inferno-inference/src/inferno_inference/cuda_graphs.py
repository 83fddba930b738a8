"""`CudaGraphDecoder`: decode steps replayed from captured CUDA graphs.

A decode step of a small model on a GPU is dominated by kernel-launch overhead (hundreds of
small kernels per token); replaying a captured graph launches them all at once. Graphs have
static shapes, so one graph is captured per bucket of (batch size, attention span): a step runs
in the smallest bucket that holds it. Padded rows write their K/V to a scratch slot that no
sequence owns, and the context-length mask hides padded positions.

With PyTorch attention the span buckets matter as much as the batch ones: decode attention
gathers ``span`` cache slots per sequence and layer, so a single graph padded to the longest
context the cache allows would read (and copy) the whole context window on every token, mostly
padding. The Triton attention stops at each sequence's length, so there one span serves.
"""

from __future__ import annotations

import bisect
import time

import structlog
import torch

from inferno_inference.model import AttentionMetadata, LlamaModel

__all__ = ["CudaGraphDecoder", "span_buckets"]

log = structlog.get_logger(__name__)

_BATCHES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
#: Most cache slots (batch x span) one graph's decode attention may gather; larger buckets are
#: not captured (their steps run eagerly): with PyTorch attention a 64 x 8192 bucket of a
#: Llama-3.2-1B-shaped model would hold about 1 GiB of gathered K/V per layer during capture.
MAX_GRAPH_SLOTS = 1 << 18


def span_buckets(max_span: int, block_size: int, *, min_span: int = 256) -> list[int]:
    """Attention spans to capture: whole blocks, doubling from ``min_span`` up to ``max_span``
    (which must be a multiple of ``block_size``); the last bucket is ``max_span`` itself."""
    if max_span < 1 or max_span % block_size:
        raise ValueError(f"max_span={max_span} is not a positive multiple of {block_size}")
    spans: list[int] = []
    span = -(-max(min_span, 1) // block_size) * block_size
    while span < max_span:
        spans.append(span)
        span *= 2
    return [*spans, max_span]


class _StaticStep:
    """The fixed-shape inputs of one bucket; a step is copied into them, padding included."""

    __slots__ = (
        "_host",
        "_rows",
        "graph",
        "ids",
        "lens",
        "logits",
        "meta",
        "positions",
        "scratch",
        "slot_mapping",
        "slots",
    )

    def __init__(self, batch: int, span: int, scratch: int, device: torch.device) -> None:
        self.scratch = scratch
        # ids, positions, slot mapping and context lengths share one buffer, so a step's
        # per-sequence inputs cross to the device in a single copy (from pinned memory).
        self._rows = torch.zeros(4, batch, dtype=torch.long, device=device)
        self._host = torch.zeros(4, batch, dtype=torch.long, pin_memory=device.type == "cuda")
        self.ids, self.positions, self.slot_mapping, self.lens = self._rows.unbind(0)
        self.slot_mapping.fill_(scratch)
        self.lens.fill_(1)
        self.slots = torch.full((batch, span), scratch, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits = torch.empty(0, device=device)
        #: The step as the model sees it: every tensor in it is one of the buffers above.
        self.meta = AttentionMetadata(
            positions=self.positions,
            slot_mapping=self.slot_mapping,
            num_decodes=batch,
            decode_slots=self.slots,
            decode_context_lens=self.lens,
            prefills=[],
            logits_indices=torch.arange(batch, device=device),
        )

    def fill(self, input_ids: torch.Tensor, meta: AttentionMetadata) -> None:
        """Copy a decode-only step (host tensors) in; rows past it attend to the scratch slot
        only and write their K/V there."""
        nd = meta.num_decodes
        slots = meta.decode_slots
        if slots is None or meta.prefills:
            raise ValueError("CudaGraphDecoder runs decode-only steps")
        span = slots.shape[1]
        # The previous step's copy out of this pinned buffer is done: its logits were read.
        host = self._host
        host[0, :nd] = input_ids
        host[1, :nd] = meta.positions
        host[2, :nd] = meta.slot_mapping
        if meta.decode_context_lens is None:
            host[3, :nd] = span
        else:
            host[3, :nd] = meta.decode_context_lens
        host[0:2, nd:] = 0
        host[2, nd:] = self.scratch
        host[3, nd:] = 1
        self._rows.copy_(host, non_blocking=True)
        # Slots past a row's length are masked, so stale values there are harmless.
        self.slots[:nd, :span].copy_(slots, non_blocking=True)
        self.slots[nd:, 0].fill_(self.scratch)


class CudaGraphDecoder:
    """Captures decode graphs for batch sizes up to ``max_batch`` and attention spans up to
    ``max_span`` slots per sequence, and replays them.

    ``scratch_slot`` is a cache slot outside every block the block manager hands out. With
    several spans, buckets of more than ``max_graph_slots`` batch x span slots are not captured.
    With
    ``capture=False`` the same padded, fixed-shape steps run eagerly (on any device): the
    padding logic can be checked without a GPU, and a suspected graph bug told apart from a
    padding one.
    """

    def __init__(
        self,
        model: LlamaModel,
        kv_layers: list[tuple[torch.Tensor, torch.Tensor]],
        *,
        max_batch: int,
        max_span: int,
        block_size: int,
        scratch_slot: int,
        min_span: int = 256,
        max_graph_slots: int = MAX_GRAPH_SLOTS,
        capture: bool = True,
    ) -> None:
        if capture and model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA model, this one is on {model.device}")
        self.model = model
        self.kv_layers = kv_layers
        self.scratch_slot = scratch_slot
        self.capture = capture
        self.batches = [b for b in _BATCHES if b < max_batch] + [max_batch]
        self.spans = span_buckets(max_span, block_size, min_span=min_span)
        self._steps: dict[tuple[int, int], _StaticStep] = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None
        start = time.perf_counter()
        # One span means attention that stops at each sequence's length (no gather): every
        # batch size is captured. Otherwise buckets past max_graph_slots are left eager.
        buckets = [
            (b, s)
            for b in self.batches
            for s in self.spans
            if len(self.spans) == 1 or b * s <= max_graph_slots
        ]
        # Largest first, so the smaller graphs' activations fit in the memory it pooled.
        for batch, span in sorted(buckets, key=lambda p: -p[0] * p[1]):
            step = _StaticStep(batch, span, scratch_slot, model.device)
            if capture:
                self._capture(step)
            self._steps[batch, span] = step
        log.info(
            "decode graphs ready",
            captured=capture,
            graphs=len(self._steps),
            batches=self.batches,
            spans=self.spans,
            seconds=round(time.perf_counter() - start, 2),
        )

    @property
    def max_batch(self) -> int:
        """The largest decode batch a graph takes."""
        return self.batches[-1]

    @property
    def max_span(self) -> int:
        """The longest attention span (cache slots per sequence) a graph takes."""
        return self.spans[-1]

    def _capture(self, step: _StaticStep) -> None:
        meta = step.meta
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream())
        # Warm-up runs (kernel selection, allocator) write only to the scratch slot.
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(2):
                self.model.forward(step.ids, meta, self.kv_layers)
        torch.cuda.current_stream().wait_stream(stream)
        step.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(step.graph, pool=self._pool):
            step.logits = self.model.forward(step.ids, meta, self.kv_layers)

    def can_run(self, num_decodes: int, span: int) -> bool:
        """A decode-only step of this size fits a captured bucket."""
        return self._smallest(num_decodes, span) in self._steps

    def _smallest(self, num_decodes: int, span: int) -> tuple[int, int] | None:
        if num_decodes > self.max_batch or span > self.max_span:
            return None
        return (
            self.batches[bisect.bisect_left(self.batches, num_decodes)],
            self.spans[bisect.bisect_left(self.spans, span)],
        )

    def bucket(self, num_decodes: int, span: int) -> tuple[int, int]:
        """The (batch, span) bucket a step of this size runs in."""
        bucket = self._smallest(num_decodes, span)
        if bucket is None or bucket not in self._steps:
            raise ValueError(f"no bucket holds {num_decodes} sequences over {span} slots")
        return bucket

    def run(self, input_ids: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Run a decode-only step given as host tensors; returns its logits."""
        if meta.decode_slots is None:
            raise ValueError("CudaGraphDecoder runs decode-only steps")
        nd = meta.num_decodes
        step = self._steps[self.bucket(nd, meta.decode_slots.shape[1])]
        step.fill(input_ids, meta)
        if step.graph is not None:
            step.graph.replay()
            logits = step.logits[:nd]
        else:
            with torch.inference_mode():
                logits = self.model.forward(step.ids, step.meta, self.kv_layers)[:nd]
        # A one-token prefill chunk rides in a decode step but is not sampled.
        if meta.logits_indices.numel() != nd:
            logits = logits[meta.logits_indices.to(logits.device)]
        return logits
