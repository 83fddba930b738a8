"""Request bodies of the Ollama-compatible routes (``/api/chat``, ``/api/generate``,
``/api/embed``, ``/api/show``), validated like the OpenAI ones and translated into them.

Ollama puts the sampling settings in ``options`` under its own names (``num_predict``,
``repeat_penalty``); `OllamaOptions` checks them there, so an error names ``options.top_p``,
and `as_chat` hands the OpenAI chat request that the shared generation path runs. Options
this server has no use for (``num_ctx``, ``num_thread``, ``mirostat``...) are accepted and
ignored, like unknown fields everywhere.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inferno_backend.api.schemas import (
    MAX_EMBEDDING_INPUTS,
    MAX_TOOLS,
    ChatCompletionRequest,
    Tool,
    _integral,
)

__all__ = [
    "OllamaChatRequest",
    "OllamaEmbedRequest",
    "OllamaEmbeddingsRequest",
    "OllamaGenerateRequest",
    "OllamaMessage",
    "OllamaOptions",
    "OllamaShowRequest",
]

_STRICT = ConfigDict(strict=True, extra="ignore", frozen=True)


class OllamaOptions(BaseModel):
    """The ``options`` of a request: sampling settings under Ollama's names."""

    model_config = _STRICT

    num_predict: int | None = Field(
        default=None, ge=-2, description="Most new tokens; -1 or -2: up to the context."
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, gt=0, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    stop: list[str] | None = Field(default=None, max_length=4, description="Stop strings.")

    _integral_options = field_validator("num_predict", "top_k", "seed", mode="before")(_integral)

    @field_validator("num_predict")
    @classmethod
    def _check_num_predict(cls, value: int | None) -> int | None:
        if value == 0:
            raise ValueError("must be positive, or -1 (no limit) or -2 (fill the context)")
        return value

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not all(value):
            raise ValueError("stop strings must not be empty")
        return value

    def sampling(self) -> dict[str, Any]:
        """The OpenAI sampling fields these options set."""
        fields = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repetition_penalty": self.repeat_penalty,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "seed": self.seed,
            "stop": self.stop or None,
        }
        if self.num_predict is not None and self.num_predict > 0:
            fields["max_tokens"] = self.num_predict
        return {k: v for k, v in fields.items() if v is not None}


class OllamaFunctionCall(BaseModel):
    """A call an assistant message made: arguments are an object, not JSON text."""

    model_config = _STRICT

    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)


class OllamaToolCall(BaseModel):
    """One entry of a message's ``tool_calls``."""

    model_config = _STRICT

    function: OllamaFunctionCall


class OllamaMessage(BaseModel):
    """One message of a conversation, as Ollama writes it."""

    model_config = _STRICT

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = Field(default=None, description="Not supported: text only.")
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = Field(default=None, description="The tool a tool message answers.")
    thinking: str | None = Field(
        default=None, description="An assistant message's thinking, given to the template."
    )

    @model_validator(mode="after")
    def _check(self) -> OllamaMessage:
        if self.images:
            raise ValueError("images: the served models read text only")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("tool_calls: only assistant messages make calls")
        return self


class _OllamaCommon(BaseModel):
    """What chat and generate requests share."""

    model_config = _STRICT

    model: str = Field(min_length=1, description="Name of a served model (GET /api/tags).")
    format: Literal["", "json"] | dict[str, Any] | None = Field(
        default=None, description='"json" for any JSON value, or a JSON Schema to follow.'
    )
    options: OllamaOptions | None = None
    stream: bool = Field(default=True, description="Answer as JSON lines (the default).")
    keep_alive: float | int | str | None = Field(
        default=None, description="Accepted; a served model stays loaded."
    )
    think: bool | Literal["low", "medium", "high"] | None = Field(
        default=None,
        description="true (or a level): the model's thinking comes back in thinking, apart "
        "from the answer (400 for a model that does not think); false: the template is asked "
        "not to think (enable_thinking=false) and nothing is split. Left out: as true for a "
        "model that thinks.",
    )
    logprobs: bool = Field(default=False, description="Return log-probabilities of tokens.")
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    _integral_top = field_validator("top_logprobs", mode="before")(_integral)

    @model_validator(mode="after")
    def _check_common(self) -> _OllamaCommon:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: requires logprobs to be true")
        return self

    def _chat_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"model": self.model}
        if self.options is not None:
            fields.update(self.options.sampling())
        if self.format == "json":
            fields["response_format"] = {"type": "json_object"}
        elif isinstance(self.format, dict):
            fields["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "format", "schema": self.format},
            }
        if self.logprobs:
            fields["logprobs"] = True
            if self.top_logprobs is not None:
                fields["top_logprobs"] = self.top_logprobs
        if self.think is not None:
            # Ollama gives its templates the setting; Hugging Face templates read these names.
            variables: dict[str, Any] = {"enable_thinking": self.think is not False}
            if isinstance(self.think, str):
                variables["reasoning_effort"] = self.think
            fields["chat_template_kwargs"] = variables
        return fields

    @property
    def wants_thinking(self) -> bool:
        """``think`` asks for the thinking (true or a level)."""
        return self.think is not None and self.think is not False


class OllamaChatRequest(_OllamaCommon):
    """Body of ``POST /api/chat``. No messages: only load the model (``done_reason`` load)."""

    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)

    def as_chat(self) -> ChatCompletionRequest:
        """The same request as an OpenAI chat completion (raises `pydantic.ValidationError`
        for combinations the chat route refuses, such as tools with a format)."""
        messages = []
        for index, m in enumerate(self.messages):
            message: dict[str, Any] = {"role": m.role, "content": m.content}
            if m.tool_calls:
                message["tool_calls"] = [
                    {
                        "id": f"call_{index}_{k}",
                        "type": "function",
                        "function": {
                            "name": c.function.name,
                            "arguments": json.dumps(c.function.arguments, ensure_ascii=False),
                        },
                    }
                    for k, c in enumerate(m.tool_calls)
                ]
            if m.role == "tool" and m.tool_name:
                message["name"] = m.tool_name
            if m.role == "assistant" and m.thinking:
                message["reasoning_content"] = m.thinking
            messages.append(message)
        fields = self._chat_fields()
        fields["messages"] = messages
        last = self.messages[-1] if self.messages else None
        if last is not None and last.role == "assistant":
            if last.content and not last.tool_calls:
                # As Ollama does: a conversation that ends with the assistant's words has
                # the model go on with them.
                fields["continue_final_message"] = True
            elif not last.content and not last.tool_calls:
                fields["messages"] = messages[:-1] or messages  # an empty turn: a fresh one
        if self.tools:
            fields["tools"] = [t.model_dump(by_alias=True, exclude_none=True) for t in self.tools]
        return ChatCompletionRequest.model_validate(fields, strict=False)


class OllamaGenerateRequest(_OllamaCommon):
    """Body of ``POST /api/generate``. An empty prompt only loads the model."""

    prompt: str = ""
    system: str | None = Field(default=None, description="A system message before the prompt.")
    raw: bool = Field(default=False, description="The prompt as is, without the chat template.")
    context: list[int] | None = Field(
        default=None, description="The tokens a previous answer returned, to continue from."
    )
    suffix: str | None = Field(default=None, description="Not supported (fill-in-the-middle).")
    template: str | None = Field(default=None, description="Not supported: the model's own.")
    images: list[str] | None = Field(default=None, description="Not supported: text only.")

    @field_validator("context")
    @classmethod
    def _check_context(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(t < 0 for t in value):
            raise ValueError("token ids are integers >= 0")
        return value

    @model_validator(mode="after")
    def _check_generate(self) -> OllamaGenerateRequest:
        if self.suffix:
            raise ValueError("suffix: fill-in-the-middle is not supported")
        if self.template:
            raise ValueError("template: not supported; the model's chat template is used")
        if self.images:
            raise ValueError("images: the served models read text only")
        if self.raw and self.system is not None:
            raise ValueError("system: a raw prompt has no template to put it in")
        return self

    def as_chat(self) -> ChatCompletionRequest:
        """The sampling and format fields as an OpenAI chat request of the prompt."""
        fields = self._chat_fields()
        fields["messages"] = [
            *([{"role": "system", "content": self.system}] if self.system is not None else []),
            {"role": "user", "content": self.prompt},
        ]
        return ChatCompletionRequest.model_validate(fields, strict=False)


class OllamaEmbedRequest(BaseModel):
    """Body of ``POST /api/embed``."""

    model_config = _STRICT

    model: str = Field(min_length=1)
    input: str | list[str] = Field(description="A text or a batch of texts.")
    truncate: bool = Field(default=True, description="Cut inputs to the context (else 400).")
    dimensions: int | None = Field(default=None, ge=1, description="Keep this many values.")
    options: dict[str, Any] | None = Field(default=None, description="Accepted and ignored.")
    keep_alive: float | int | str | None = None

    _integral_dimensions = field_validator("dimensions", mode="before")(_integral)

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("give at least one text")
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} texts, got {len(texts)}")
        if not all(texts):
            raise ValueError("texts must not be empty")
        return value

    @property
    def texts(self) -> list[str]:
        """The inputs as a list."""
        return [self.input] if isinstance(self.input, str) else list(self.input)


class OllamaEmbeddingsRequest(BaseModel):
    """Body of ``POST /api/embeddings``, the older embeddings route: one ``prompt``."""

    model_config = _STRICT

    model: str = Field(min_length=1)
    prompt: str = Field(min_length=1, description="The text to embed.")
    options: dict[str, Any] | None = Field(default=None, description="Accepted and ignored.")
    keep_alive: float | int | str | None = None


class OllamaShowRequest(BaseModel):
    """Body of ``POST /api/show`` (``name`` is the older spelling of ``model``)."""

    model_config = _STRICT

    model: str | None = Field(default=None, min_length=1)
    name: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _check(self) -> OllamaShowRequest:
        if self.model is None and self.name is None:
            raise ValueError("model: required")
        return self

    @property
    def model_name(self) -> str:
        """The model asked about."""
        return self.model or self.name or ""
