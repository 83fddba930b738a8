"""Request bodies of the OpenAI-compatible routes, validated strictly (no type coercion).

Unknown fields are ignored, as OpenAI clients send fields a server may not know; known fields
with the wrong type or out of range are rejected with a message naming them. The one leniency is
JSON's: ``2.0`` is the integer 2 (as JSON Schema, and so the OpenAPI description, has it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Annotated, Any, Literal

from inferno_inference import MAX_CHOICES, MAX_GRAMMAR, MAX_LOGIT_BIAS, MAX_REGEX
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    Tag,
    field_validator,
    model_validator,
)

from inferno_backend.api.tools import ToolPlan, plan_tools
from inferno_backend.config import TEMPLATE_RESERVED

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "DetokenizeRequest",
    "EmbeddingsRequest",
    "FunctionDefinition",
    "JsonSchemaFormat",
    "NamedToolChoice",
    "ResponseFormat",
    "ResponseFunctionCall",
    "ResponseFunctionCallOutput",
    "ResponseFunctionTool",
    "ResponseInputItem",
    "ResponseInputMessage",
    "ResponseInputText",
    "ResponseNamedTool",
    "ResponseReasoningConfig",
    "ResponseReasoningInput",
    "ResponseReasoningText",
    "ResponseTextConfig",
    "ResponseTextFormat",
    "ResponsesRequest",
    "SamplingFields",
    "StreamOptions",
    "TemplateFields",
    "TextContentPart",
    "TokenizeRequest",
    "Tool",
    "ToolCall",
    "ToolFields",
]

#: Most tools one request may describe (OpenAI's limit).
MAX_TOOLS = 128
#: Most inputs one embeddings request may carry (OpenAI's limit).
MAX_EMBEDDING_INPUTS = 2048

_STRICT = ConfigDict(strict=True, extra="ignore", frozen=True)


def _integral(value: object) -> object:
    """``3.0`` -> ``3`` (inside lists too): JSON has one number type and JSON Schema calls 3.0 an
    integer, so a client (or a fuzzer) following the OpenAPI description may send it. 3.5 stays a
    float and is rejected by the strict int check. Used as a field ``before`` validator, which
    leaves the JSON schema of the field as it is."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


StopField = Annotated[
    str | list[Annotated[str, Field(min_length=1)]] | None,
    Field(
        default=None,
        description="Up to 4 strings that end the generation (cut from it).",
        # The count and emptiness rules are checked below (for clearer messages); the
        # description states them so clients and fuzzers know them too.
        json_schema_extra={
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 4},
                {"type": "null"},
            ]
        },
    ),
]


class StreamOptions(BaseModel):
    """Options of a streamed response."""

    model_config = _STRICT

    include_usage: bool = Field(default=False, description="Send a final chunk with usage.")


class JsonSchemaFormat(BaseModel):
    """The schema of ``response_format={"type": "json_schema", ...}``."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1, max_length=64, description="A name for the schema.")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(
        default=None,
        alias="schema",
        description="The JSON Schema; a part JSON mode cannot enforce is refused with a 400.",
    )
    strict: bool | None = Field(default=None, description="Accepted; the schema is always kept.")


class ResponseFormat(BaseModel):
    """What shape the output must take."""

    model_config = _STRICT

    type: Literal["text", "json_object", "json_schema"] = Field(
        description="text; json_object: each choice is one JSON object; json_schema: one that "
        "also follows json_schema.schema."
    )
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _check(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format: json_schema needs its json_schema object")
        return self


#: The fields ``structured_outputs`` stands for, which a request may not also give.
_CONSTRAINT_FIELDS = ("response_format", "guided_choice", "guided_regex", "grammar")


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = _STRICT

    model: str = Field(min_length=1, description="Name of a model listed by GET /v1/models.")
    max_tokens: int | None = Field(default=None, ge=1, description="Most new tokens per choice.")
    temperature: float | None = Field(
        default=None,
        ge=0,
        le=2,
        description="0 is greedy. Left out: the model's recommendation, else 1 (as for every "
        "sampling field: the served model's setting, then OpenAI's default).",
    )
    top_p: float | None = Field(default=None, ge=0, le=1, description="Nucleus mass kept.")
    top_k: int | None = Field(default=None, ge=0, description="Keep the k likeliest; 0 is off.")
    min_p: float | None = Field(default=None, ge=0, le=1, description="Relative floor.")
    repetition_penalty: float | None = Field(default=None, gt=0, le=2)
    n: int = Field(default=1, ge=1, le=16, description="Choices to generate.")
    stop: StopField
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64, description="Sampling seed.")
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stream: bool = Field(default=False, description="Answer with server-sent events.")
    stream_options: StreamOptions | None = None
    ignore_eos: bool = Field(default=False, description="Continue past end-of-sequence.")
    user: str | None = Field(default=None, description="Accepted and ignored.")
    response_format: ResponseFormat | None = None
    priority: int = Field(
        default=0,
        ge=-(2**31),
        lt=2**31,
        description="Lower is served first, and may preempt higher values when the engine is "
        "full; equal priorities keep arrival order (an extension, as vLLM's).",
    )
    guided_choice: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_CHOICES,
        description="The answer is exactly one of these strings (an extension, as vLLM's).",
    )
    guided_regex: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_REGEX,
        description="The answer is one whole match of this regular expression (an extension, "
        "as vLLM's): characters, classes, groups, alternation and quantifiers; no look-around "
        "or back-references.",
    )
    grammar: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_GRAMMAR,
        description="The answer is one whole derivation of the rule root of this GBNF grammar "
        "(llama.cpp's notation and field name): literals, character classes, rule "
        "references, groups and the quantifiers * + ? {m,n}.",
    )
    thinking_token_budget: int | None = Field(
        default=None,
        ge=0,
        description="A reasoning model's thinking is cut at this many tokens: '</think>' is "
        "then written for it and the answer follows (an extension, as vLLM's). Applies where "
        "the reasoning is split (chat and responses); the answer's tokens still count "
        "against max_tokens.",
    )
    logit_bias: dict[str, float] | None = Field(
        default=None,
        max_length=MAX_LOGIT_BIAS,
        description="Token id (as a string) to a bias in [-100, 100] added to its logit.",
        json_schema_extra={
            "propertyNames": {"pattern": "^[0-9]+$"},
            "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
        },
    )

    structured_outputs: dict[str, Any] | None = Field(
        default=None,
        description='vLLM\'s form of the output constraints: {"choice": [...]}, {"regex": '
        'pattern}, {"grammar": GBNF}, {"json": schema}, or {"json_object": true} (as '
        "guided_choice, guided_regex, grammar and response_format).",
    )

    _integral_numbers = field_validator(
        "max_tokens", "top_k", "n", "seed", "priority", mode="before"
    )(_integral)

    @model_validator(mode="before")
    @classmethod
    def _structured_outputs(cls, data: Any) -> Any:
        """``structured_outputs`` rewritten as the fields it stands for."""
        if not isinstance(data, dict) or data.get("structured_outputs") is None:
            return data
        spec = data["structured_outputs"]
        if not isinstance(spec, dict):
            raise ValueError("structured_outputs: must be an object")
        given = sorted(k for k, v in spec.items() if v is not None and v is not False)
        kinds = ("choice", "regex", "grammar", "json", "json_object")
        unsupported = [k for k in given if k not in kinds]
        if unsupported:
            raise ValueError(
                f"structured_outputs: {', '.join(unsupported)} not supported "
                f"({', '.join(kinds)} are)"
            )
        if len(given) != 1:
            raise ValueError(f"structured_outputs: give one of {', '.join(kinds)}")
        if any(data.get(k) is not None for k in _CONSTRAINT_FIELDS):
            raise ValueError(
                "structured_outputs: give the constraint there or in response_format / "
                "guided_choice / guided_regex / grammar, not both"
            )
        data = {k: v for k, v in data.items() if k != "structured_outputs"}
        (kind,) = given
        if kind == "choice":
            data["guided_choice"] = spec["choice"]
        elif kind == "regex":
            data["guided_regex"] = spec["regex"]
        elif kind == "grammar":
            data["grammar"] = spec["grammar"]
        elif kind == "json_object":
            data["response_format"] = {"type": "json_object"}
        else:
            schema = spec["json"]
            if isinstance(schema, str):
                try:
                    schema = json.loads(schema)
                except ValueError:
                    raise ValueError("structured_outputs: json is not valid JSON") from None
            data["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "structured_outputs", "schema": schema},
            }
        return data

    @model_validator(mode="after")
    def _check_common(self) -> SamplingFields:
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("stop: at most 4 stop strings are allowed")
        if isinstance(self.stop, str) and not self.stop:
            raise ValueError("stop: stop strings must not be empty")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        for key, bias in (self.logit_bias or {}).items():
            if not key.isascii() or not key.isdigit():
                raise ValueError(f"logit_bias: keys are token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias: the bias of token {key} must be in [-100, 100]")
        pairs = self.logit_bias_pairs
        if len(pairs) != len({t for t, _ in pairs}):
            raise ValueError("logit_bias: a token id is given more than once")
        json_output = self.response_format is not None and self.response_format.type != "text"
        if json_output and self.ignore_eos:
            raise ValueError("response_format: JSON output cannot be combined with ignore_eos")
        if self.guided_choice is not None:
            if not all(self.guided_choice):
                raise ValueError("guided_choice: the choices must not be empty strings")
            if json_output:
                raise ValueError("guided_choice: cannot be combined with JSON output")
            if self.ignore_eos:
                raise ValueError("guided_choice: cannot be combined with ignore_eos")
        for name, value in (("guided_regex", self.guided_regex), ("grammar", self.grammar)):
            if value is None:
                continue
            if json_output or self.guided_choice is not None:
                raise ValueError(f"{name}: cannot be combined with JSON output or choices")
            if self.ignore_eos:
                raise ValueError(f"{name}: cannot be combined with ignore_eos")
        if self.guided_regex is not None and self.grammar is not None:
            raise ValueError("grammar: cannot be combined with guided_regex")
        return self

    @property
    def output_format(self) -> tuple[Literal["text", "json_object", "json_schema"], str | None]:
        """The engine's response format and JSON Schema (as JSON text)."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return "text", None
        if fmt.json_schema is None or fmt.json_schema.schema_ is None:
            return "json_object", None  # a json_schema without a schema: any object
        return "json_schema", json.dumps(fmt.json_schema.schema_)

    @property
    def optional_output(self) -> bool:
        """The model may answer in plain text instead of the JSON of `output_format`."""
        return False

    @property
    def logit_bias_pairs(self) -> tuple[tuple[int, float], ...]:
        """``logit_bias`` as (token id, bias) pairs, by token id."""
        return tuple(sorted((int(k), float(v)) for k, v in (self.logit_bias or {}).items()))

    @property
    def stop_list(self) -> tuple[str, ...]:
        """The stop strings as a tuple."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        """A streamed response ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage


class TextContentPart(BaseModel):
    """A text part of a message's content (the only kind a text model understands)."""

    model_config = _STRICT

    type: Literal["text"]
    text: str

    @model_validator(mode="before")
    @classmethod
    def _only_text(cls, data: Any) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        if isinstance(kind, str) and kind != "text":
            raise ValueError(
                f"content parts of type {kind!r} are not supported: this model reads text only"
            )
        return data


_FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class FunctionDefinition(BaseModel):
    """A function the model may call."""

    model_config = _STRICT

    name: str = Field(pattern=_FUNCTION_NAME, description="Letters, digits, _ and -; at most 64.")
    description: str | None = Field(default=None, description="What it does, for the model.")
    parameters: dict[str, Any] | None = Field(
        default=None, description="JSON Schema of the arguments object; none: no arguments."
    )
    strict: bool | None = Field(
        default=None,
        description="Enforce parameters exactly (a part JSON mode cannot enforce is a 400); "
        "otherwise checks on values such as pattern or minimum are not enforced.",
    )

    @model_validator(mode="after")
    def _check(self) -> FunctionDefinition:
        if self.parameters is not None and self.parameters.get("type", "object") != "object":
            raise ValueError("parameters: must be the schema of an object")
        return self


class Tool(BaseModel):
    """A tool of ``tools``: a function."""

    model_config = _STRICT

    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    """The function of a named ``tool_choice``."""

    model_config = _STRICT

    name: str = Field(min_length=1)


class NamedToolChoice(BaseModel):
    """``tool_choice`` that makes every answer a call of one function."""

    model_config = _STRICT

    type: Literal["function"]
    function: FunctionName


class ToolCallFunction(BaseModel):
    """The function and arguments of an earlier call."""

    model_config = _STRICT

    name: str
    arguments: str = Field(description="The arguments as JSON text.")


class ToolCall(BaseModel):
    """A call the assistant made earlier in the conversation."""

    model_config = _STRICT

    id: str
    type: Literal["function"]
    function: ToolCallFunction


class ChatMessage(BaseModel):
    """One message of a conversation."""

    model_config = _STRICT

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(
        default=None, description="Calls an assistant message made."
    )
    tool_call_id: str | None = Field(default=None, description="The call a tool message answers.")
    reasoning_content: str | None = Field(
        default=None,
        description="An assistant message's reasoning, as this server returned it; given to "
        "the chat template (which may leave it out of earlier turns).",
    )
    reasoning: str | None = Field(
        default=None, description="The same as reasoning_content (vLLM's newer name)."
    )

    @model_validator(mode="before")
    @classmethod
    def _newer_name(cls, data: Any) -> Any:
        """``reasoning`` alone stands for ``reasoning_content``."""
        if (
            isinstance(data, dict)
            and data.get("reasoning_content") is None
            and data.get("reasoning") is not None
        ):
            data = {**data, "reasoning_content": data["reasoning"]}
        return data

    @model_validator(mode="after")
    def _check(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("tool_calls: only assistant messages make calls")
        if self.reasoning is not None and self.reasoning_content != self.reasoning:
            raise ValueError("reasoning: differs from reasoning_content; give one of them")
        if self.reasoning_content is not None and self.role != "assistant":
            raise ValueError("reasoning_content: only assistant messages reason")
        return self

    @property
    def text(self) -> str:
        """The content as plain text."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


def _check_tool_choice(names: Sequence[str], choice: object, named: str | None) -> None:
    """Tool names are unique, and ``tool_choice`` (``named``: the function it names, if it
    names one) fits them."""
    if len(set(names)) != len(names):
        raise ValueError("tools: two tools have the same name")
    if choice not in (None, "none") and not names:
        raise ValueError("tool_choice: needs tools")
    if named is not None and named not in names:
        raise ValueError(f"tool_choice: {named!r} is not one of the tools")


class ToolFields(BaseModel):
    """The tools a chat may call, as chat completions and ``/tokenize`` take them."""

    model_config = _STRICT

    tools: list[Tool] | None = Field(
        default=None, max_length=MAX_TOOLS, description="Functions the model may call."
    )
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        default=None,
        description='"auto" (the default with tools): call or answer in text; "required": '
        'call at least one; "none": answer in text; or one named function to call.',
    )
    parallel_tool_calls: bool = Field(default=True, description="Allow several calls at once.")

    @model_validator(mode="after")
    def _check_tools(self) -> ToolFields:
        choice = self.tool_choice
        named = choice.function.name if isinstance(choice, NamedToolChoice) else None
        _check_tool_choice([t.function.name for t in self.tools or ()], choice, named)
        return self

    @cached_property
    def tool_plan(self) -> ToolPlan | None:
        """How the model may call the tools; None when it may not."""
        choice = self.tool_choice
        name = choice.function.name if isinstance(choice, NamedToolChoice) else choice
        return plan_tools(self.tools or (), name, parallel=self.parallel_tool_calls)


#: Variables the daemon gives every chat template itself: a request may not replace them.
RESERVED_TEMPLATE_NAMES = TEMPLATE_RESERVED
_RESERVED_ENUM: list[JsonValue] = [*sorted(RESERVED_TEMPLATE_NAMES)]


class TemplateFields(BaseModel):
    """Extra variables for the chat template (vLLM's ``chat_template_kwargs``)."""

    model_config = _STRICT

    chat_template_kwargs: dict[str, Any] | None = Field(
        default=None,
        description="Variables for the chat template, such as enable_thinking: false for "
        "models whose template reads it (Qwen3, SmolLM3). Names the daemon sets itself "
        f"({', '.join(sorted(RESERVED_TEMPLATE_NAMES))}) are refused.",
        json_schema_extra={"propertyNames": {"not": {"enum": _RESERVED_ENUM}}},
    )

    @field_validator("chat_template_kwargs")
    @classmethod
    def _check_template_kwargs(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        clash = sorted(RESERVED_TEMPLATE_NAMES.intersection(value or ()))
        if clash:
            raise ValueError(
                f"{', '.join(clash)}: set by the server for every template; not a variable "
                "a request may replace"
            )
        return value


def _check_continuation(messages: Sequence[ChatMessage] | None, continue_final: bool) -> None:
    """``continue_final_message`` needs an assistant message, with text, to continue."""
    if not continue_final:
        return
    last = messages[-1] if messages else None
    if last is None or last.role != "assistant" or not last.text:
        raise ValueError(
            "continue_final_message: the last message must be an assistant message with text"
        )


class ChatCompletionRequest(SamplingFields, ToolFields, TemplateFields):
    """Body of ``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    continue_final_message: bool = Field(
        default=False,
        description="Continue the last message (an assistant's, with text) instead of "
        "starting a new one: the answer is what follows its text.",
    )
    max_completion_tokens: int | None = Field(
        default=None, ge=1, description="Most new tokens per choice (newer name of max_tokens)."
    )
    logprobs: bool = Field(default=False, description="Return log-probabilities of tokens.")
    top_logprobs: int | None = Field(default=None, ge=0, le=20, description="Alternatives.")
    reasoning_effort: str | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="OpenAI's reasoning effort (low, medium, high...): given to the chat "
        "template as the variable reasoning_effort, which templates that know it read.",
    )

    _integral_chat = field_validator("max_completion_tokens", "top_logprobs", mode="before")(
        _integral
    )

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs to be true")
        _check_continuation(self.messages, self.continue_final_message)
        if self.tool_plan is not None:
            if self.response_format is not None and self.response_format.type != "text":
                raise ValueError("response_format: cannot be combined with tool calls")
            if self.ignore_eos:
                raise ValueError("ignore_eos: cannot be combined with tool calls")
            if self.guided_choice is not None:
                raise ValueError("guided_choice: cannot be combined with tool calls")
            if self.guided_regex is not None or self.grammar is not None:
                raise ValueError("guided_regex / grammar: cannot be combined with tool calls")
        return self

    @property
    def output_format(self) -> tuple[Literal["text", "json_object", "json_schema"], str | None]:
        """The engine's response format and JSON Schema: the tool calls' when calls are
        possible."""
        plan = self.tool_plan
        return super().output_format if plan is None else ("json_schema", plan.schema_json)

    @property
    def optional_output(self) -> bool:
        """Under ``tool_choice="auto"``, the model may answer in text instead of calling."""
        plan = self.tool_plan
        return plan is not None and plan.optional

    @property
    def token_limit(self) -> int | None:
        """The requested limit of new tokens, whichever name carried it."""
        return self.max_completion_tokens or self.max_tokens

    def template_variables(self) -> dict[str, Any]:
        """The extra variables of the chat template."""
        return template_variables(self.chat_template_kwargs, self.reasoning_effort)


def template_variables(kwargs: dict[str, Any] | None, effort: str | None) -> dict[str, Any]:
    """A request's template variables: ``reasoning_effort`` under ``kwargs`` (a variable
    ``kwargs`` sets is never replaced)."""
    variables: dict[str, Any] = {} if effort is None else {"reasoning_effort": effort}
    variables.update(kwargs or {})
    return variables


def _as_batch(value: str | Sequence[object]) -> list[str | list[int]]:
    """One of OpenAI's four prompt forms (a string, strings, token ids, lists of token ids) as
    a batch: each item a string or a list of token ids."""
    if isinstance(value, str):
        return [value]
    if all(isinstance(x, int) for x in value):
        return [[int(x) for x in value if isinstance(x, int)]]
    return [x for x in value if isinstance(x, str | list)]


def _prompt_forms(max_batch: int, noun: str) -> Callable[[object], object]:
    """A ``before`` validator checking that a prompt (or an embedding input) has one of
    OpenAI's four forms, naming the offending item: pydantic's own message, from a union of the
    four forms, would report every form's failure under internal names."""

    def check(value: object) -> object:
        value = _integral(value)
        if isinstance(value, str):
            if not value:
                raise ValueError("must not be an empty string")
            return value
        if not isinstance(value, list):
            raise ValueError(
                "must be a string, a list of strings, a list of token ids or a list of lists "
                "of token ids"
            )
        if not value:
            raise ValueError("must not be an empty list")
        if all(isinstance(v, str) for v in value) or all(isinstance(v, list) for v in value):
            if len(value) > max_batch:
                raise ValueError(f"at most {max_batch} {noun}, got {len(value)}")
            for i, item in enumerate(value):
                if item in ("", []):
                    raise ValueError(f"item {i} is empty")
                if isinstance(item, list) and not all(_is_token_id(t) for t in item):
                    raise ValueError(f"item {i}: token ids are integers >= 0")
            return value
        if any(isinstance(v, str | list) for v in value):
            raise ValueError("mixes strings, token ids and lists; use one form for every item")
        if not all(_is_token_id(t) for t in value):
            raise ValueError("token ids are integers >= 0")
        return value

    return check


class CompletionRequest(SamplingFields):
    """Body of ``POST /v1/completions``."""

    prompt: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=64)]
        | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
        | Annotated[
            list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]],
            Field(min_length=1, max_length=64),
        ]
    ) = Field(description="A prompt, token ids, or a batch of either.")
    logprobs: int | None = Field(default=None, ge=0, le=5, description="Top alternatives.")
    echo: bool = Field(default=False, description="Prepend the prompt to the completion.")
    suffix: str | None = Field(
        default=None,
        description="Not supported; must be null or empty.",
        json_schema_extra={"anyOf": [{"type": "string", "maxLength": 0}, {"type": "null"}]},
    )
    best_of: int | None = Field(default=None, ge=1, le=16, description="Must equal n if set.")

    _check_prompt = field_validator("prompt", mode="before")(_prompt_forms(64, "prompts"))
    _integral_completion = field_validator("logprobs", "best_of", mode="before")(_integral)

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        if self.suffix:
            raise ValueError("suffix: is not supported by this server")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of: only best_of equal to n is supported")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """The batch of prompts: each a string or a list of token ids."""
        return _as_batch(self.prompt)


class TokenizeRequest(ToolFields, TemplateFields):
    """Body of ``POST /tokenize``: a prompt, or messages to render with the chat template (with
    the tools described as a chat request with these tools would describe them)."""

    model_config = _STRICT

    model: str = Field(min_length=1, description="Name of a model listed by GET /v1/models.")
    prompt: str | None = Field(default=None, description="Text to tokenize.")
    messages: list[ChatMessage] | None = Field(
        default=None, min_length=1, description="A conversation, rendered as for chat."
    )
    add_generation_prompt: bool = Field(
        default=True, description="With messages: end with the assistant's turn, as chat does."
    )
    continue_final_message: bool = Field(
        default=False, description="With messages: end inside the last one, as chat does."
    )
    add_special_tokens: bool | None = Field(
        default=None,
        description="Add the tokenizer's special tokens (BOS); by default as the completion "
        "and chat routes do: yes for a prompt, no for messages (the template writes them).",
    )
    return_token_strs: bool = Field(default=False, description="Also return each token's text.")

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        if self.tools and self.messages is None:
            raise ValueError("tools: only with messages")
        _check_continuation(self.messages, self.continue_final_message)
        return self


class DetokenizeRequest(BaseModel):
    """Body of ``POST /detokenize``."""

    model_config = _STRICT

    model: str = Field(min_length=1, description="Name of a model listed by GET /v1/models.")
    tokens: list[Annotated[int, Field(ge=0)]] = Field(
        max_length=1 << 20, description="Token ids to turn into text."
    )
    skip_special_tokens: bool = Field(default=False, description="Leave special tokens out.")

    _integral_tokens = field_validator("tokens", mode="before")(_integral)


_TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


def _is_token_id(value: object) -> bool:
    return type(value) is int and value >= 0  # bool is an int subclass, not a token id


class EmbeddingsRequest(BaseModel):
    """Body of ``POST /v1/embeddings``."""

    model_config = _STRICT

    model: str = Field(min_length=1, description="Name of a model listed by GET /v1/models.")
    input: (
        Annotated[str, Field(min_length=1)]
        | Annotated[
            list[Annotated[str, Field(min_length=1)]],
            Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS),
        ]
        | _TokenIds
        | Annotated[list[_TokenIds], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
    ) = Field(
        description="Text or token ids to embed, or a batch of either (at most "
        f"{MAX_EMBEDDING_INPUTS}); each input must fit the model's context."
    )
    encoding_format: Literal["float", "base64"] = Field(
        default="float",
        description="float: a list of numbers; base64: the little-endian float32 bytes.",
    )
    dimensions: int | None = Field(
        default=None,
        ge=1,
        description="Keep the first dimensions values, scaled back to unit length (at most the "
        "model's hidden size).",
    )
    user: str | None = Field(default=None, description="Accepted and ignored.")
    pooling: Literal["mean", "last"] = Field(
        default="mean",
        description="How the final hidden states of the tokens become one vector: their mean, "
        "or the last token's. An Inferno extension.",
    )

    _check_input = field_validator("input", mode="before")(
        _prompt_forms(MAX_EMBEDDING_INPUTS, "inputs")
    )
    _integral_dimensions = field_validator("dimensions", mode="before")(_integral)

    @property
    def is_batch(self) -> bool:
        """``input`` is a list of inputs (a list of strings or of token-id lists)."""
        return isinstance(self.input, list) and not isinstance(self.input[0], int)

    @property
    def inputs(self) -> list[str | list[int]]:
        """The batch of inputs: each a string or a list of token ids."""
        return _as_batch(self.input)


class ResponseInputText(BaseModel):
    """One text part of a Responses API input message."""

    model_config = _STRICT

    type: Literal["input_text", "output_text", "text"] = Field(
        description="input_text (user, system, developer) or output_text (assistant)."
    )
    text: str


class ResponseInputMessage(BaseModel):
    """One message of a Responses API ``input`` list."""

    model_config = _STRICT

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ResponseInputText]

    @property
    def text(self) -> str:
        """The content as plain text."""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ResponseFunctionCall(BaseModel):
    """An earlier function call of the model, as a Responses API ``input`` item."""

    model_config = _STRICT

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str = Field(description="The arguments as JSON text.")


class ResponseFunctionCallOutput(BaseModel):
    """The result of a function call, as a Responses API ``input`` item."""

    model_config = _STRICT

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str


class ResponseReasoningText(BaseModel):
    """One text part of a reasoning item."""

    model_config = _STRICT

    type: Literal["reasoning_text", "summary_text"] = "reasoning_text"
    text: str


class ResponseReasoningInput(BaseModel):
    """The model's earlier reasoning, as a Responses API ``input`` item (what a client sends
    back from a response's ``output``): given to the next assistant turn's template."""

    model_config = _STRICT

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[ResponseReasoningText] = Field(default_factory=list)
    content: list[ResponseReasoningText] | None = None
    encrypted_content: str | None = Field(default=None, description="Accepted and ignored.")

    @property
    def text(self) -> str:
        """The reasoning text (its summary where it has no text)."""
        parts = self.content if self.content else self.summary
        return "".join(part.text for part in parts)


def _input_item_kind(value: Any) -> str:
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", "")
    return kind if isinstance(kind, str) else ""


ResponseInputItem = Annotated[
    Annotated[ResponseInputMessage, Tag("message")]
    | Annotated[ResponseFunctionCall, Tag("function_call")]
    | Annotated[ResponseFunctionCallOutput, Tag("function_call_output")]
    | Annotated[ResponseReasoningInput, Tag("reasoning")],
    Discriminator(_input_item_kind),
]


class ResponseReasoningConfig(BaseModel):
    """``reasoning`` of a Responses API request."""

    model_config = _STRICT

    effort: str | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="Given to the chat template as the variable reasoning_effort.",
    )
    summary: str | None = Field(default=None, description="Accepted; no summary is written.")


class ResponseFunctionTool(BaseModel):
    """A function the model may call, in the Responses API's flat form."""

    model_config = _STRICT

    type: Literal["function"]
    name: str = Field(pattern=_FUNCTION_NAME, description="Letters, digits, _ and -; at most 64.")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def as_chat_tool(self) -> Tool:
        """The same function as chat completions describe it."""
        definition = FunctionDefinition(
            name=self.name,
            description=self.description,
            parameters=self.parameters,
            strict=self.strict,
        )
        return Tool(type="function", function=definition)


class ResponseNamedTool(BaseModel):
    """``tool_choice`` naming one function."""

    model_config = _STRICT

    type: Literal["function"]
    name: str = Field(min_length=1)


class ResponseTextFormat(BaseModel):
    """``text.format`` of a Responses API request: the shape of the output."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(
        default=None,
        alias="schema",
        description="The JSON Schema of json_schema; a part JSON mode cannot enforce is refused.",
    )
    strict: bool | None = Field(default=None, description="Accepted; the schema is always kept.")

    @model_validator(mode="after")
    def _check(self) -> ResponseTextFormat:
        if self.type == "json_schema" and self.schema_ is None:
            raise ValueError("text.format: json_schema needs its schema")
        return self


class ResponseTextConfig(BaseModel):
    """``text`` of a Responses API request."""

    model_config = _STRICT

    format: ResponseTextFormat | None = None


class ResponsesRequest(SamplingFields, TemplateFields):
    """``POST /v1/responses``: one answer to an input (text or function calls), stateless."""

    input: str | Annotated[list[ResponseInputItem], Field(min_length=1)] = Field(
        description="The user's text, or the conversation as items: messages, the model's "
        "function calls and their outputs."
    )
    instructions: str | None = Field(
        default=None, description="A system message put before the input."
    )
    max_output_tokens: int | None = Field(default=None, ge=1, description="Most new tokens.")
    text: ResponseTextConfig | None = None
    store: bool | None = Field(
        default=None,
        description="Keep the response for previous_response_id and GET /v1/responses/{id} "
        "(the default); false: do not.",
    )
    previous_response_id: str | None = Field(
        default=None,
        min_length=1,
        description="Continue from this kept response: its conversation (not its "
        "instructions) comes before this input.",
    )
    tools: list[ResponseFunctionTool] | None = Field(
        default=None, max_length=MAX_TOOLS, description="Functions the model may call."
    )
    tool_choice: Literal["none", "auto", "required"] | ResponseNamedTool | None = Field(
        default=None,
        description='"auto" (the default with tools), "required", "none", or one function.',
    )
    parallel_tool_calls: bool = Field(default=True, description="Allow several calls at once.")
    metadata: dict[str, str] | None = Field(default=None, description="Echoed back.")
    include: list[str] | None = Field(
        default=None,
        description='Extra output: "message.output_text.logprobs" adds log-probabilities of '
        "the output tokens; other values are accepted and ignored.",
    )
    top_logprobs: int | None = Field(
        default=None, ge=0, le=20, description="Alternatives listed with each token's logprob."
    )
    reasoning: ResponseReasoningConfig | None = None

    _integral_max_output = field_validator("max_output_tokens", "top_logprobs", mode="before")(
        _integral
    )

    @field_validator("input", mode="before")
    @classmethod
    def _input_form(cls, value: object) -> object:
        # One message for the two forms, rather than pydantic's for each arm of the union.
        if isinstance(value, list) and not value:
            raise ValueError("give at least 1 message")
        if not isinstance(value, str | list):
            raise ValueError("must be a string or a list of messages")
        return value

    @model_validator(mode="after")
    def _check_responses(self) -> ResponsesRequest:
        choice = self.tool_choice
        named = choice.name if isinstance(choice, ResponseNamedTool) else None
        _check_tool_choice([t.name for t in self.tools or ()], choice, named)
        if self.n != 1:
            raise ValueError("n: /v1/responses gives one answer")
        fmt = self.text.format if self.text is not None else None
        if fmt is not None and self.response_format is not None:
            raise ValueError("text: give the output format in text.format or response_format")
        if fmt is not None and fmt.type != "text" and self.ignore_eos:
            raise ValueError("text.format: JSON output cannot be combined with ignore_eos")
        if self.tool_plan is not None:
            json_output = fmt is not None and fmt.type != "text"
            if json_output or self.response_format is not None:
                raise ValueError("text.format: cannot be combined with tool calls")
            if self.ignore_eos:
                raise ValueError("ignore_eos: cannot be combined with tool calls")
        return self

    @cached_property
    def tool_plan(self) -> ToolPlan | None:
        """How the model may call the tools; None when it may not."""
        choice = self.tool_choice
        name = choice.name if isinstance(choice, ResponseNamedTool) else choice
        tools = [t.as_chat_tool() for t in self.tools or ()]
        return plan_tools(tools, name, parallel=self.parallel_tool_calls)

    @property
    def optional_output(self) -> bool:
        """Under ``tool_choice="auto"``, the model may answer in text instead of calling."""
        plan = self.tool_plan
        return plan is not None and plan.optional

    @property
    def output_format(self) -> tuple[Literal["text", "json_object", "json_schema"], str | None]:
        """The engine's response format and JSON Schema, from ``text.format``."""
        plan = self.tool_plan
        if plan is not None:
            return "json_schema", plan.schema_json
        fmt = self.text.format if self.text is not None else None
        if fmt is None:
            return super().output_format
        if fmt.type == "json_schema" and fmt.schema_ is not None:
            return "json_schema", json.dumps(fmt.schema_)
        return fmt.type, None

    @property
    def token_limit(self) -> int | None:
        """The requested limit of new tokens, whichever name carried it."""
        return self.max_output_tokens or self.max_tokens

    @property
    def wants_logprobs(self) -> bool:
        """The output text carries its tokens' log-probabilities."""
        return "message.output_text.logprobs" in (self.include or ())

    def template_variables(self) -> dict[str, Any]:
        """The extra variables of the chat template (as `ChatCompletionRequest`'s: the
        reasoning effort, and ``chat_template_kwargs``, which win)."""
        effort = self.reasoning.effort if self.reasoning is not None else None
        return template_variables(self.chat_template_kwargs, effort)

    def prompt_messages(self, turn: Sequence[ChatMessage]) -> list[ChatMessage]:
        """``turn`` (the conversation so far, then this input) after the instructions, which
        open it as a system message."""
        if self.instructions is None:
            return list(turn)
        return [ChatMessage(role="system", content=self.instructions), *turn]

    def input_messages(self) -> list[ChatMessage]:
        """The input as chat messages. Consecutive function calls become one assistant
        message's calls; their outputs, tool messages; a reasoning item, the
        ``reasoning_content`` of the assistant message that follows it."""
        out: list[ChatMessage] = []
        items = (
            [ResponseInputMessage(role="user", content=self.input)]
            if isinstance(self.input, str)
            else self.input
        )
        calls: list[ToolCall] = []
        reasoning: str | None = None
        for item in items:
            if isinstance(item, ResponseReasoningInput):
                reasoning = (reasoning or "") + item.text
                continue
            if isinstance(item, ResponseFunctionCall):
                function = ToolCallFunction(name=item.name, arguments=item.arguments)
                calls.append(ToolCall(id=item.call_id, type="function", function=function))
                continue
            if calls:
                out.append(
                    ChatMessage(role="assistant", tool_calls=calls, reasoning_content=reasoning)
                )
                calls, reasoning = [], None
            if isinstance(item, ResponseFunctionCallOutput):
                out.append(ChatMessage(role="tool", content=item.output, tool_call_id=item.call_id))
            elif item.role == "assistant":
                out.append(
                    ChatMessage(role="assistant", content=item.text, reasoning_content=reasoning)
                )
                reasoning = None
            else:
                out.append(ChatMessage(role=item.role, content=item.text))
                reasoning = None  # reasoning belongs to the assistant turn right after it
        if calls:
            out.append(ChatMessage(role="assistant", tool_calls=calls, reasoning_content=reasoning))
        return out
