"""OpenAI response bodies and stream chunks, built from engine outputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from inferno_inference import TokenLogprob, Usage

from inferno_backend.protocols import TokenizerLike

__all__ = [
    "ChoiceState",
    "chat_logprobs",
    "completion_logprobs",
    "echoed_logprobs",
    "joined_logprobs",
    "usage_body",
]


@dataclass(slots=True)
class ChoiceState:
    """What has been generated so far for one choice."""

    text: list[str] = field(default_factory=list)
    #: How many tokens each piece of ``text`` holds.
    piece_tokens: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    #: The prompt's scores (``prompt_logprobs``), when the engine sent them.
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    finish_reason: str | None = None
    #: The stop token id or stop string that ended the choice (see `GenerationOutput`).
    stop_reason: int | str | None = None
    error: str | None = None


def usage_body(usage: Usage, reasoning_tokens: int | None = None) -> dict[str, Any]:
    """The ``usage`` object of a response; ``reasoning_tokens`` (of the completion) where
    the reasoning was split from the answer."""
    body: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
    }
    if reasoning_tokens is not None:
        body["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return body


def _piece(tokenizer: TokenizerLike, token_id: int) -> str:
    return tokenizer.decode([token_id])


def chat_logprobs(
    tokenizer: TokenizerLike, logprobs: Sequence[TokenLogprob], top: int
) -> dict[str, Any]:
    """The chat ``logprobs`` object: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    content = []
    for lp in logprobs:
        token = _piece(tokenizer, lp.token_id)
        alternatives = [
            {"token": (t := _piece(tokenizer, tid)), "logprob": v, "bytes": list(t.encode())}
            for tid, v in lp.top[:top]
        ]
        content.append(
            {
                "token": token,
                "logprob": lp.logprob,
                "bytes": list(token.encode()),
                "top_logprobs": alternatives,
            }
        )
    return {"content": content}


def completion_logprobs(
    tokenizer: TokenizerLike, logprobs: Sequence[TokenLogprob], top: int, offset: int
) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object; ``offset`` is the text length before it."""
    return _legacy_logprobs(tokenizer, [(lp.token_id, lp) for lp in logprobs], top, offset)


def echoed_logprobs(
    tokenizer: TokenizerLike,
    prompt_ids: Sequence[int],
    scored: Sequence[TokenLogprob | None],
    top: int,
) -> dict[str, Any]:
    """The legacy ``logprobs`` object of an echoed prompt: its first token has no
    log-probability (null, as OpenAI writes it), the others theirs given what comes before."""
    return _legacy_logprobs(tokenizer, list(zip(prompt_ids, scored, strict=True)), top, 0)


def _legacy_logprobs(
    tokenizer: TokenizerLike,
    entries: Sequence[tuple[int, TokenLogprob | None]],
    top: int,
    offset: int,
) -> dict[str, Any]:
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    for token_id, lp in entries:
        token = _piece(tokenizer, token_id)
        tokens.append(token)
        token_logprobs.append(None if lp is None else lp.logprob)
        tops.append(None if lp is None else {_piece(tokenizer, t): v for t, v in lp.top[:top]})
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def joined_logprobs(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two legacy ``logprobs`` objects, the second after the first."""
    return {key: [*first[key], *second[key]] for key in first}
