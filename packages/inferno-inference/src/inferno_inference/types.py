"""Request and output types of the engine: the values that cross its seam."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "MAX_CHOICES",
    "MAX_LOGIT_BIAS",
    "EmbeddingOutput",
    "EmbeddingRequest",
    "EngineStats",
    "FinishReason",
    "GenerationOutput",
    "GenerationRequest",
    "Pooling",
    "SamplingParams",
    "TokenLogprob",
    "Usage",
]

FinishReason = Literal["stop", "length", "abort", "error"]

#: How an embedding pools the final hidden states of its input's tokens: their mean, or the
#: last token's alone (the only one that has seen the whole input, in a causal model).
Pooling = Literal["mean", "last"]

#: Most tokens one request may bias (OpenAI's own limit is of this order).
MAX_LOGIT_BIAS = 1024
#: Most strings one request's choice mode may choose among.
MAX_CHOICES = 256
#: Longest pattern of one request's regex mode, in characters.
MAX_REGEX = 4096
#: Longest grammar of one request's grammar mode, in characters.
MAX_GRAMMAR = 65536


class SamplingParams(BaseModel):
    """Per-request sampling parameters; a bad value raises a message naming the field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_tokens: int = Field(default=16, ge=1, description="Most new tokens per choice.")
    temperature: float = Field(default=1.0, ge=0, le=2, description="0 means greedy.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus mass kept.")
    top_k: int = Field(default=0, ge=0, description="Keep the k most likely tokens; 0 is off.")
    min_p: float = Field(default=0.0, ge=0, le=1, description="Drop tokens below min_p * p_max.")
    repetition_penalty: float = Field(default=1.0, gt=0, le=2, description="CTRL-style penalty.")
    presence_penalty: float = Field(default=0.0, ge=-2, le=2, description="OpenAI semantics.")
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2, description="OpenAI semantics.")
    seed: int | None = Field(default=None, description="Seeded requests are reproducible.")
    stop: tuple[str, ...] = Field(default=(), description="Stop strings, cut from the output.")
    stop_token_ids: tuple[int, ...] = Field(default=(), description="Extra ids that stop.")
    ignore_eos: bool = Field(default=False, description="Keep going past end-of-sequence.")
    n: int = Field(default=1, ge=1, le=16, description="Independent choices for one prompt.")
    logprobs: int | None = Field(
        default=None, ge=0, le=20, description="Top alternatives per token; None disables."
    )
    prompt_logprobs: int | None = Field(
        default=None,
        ge=0,
        le=20,
        description="Also score the prompt: each prompt token's log-probability given the "
        "tokens before it, with this many alternatives (the first token has none). The "
        "prompt is then computed in full, not taken from the prefix cache.",
    )
    logit_bias: tuple[tuple[int, float], ...] = Field(
        default=(),
        max_length=MAX_LOGIT_BIAS,
        description="(token id, bias) pairs added to the logits before sampling; -100 bans "
        "a token and 100 all but forces it. Log-probabilities stay the model's own.",
    )
    response_format: Literal["text", "json_object", "json_schema"] = Field(
        default="text",
        description="json_object: every choice is one JSON object, ending when it closes; "
        "json_schema: one that also follows json_schema.",
    )
    json_schema: str | None = Field(
        default=None, description="The JSON Schema (as JSON text) of response_format json_schema."
    )
    choices: tuple[str, ...] = Field(
        default=(),
        max_length=MAX_CHOICES,
        description="Choice mode: the output is exactly one of these strings, spelled by "
        "whichever tokens the model finds likeliest; it ends there. Empty: off.",
    )
    regex: str | None = Field(
        default=None,
        max_length=MAX_REGEX,
        description="Regex mode: the output is one whole match of this regular expression "
        "(characters, classes, groups, alternation and quantifiers; no look-around or "
        "back-references); it ends once no longer match is possible. None: off.",
    )
    grammar: str | None = Field(
        default=None,
        max_length=MAX_GRAMMAR,
        description="Grammar mode: the output is one whole derivation of the rule root of "
        "this GBNF grammar (llama.cpp's notation; see inferno_inference.gbnf); it ends once "
        "nothing may follow. None: off.",
    )
    json_optional: bool = Field(
        default=False,
        description="With JSON output: a choice may be plain text instead, which nothing "
        "limits; the JSON constraint applies when its first non-whitespace character opens "
        "the root value (as tool calls a model may choose not to make).",
    )

    reasoning_end: str | None = Field(
        default=None,
        max_length=64,
        description="The output starts with a reasoning block that ends with this text (such "
        "as '</think>'): JSON output or choices hold only after it (until then any token may "
        "come), and reasoning_budget counts the block's tokens.",
    )
    reasoning_start: str | None = Field(
        default=None,
        max_length=64,
        description="With reasoning_end: the block is there only when the output's first "
        "token begins (after whitespace) with this text (such as '<think>'); otherwise the "
        "output is all answer, constrained from its first token. None: the output starts "
        "inside the block.",
    )
    reasoning_budget: int | None = Field(
        default=None,
        ge=0,
        description="With reasoning_end: once the block holds this many tokens, the tokens "
        "of reasoning_end are forced, so the answer follows. None: no limit.",
    )

    @model_validator(mode="after")
    def _check(self) -> SamplingParams:
        if any(s == "" for s in self.stop):
            raise ValueError("stop strings must not be empty")
        if self.response_format != "text" and self.ignore_eos:
            raise ValueError(f"ignore_eos cannot be combined with {self.response_format}")
        if (self.json_schema is not None) != (self.response_format == "json_schema"):
            raise ValueError("json_schema is given exactly when response_format is json_schema")
        if self.json_optional and self.response_format == "text":
            raise ValueError("json_optional needs JSON output (json_object or json_schema)")
        if self.choices:
            if not all(self.choices):
                raise ValueError("choices must not be empty strings")
            if self.response_format != "text":
                raise ValueError(f"choices cannot be combined with {self.response_format}")
            if self.ignore_eos:
                raise ValueError("ignore_eos cannot be combined with choices")
        for name, value in (("regex", self.regex), ("grammar", self.grammar)):
            if value is None:
                continue
            if self.response_format != "text" or self.choices:
                raise ValueError(f"{name} cannot be combined with JSON output or choices")
            if self.ignore_eos:
                raise ValueError(f"ignore_eos cannot be combined with {name}")
        if self.regex is not None and self.grammar is not None:
            raise ValueError("give regex or grammar, not both")
        if self.reasoning_end == "" or self.reasoning_start == "":
            raise ValueError("reasoning_end and reasoning_start must not be empty")
        if self.reasoning_end is None and (
            self.reasoning_start is not None or self.reasoning_budget is not None
        ):
            raise ValueError("reasoning_start and reasoning_budget need reasoning_end")
        for token_id, bias in self.logit_bias:
            if not -100 <= bias <= 100 or bias != bias:
                raise ValueError(f"logit_bias of token {token_id} must be in [-100, 100]")
        if len({token_id for token_id, _ in self.logit_bias}) != len(self.logit_bias):
            raise ValueError("logit_bias names a token more than once")
        return self


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One prompt, already tokenized, with how to sample from it."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    #: Lower runs first: it is admitted ahead of higher values and may preempt them when the
    #: engine is full. Equal priorities keep arrival order.
    priority: int = 0


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """One input, already tokenized, to embed: the model's final hidden states (after its
    last norm) pooled over the input's tokens, in fp32, scaled to unit length when
    ``normalize``."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    pooling: Pooling = "mean"
    normalize: bool = True


@dataclass(frozen=True, slots=True)
class EmbeddingOutput:
    """The embedding of one `EmbeddingRequest`."""

    request_id: str
    embedding: tuple[float, ...]
    prompt_tokens: int
    #: Seconds from submission until the engine first scheduled the request (None if unknown).
    queue_time_s: float | None = None


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """Log-probability of a sampled token, with the top alternatives at its position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one request (all choices together)."""

    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0
    #: Seconds from submission until the engine first scheduled the request (None if unknown).
    queue_time_s: float | None = None

    @property
    def total_tokens(self) -> int:
        """Prompt and completion tokens together."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class GenerationOutput:
    """One increment of a request's stream.

    ``token_ids`` and ``text`` are the delta since the previous output of the same choice
    (``index``). The last output of a choice has ``finish_reason`` set; the last output of the
    whole request also carries ``usage``. ``error`` explains a ``finish_reason`` of ``"error"``.
    """

    request_id: str
    index: int
    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason | None = None
    #: With ``logprobs``: an entry per token whose text this output releases (text held back
    #: by a possible stop string holds its tokens' entries too). The tokens of a matched stop
    #: string have none; a stop token's entry comes last, though its text is not in ``text``.
    logprobs: tuple[TokenLogprob, ...] | None = None
    usage: Usage | None = None
    error: str | None = None
    #: The pooled hidden state, on the one output of an embedding request (unit length when
    #: the request asked for it).
    embedding: tuple[float, ...] | None = None
    #: With ``prompt_logprobs``, on the first output of choice 0: one entry per prompt token,
    #: None for the first.
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    #: What ended a choice whose ``finish_reason`` is ``"stop"``: the token id (an end of
    #: sequence or one of ``stop_token_ids``; it is the last of ``token_ids`` and its text is
    #: not in ``text``), or the stop string matched (cut from the text). None otherwise, and
    #: when a JSON-mode value was complete.
    stop_reason: int | str | None = None

    @property
    def finished(self) -> bool:
        """This choice is complete."""
        return self.finish_reason is not None


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot of the engine's load, safe to expose (no prompts)."""

    running: int
    waiting: int
    kv_blocks_total: int
    kv_blocks_used: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    tokens_per_second: float
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    preemptions_total: int = 0
    max_num_seqs: int = 0
    draft_tokens_total: int = 0
    accepted_draft_tokens_total: int = 0

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks in use."""
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0

    @property
    def prefix_hit_rate(self) -> float:
        """Fraction of prompt tokens looked up in the prefix cache that hit."""
        return (
            self.prefix_cache_hits / self.prefix_cache_queries if self.prefix_cache_queries else 0.0
        )

    @property
    def draft_acceptance_rate(self) -> float:
        """Fraction of speculation's draft tokens that were kept (0 without speculation)."""
        if not self.draft_tokens_total:
            return 0.0
        return self.accepted_draft_tokens_total / self.draft_tokens_total

    @property
    def free_slots(self) -> int:
        """Sequences that could still join the running batch."""
        return max(0, self.max_num_seqs - self.running)
