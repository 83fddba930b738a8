"""`ModelRunner`: turns a scheduled batch into model inputs and runs one forward pass."""

from __future__ import annotations

import torch

from inferno_inference.cuda_graphs import CudaGraphDecoder
from inferno_inference.kv_cache import KVCache
from inferno_inference.model import AttentionMetadata, LlamaModel, PrefillSegment
from inferno_inference.native import NativeDecoder
from inferno_inference.scheduler import ScheduledBatch
from inferno_inference.sequence import Sequence
from inferno_inference.types import TokenLogprob

__all__ = ["ModelRunner", "StepInputs"]


class StepInputs:
    """The flattened token ids and attention metadata of one step (host tensors).

    ``pooled`` lists the embedding sequences of the step with the rows (``start``, ``end``) of
    their tokens in ``input_ids``. ``scored`` lists the sequences scoring their prompt with
    (first row, its position, rows): the rows whose logits give the next prompt tokens.
    """

    __slots__ = ("input_ids", "meta", "pooled", "sampled", "scored")

    def __init__(
        self,
        input_ids: torch.Tensor,
        meta: AttentionMetadata,
        sampled: list[Sequence],
        pooled: list[tuple[Sequence, int, int]] | None = None,
        scored: list[tuple[Sequence, int, int, int]] | None = None,
    ) -> None:
        self.input_ids = input_ids
        self.meta = meta
        self.sampled = sampled
        self.pooled = pooled or []
        self.scored = scored or []


class ModelRunner:
    """Runs the model for a `ScheduledBatch` against a `KVCache`; owned by the stepping thread."""

    def __init__(
        self,
        model: LlamaModel,
        kv_cache: KVCache,
        *,
        graphs: CudaGraphDecoder | None = None,
        native: NativeDecoder | None = None,
    ) -> None:
        """``graphs`` (CUDA) or ``native`` (CPU) take the decode steps they can run."""
        self.model = model
        self.kv_cache = kv_cache
        self.graphs = graphs
        self.native = native
        self.block_size = kv_cache.block_size
        self.device = model.device
        #: Each token attends to at most this many latest positions (None: all of them).
        self.window = model.config.sliding_window
        self._block_offsets = torch.arange(self.block_size)

    def prepare(self, batch: ScheduledBatch) -> StepInputs:
        """Lay out the batch: single-token steps first (batched attention), then prefills.

        A decode with draft tokens runs as a chunk of its last token and its drafts, and
        gets ``1 + len(draft_ids)`` logits rows (its drafted positions in order) where any
        other sampled sequence gets one.
        """
        bs = self.block_size
        pairs = sorted(zip(batch.seqs, batch.num_tokens, strict=True), key=lambda p: p[1] > 1)
        decodes = [s for s, n in pairs if n == 1]
        # Every row a real decode (its last token): a one-token prefill chunk in the middle of
        # a prompt also has n == 1, but must not be sampled.
        if len(decodes) == len(pairs) and all(
            s.num_computed + 1 == s.num_tokens and s.pooling is None for s in decodes
        ):
            return self._prepare_decodes(decodes)
        ids: list[int] = []
        positions: list[int] = []
        logits_idx: list[int] = []
        sampled: list[Sequence] = []
        for s in decodes:
            p = s.num_computed
            ids.append(s.token_ids[p])
            positions.append(p)
        prefills: list[PrefillSegment] = []
        start = len(ids)
        for s, n in pairs[len(decodes) :]:
            p = s.num_computed
            ids.extend(s.token_ids[p : p + n])
            ids.extend(s.draft_ids)  # a decode's drafts follow its last real token
            positions.extend(range(p, p + n))
            slots = None if p == 0 else self._slots(s.block_table, p + n)
            prefills.append(PrefillSegment(start, start + n, p + n, slots))
            start += n
        offset = 0
        pooled: list[tuple[Sequence, int, int]] = []
        scored: list[tuple[Sequence, int, int, int]] = []
        for s, n in pairs:
            offset += n
            if s.scores_prompt and s.num_computed < s.prompt_len - 1:
                # Position q's logits give prompt token q + 1 (the last prompt token's row
                # samples the first output instead).
                count = min(n, s.prompt_len - 1 - s.num_computed)
                scored.append((s, offset - n, s.num_computed, count))
            if s.pooling is not None:
                pooled.append((s, offset - n, offset))
            elif s.num_computed + n == s.num_tokens + len(s.draft_ids):
                # A decode with drafts needs every row: each drafted position is sampled.
                logits_idx.extend(range(offset - 1 - len(s.draft_ids), offset))
                sampled.append(s)
        pos = torch.tensor(positions, dtype=torch.long)
        table_of_token = torch.tensor(
            [
                s.block_table[q // bs]
                for s, n in pairs
                for q in range(s.num_computed, s.num_computed + n)
            ],
            dtype=torch.long,
        )
        slot_mapping = table_of_token * bs + pos % bs
        decode_slots, decode_lens = self._decode_slots(decodes) if decodes else (None, None)
        meta = AttentionMetadata(
            positions=pos,
            slot_mapping=slot_mapping,
            num_decodes=len(decodes),
            decode_slots=decode_slots,
            decode_context_lens=decode_lens,
            prefills=prefills,
            logits_indices=torch.tensor(logits_idx, dtype=torch.long),
        )
        return StepInputs(torch.tensor(ids, dtype=torch.long), meta, sampled, pooled, scored)

    def _prepare_decodes(self, decodes: list[Sequence]) -> StepInputs:
        # The common step, kept short: it runs once per generated token, and on a GPU its
        # host time is not hidden behind the forward pass.
        bs = self.block_size
        rows = [
            (s.token_ids[p], p, s.block_table[p // bs] * bs + p % bs)
            for s in decodes
            for p in (s.num_computed,)
        ]
        ids, pos, mapping = torch.tensor(rows, dtype=torch.long).T.contiguous()
        decode_slots, decode_lens = self._decode_slots(decodes)
        meta = AttentionMetadata(
            positions=pos,
            slot_mapping=mapping,
            num_decodes=len(decodes),
            decode_slots=decode_slots,
            decode_context_lens=decode_lens,
            prefills=[],
            logits_indices=torch.arange(len(decodes)),
        )
        return StepInputs(ids, meta, decodes)

    def _decode_slots(self, decodes: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cache slots ``[n, span]`` each decode attends to (its context, or the window's
        latest positions of it; padded to the longest), with their counts when they differ."""
        bs = self.block_size
        lens = [s.num_computed + 1 for s in decodes]
        span = max(lens)
        if self.window is not None and span > self.window:
            return self._window_slots(decodes, lens)
        table = _tables(decodes, -(-span // bs))
        slots = (table[:, :, None] * bs + self._block_offsets).view(len(decodes), -1)[:, :span]
        lens_t = None if min(lens) == span else torch.tensor(lens, dtype=torch.long)
        return slots, lens_t

    def _window_slots(
        self, decodes: list[Sequence], lens: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`_decode_slots` under a sliding window: each decode's latest ``window`` positions."""
        assert self.window is not None
        bs, window = self.block_size, self.window
        # Released blocks (before each window) are never gathered.
        table = _tables(decodes, max(-(-n // bs) for n in lens)).clamp_(min=0)
        ends = torch.tensor(lens, dtype=torch.long)[:, None]  # one past each last position
        counts = ends.clamp(max=window)
        span = int(counts.max())
        # Padding repeats the last position: masked, but a real slot of the sequence.
        pos = torch.minimum(ends - counts + torch.arange(span), ends - 1)
        slots = table.gather(1, pos // bs) * bs + pos % bs
        counts = counts[:, 0]
        return slots, None if int(counts.min()) == span else counts

    def _slots(self, table: list[int], length: int) -> torch.Tensor:
        bs = self.block_size
        pos = torch.arange(length)
        # Released blocks (under a sliding window) lie before every query's window: their
        # slots are listed, as slot 0's, but never attended to.
        blocks = torch.tensor(table, dtype=torch.long).clamp_(min=0)
        return blocks[pos // bs] * bs + pos % bs

    def execute(self, inputs: StepInputs) -> torch.Tensor:
        """Run the forward pass; returns logits for ``inputs.sampled`` (in that order), and
        pools the hidden states of ``inputs.pooled`` into their sequences."""
        if inputs.pooled or inputs.scored:
            return self._execute_pooled(inputs)
        dev = self.device
        meta = inputs.meta
        native = self.native
        if native is not None:
            if native.can_run(meta):
                return native.run(inputs.input_ids, meta, self.kv_cache.layers)
            split = _split_decodes(meta)
            if split is not None and native.can_run(split[0]):
                # Chunks too long for the C step: decodes in C, chunks in torch. Two passes
                # over the weights, but the running decodes keep the C path's speed while a
                # long prompt joins.
                decodes, prefills = split
                nd = meta.num_decodes
                first = native.run(inputs.input_ids[:nd], decodes, self.kv_cache.layers)
                with torch.inference_mode():
                    rest = self.model.forward(inputs.input_ids[nd:], prefills, self.kv_cache.layers)
                return torch.cat([first, rest])
        graphs = self.graphs
        if (
            graphs is not None
            and meta.decode_slots is not None
            and not meta.prefills
            and graphs.can_run(meta.num_decodes, meta.decode_slots.shape[1])
        ):
            return graphs.run(inputs.input_ids, meta)
        if dev.type != "cpu":
            meta = _to_device(meta, dev)
        with torch.inference_mode():
            return self.model.forward(inputs.input_ids.to(dev), meta, self.kv_cache.layers)

    def _execute_pooled(self, inputs: StepInputs) -> torch.Tensor:
        # In torch, whole: the C decode path and the CUDA graphs produce logits only.
        rows: list[int] = []
        shares: list[tuple[Sequence, int]] = []  # each sequence's run of the hidden rows
        for seq, start, end in inputs.pooled:
            if seq.pooling == "mean":
                take = range(start, end)
            elif seq.num_computed + (end - start) == seq.num_tokens:
                take = range(end - 1, end)  # "last": only the final chunk's last token counts
            else:
                take = range(0)
            rows.extend(take)
            shares.append((seq, len(take)))
        pooled_rows = len(rows)
        for _, first, _, count in inputs.scored:
            rows.extend(range(first, first + count))
        dev = self.device
        meta = inputs.meta if dev.type == "cpu" else _to_device(inputs.meta, dev)
        with torch.inference_mode():
            logits, hidden = self.model.forward_with_hidden(
                inputs.input_ids.to(dev),
                meta,
                self.kv_cache.layers,
                torch.tensor(rows, dtype=torch.long),
            )
        assert hidden is not None
        if inputs.scored:
            self._score_prompts(inputs, hidden[pooled_rows:])
        hidden = hidden[:pooled_rows].float()
        at = 0
        for seq, n in shares:
            if seq.num_computed == 0 or seq.pooled is None:  # a first chunk, or recomputing
                seq.pooled = torch.zeros(hidden.shape[1], device=hidden.device)
            if n:
                part = hidden[at : at + n]
                seq.pooled = seq.pooled + part.sum(0) if seq.pooling == "mean" else part[0].clone()
                at += n
        return logits

    def _score_prompts(self, inputs: StepInputs, hidden: torch.Tensor) -> None:
        """Record the log-probabilities of the prompt tokens that ``hidden`` (the scored
        rows, in order) predict."""
        with torch.inference_mode():
            logprobs = torch.log_softmax(self.model.lm_head(hidden).float(), dim=-1).cpu()
        at = 0
        for seq, _, position, count in inputs.scored:
            rows = logprobs[at : at + count]
            at += count
            top_n = seq.sampling.prompt_logprobs or 0
            targets = torch.tensor(seq.token_ids[position + 1 : position + 1 + count])
            chosen = rows.gather(1, targets[:, None])[:, 0].tolist()
            tops = rows.topk(top_n, dim=-1) if top_n else None
            for k in range(count):
                if len(seq.prompt_logprobs) != position + k:
                    continue  # scored before (a preempted sequence computes its prompt again)
                top: tuple[tuple[int, float], ...] = ()
                if tops is not None:
                    top = tuple(zip(tops.indices[k].tolist(), tops.values[k].tolist(), strict=True))
                seq.prompt_logprobs.append(TokenLogprob(int(targets[k]), float(chosen[k]), top))


def _tables(decodes: list[Sequence], width: int) -> torch.Tensor:
    """The first ``width`` block table entries of each decode, ``[n, width]``, padded with 0."""
    return torch.tensor(
        [s.block_table[:width] + [0] * (width - len(s.block_table[:width])) for s in decodes],
        dtype=torch.long,
    )


def _split_decodes(meta: AttentionMetadata) -> tuple[AttentionMetadata, AttentionMetadata] | None:
    """A mixed step as a decode-only step and a prefill-only one (tokens renumbered), or
    ``None`` when the step is not mixed. `prepare` puts the single-token rows first; not all
    of them are sampled (a one-token chunk from the middle of a prompt is not), so the
    logits indices are split by the token they point at, not by count."""
    nd = meta.num_decodes
    if not (nd and meta.prefills) or meta.decode_slots is None:
        return None
    in_decodes = meta.logits_indices < nd
    decodes = AttentionMetadata(
        positions=meta.positions[:nd],
        slot_mapping=meta.slot_mapping[:nd],
        num_decodes=nd,
        decode_slots=meta.decode_slots,
        decode_context_lens=meta.decode_context_lens,
        prefills=[],
        logits_indices=meta.logits_indices[in_decodes],
    )
    prefills = AttentionMetadata(
        positions=meta.positions[nd:],
        slot_mapping=meta.slot_mapping[nd:],
        num_decodes=0,
        decode_slots=None,
        decode_context_lens=None,
        prefills=[
            PrefillSegment(p.start - nd, p.end - nd, p.context_len, p.slots) for p in meta.prefills
        ],
        logits_indices=meta.logits_indices[~in_decodes] - nd,
    )
    return decodes, prefills


def _to_device(meta: AttentionMetadata, dev: torch.device) -> AttentionMetadata:
    def mv(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(dev, non_blocking=True)

    return AttentionMetadata(
        positions=meta.positions.to(dev, non_blocking=True),
        slot_mapping=meta.slot_mapping.to(dev, non_blocking=True),
        num_decodes=meta.num_decodes,
        decode_slots=mv(meta.decode_slots),
        decode_context_lens=mv(meta.decode_context_lens),
        prefills=[
            PrefillSegment(p.start, p.end, p.context_len, mv(p.slots)) for p in meta.prefills
        ],
        logits_indices=meta.logits_indices.to(dev, non_blocking=True),
    )
