"""`Sampler`: turns a batch of logits into next tokens, each row with its own parameters.

Penalties, temperature and the top-k / top-p / min-p filters run as batched tensor ops over the
rows that use them (top-k / top-p over each row's likeliest tokens, a full sort only where the
nucleus is wide). A row samples by inverting its cumulative distribution at one uniform draw;
a seeded row draws from its own generator, so its tokens do not depend on the other rows in
the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from inferno_inference.sequence import Sequence, TokenTally
from inferno_inference.types import SamplingParams, TokenLogprob

__all__ = ["SampleResult", "Sampler"]

#: How many tokens `_top_k_top_p` takes with ``topk``, tier by tier, before it sorts a row in
#: full: 256 hold the nucleus of most rows, 4096 of nearly all the rest (a topk of 4096 costs a
#: sixth of a sort).
_CANDIDATES = (256, 4096)


@dataclass(frozen=True, slots=True)
class SampleResult:
    """The sampled token of each row, with its log-probability record when one was asked."""

    token_ids: list[int]
    logprobs: list[TokenLogprob | None]


class Sampler:
    """Stateless apart from the generator used by unseeded rows."""

    def __init__(self, *, seed: int | None = None) -> None:
        self._generator = torch.Generator()
        if seed is not None:
            self._generator.manual_seed(seed)
        else:
            self._generator.seed()

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> SampleResult:
        """Sample one token per row of ``logits`` (``[rows, vocab]``, on any device).

        Everything runs where the logits are: on a GPU only the token ids (and the asked
        log-probabilities) cross to the host, not rows x vocab floats, and the filters run
        as device kernels rather than a CPU's 0.3-1 ms a row.
        """
        params = [s.sampling for s in seqs]
        rows = logits.shape[0]
        if all(_plain_greedy(p) for p in params):
            return SampleResult(_argmax(logits).tolist(), [None] * rows)
        device = logits.device
        logits = logits.float()
        raw_logprobs: torch.Tensor | None = None
        if any(p.logprobs is not None for p in params):
            raw_logprobs = torch.log_softmax(logits, dim=-1)
        logits = self._apply_penalties(logits, seqs)
        tokens = _argmax(logits)
        sampled = [i for i, p in enumerate(params) if p.temperature != 0]
        if sampled:
            idx = torch.tensor(sampled, device=device)
            temps = torch.tensor([params[i].temperature for i in sampled], device=device)
            sub = logits[idx] / temps[:, None]
            sub = self._filter(sub, [params[i] for i in sampled])
            # One uniform draw per row against the row's cumulative distribution (in float64,
            # so the last tokens' mass is not lost to rounding): drawing the whole row's
            # noise cost about 1.2 ms per 49K-token row on a CPU, the sum costs a tenth.
            probs = torch.softmax(sub, dim=-1).double()
            cdf = probs.cumsum(dim=-1)
            draws = torch.empty(len(sampled), dtype=torch.float64)
            for j, i in enumerate(sampled):
                gen = seqs[i].generator
                draws[j] = torch.rand(
                    (), dtype=torch.float64, generator=gen if gen is not None else self._generator
                )
            total = cdf[:, -1]
            # Kept below the total, a draw that rounds up to it still picks the last token
            # with mass, not past it (and a token without mass is never the first whose sum
            # exceeds a draw).
            below = torch.minimum(draws.to(device) * total, torch.nextafter(total, 0 * total))
            picks = torch.searchsorted(cdf, below[:, None], right=True).squeeze(1)
            tokens[idx] = picks.to(tokens.dtype)
        token_list = tokens.tolist()
        records: list[TokenLogprob | None] = [None] * rows
        if raw_logprobs is not None:
            asked = [i for i, p in enumerate(params) if p.logprobs is not None]
            chosen = raw_logprobs[asked, tokens[asked].to(device)].tolist()
            for i, value in zip(asked, chosen, strict=True):
                count = params[i].logprobs
                top: tuple[tuple[int, float], ...] = ()
                if count:
                    vals, ids = raw_logprobs[i].topk(count)
                    top = tuple(zip(ids.tolist(), vals.tolist(), strict=True))
                records[i] = TokenLogprob(token_list[i], value, top)
        return SampleResult(token_list, records)

    @staticmethod
    def _apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """Penalties, then logit biases, then the JSON mask, on a copy of the rows that ask."""
        rows = [i for i, s in enumerate(seqs) if not _unadjusted(s.sampling)]
        if not rows:
            return logits
        logits = logits.clone()
        device = logits.device
        vocab = logits.shape[1]
        for i in rows:
            sp = seqs[i].sampling
            row = logits[i]
            if sp.repetition_penalty != 1.0 or sp.presence_penalty or sp.frequency_penalty:
                tally = _tally(seqs[i], vocab, device)
                if tally.seen is not None:
                    # Every token seen so far (prompt and output): its logit shrinks toward 0.
                    shrunk = torch.where(
                        row > 0, row / sp.repetition_penalty, row * sp.repetition_penalty
                    )
                    row.copy_(torch.where(tally.seen, shrunk, row))
                if tally.counts is not None:
                    counts = tally.counts
                    row -= sp.frequency_penalty * counts + sp.presence_penalty * (counts > 0)
            if sp.logit_bias:
                bias_ids, biases = zip(*sp.logit_bias, strict=True)
                where = torch.tensor(bias_ids, dtype=torch.long).to(device)
                row[where] += torch.tensor(biases, dtype=row.dtype).to(device)
            constraint = seqs[i].constraint
            allowed = constraint.allowed() if constraint is not None else None
            if allowed is not None:
                # The model's vocabulary may be padded past the tokenizer's: those ids never fit.
                allowed = allowed.to(device)
                row[: allowed.shape[0]].masked_fill_(~allowed, float("-inf"))
                row[allowed.shape[0] :] = float("-inf")
        return logits

    @staticmethod
    def _filter(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        device = logits.device
        need = [j for j, p in enumerate(params) if p.top_k > 0 or p.top_p < 1]
        if need:
            rows = torch.tensor(need, device=device)
            top_k = [params[j].top_k for j in need]
            top_p = torch.tensor([params[j].top_p for j in need], dtype=logits.dtype)
            logits = logits.clone()
            logits[rows] = _top_k_top_p(logits[rows], top_k, top_p.to(device))
        if any(p.min_p > 0 for p in params):
            min_p = torch.tensor([p.min_p for p in params], dtype=logits.dtype).to(device)
            probs = torch.softmax(logits, dim=-1)
            cutoff = min_p[:, None] * probs.max(dim=-1, keepdim=True).values
            logits = logits.masked_fill(probs < cutoff, float("-inf"))
        return logits


def _top_k_top_p(
    logits: torch.Tensor, top_k: list[int], top_p: torch.Tensor, tier: int = 0
) -> torch.Tensor:
    """``logits`` with all but each row's top-k tokens, then all but the smallest prefix (in
    descending order) whose mass reaches top_p, set to -inf (top_k 0: no limit; ``top_p`` on
    the logits' device).

    A full sort of a 49K-vocabulary row costs about 2-4 ms on a CPU core, the same order as a
    decode step of the default model, and the nucleus is almost always far smaller. So the
    likeliest ``_CANDIDATES[tier]`` tokens (or top_k of them) are taken with ``topk``; a row
    whose nucleus does not end among them (its candidates' mass falls short of top_p) tries
    the next tier, and past the last one is sorted in full.
    """
    vocab = logits.shape[1]
    if tier == len(_CANDIDATES):
        return _sorted_top_p(logits, top_p)
    device = logits.device
    limits = [min(k, vocab) if k > 0 else vocab for k in top_k]
    count = min(vocab, max(_CANDIDATES[tier], *(k for k in top_k if k > 0), 0))
    limit = torch.tensor(limits, device=device)
    values, order = logits.topk(count, dim=-1)  # sorted, descending
    drop = torch.arange(count, device=device)[None, :] >= limit[:, None]
    # Mass against the top-k tokens where top_k caps the row, else against the whole row.
    within = limit <= count
    capped = all(k <= count for k in limits)
    norm = torch.logsumexp(values.masked_fill(drop, float("-inf")), dim=-1)
    if not capped:
        norm = torch.where(within, norm, torch.logsumexp(logits, dim=-1))
    probs = torch.exp(values - norm[:, None]).masked_fill(drop, 0.0)
    mass = probs.cumsum(dim=-1)
    # The first token is always kept; top_p 1 keeps everything, whatever the rounding.
    drop |= (mass - probs >= top_p[:, None]) & (top_p < 1)[:, None]
    out = torch.full_like(logits, float("-inf"))
    out.scatter_(1, order, values.masked_fill(drop, float("-inf")))
    if capped:
        return out
    short = (~within & (mass[:, -1] < top_p)).nonzero().squeeze(1)
    if len(short):
        picked = short.tolist()
        out[short] = _top_k_top_p(logits[short], [top_k[j] for j in picked], top_p[short], tier + 1)
    return out


def _sorted_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Top-p over fully sorted rows (no top-k): the rows whose nucleus is wide."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    drop = probs.cumsum(dim=-1) - probs >= top_p[:, None]
    return torch.empty_like(logits).scatter_(
        1, order, sorted_logits.masked_fill(drop, float("-inf"))
    )


def _tally(seq: Sequence, vocab: int, device: torch.device) -> TokenTally:
    """``seq``'s `TokenTally`, brought up to its latest token: only the tokens appended since
    the last call are added."""
    sp = seq.sampling
    tally = seq.tally
    if tally is None or tally.vocab != vocab:
        tally = seq.tally = TokenTally(vocab)
        if sp.repetition_penalty != 1.0:
            tally.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
        if sp.presence_penalty or sp.frequency_penalty:
            tally.counts = torch.zeros(vocab, dtype=torch.float32, device=device)
    ids = seq.token_ids
    if tally.upto < len(ids):
        if tally.seen is not None:
            tally.seen[torch.tensor(ids[tally.upto :], dtype=torch.long).to(device)] = True
        start = max(tally.upto, seq.prompt_len)
        if tally.counts is not None and start < len(ids):
            out = torch.tensor(ids[start:], dtype=torch.long).to(device)
            tally.counts.index_add_(0, out, torch.ones(len(out), device=device))
        tally.upto = len(ids)
    return tally


def _argmax(x: torch.Tensor) -> torch.Tensor:
    """Row-wise argmax (first index on ties); numpy's is about 10x faster than torch's on a
    CPU (118 vs 12 us for one 128K-vocabulary row)."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad:
        return torch.from_numpy(np.argmax(x.numpy(), axis=-1))
    return x.argmax(dim=-1)


def _unadjusted(p: SamplingParams) -> bool:
    """No penalty, bias, JSON, choice, regex or grammar mask, no reasoning budget to force:
    the logits are sampled as the model gave them."""
    return (
        p.repetition_penalty == 1.0
        and not p.presence_penalty
        and not p.frequency_penalty
        and not p.logit_bias
        and p.response_format == "text"
        and not p.choices
        and p.regex is None
        and p.grammar is None
        and p.reasoning_budget is None
    )


def _plain_greedy(p: SamplingParams) -> bool:
    """Greedy with nothing that needs the full distribution on the host."""
    return p.temperature == 0 and p.logprobs is None and _unadjusted(p)
