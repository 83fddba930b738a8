"""Tool calls (function calling) for any chat model, kept valid by the engine's JSON mode.

The tools are described to the model in a system message, in one format for every model, and
the answer is constrained by a JSON Schema built from the tools' parameters:

- ``tool_choice="required"``: the answer is a JSON array of calls,
  ``[{"name": "get_weather", "arguments": {"city": "Paris"}}]``, each call's arguments following
  its tool's ``parameters``; one call only when ``parallel_tool_calls`` is false.
- ``"auto"`` (the default when tools are given): that array, or plain text. The model decides
  with its first non-blank character: ``[`` starts the calls, anything else is a text answer.
- a named function: the answer is the arguments object of a call to that function.
- ``"none"``: the tools are not described and nothing is constrained.

A tool with ``"strict": true`` has its schema enforced as given, or the request is refused
with a 400 naming the part JSON mode cannot enforce. For other tools, which OpenAI does not
hold to their schema either, checks on values that JSON mode cannot make, or makes only in
part (``pattern``, ``format``, ``multipleOf``, ...), are dropped first: the arguments then keep
the schema's shape, types, lengths and ranges but may break those checks.

Earlier calls in the conversation (assistant messages with ``tool_calls``) are written back in
the same array format, so the model sees its own calls as it made them.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inferno_backend.api.schemas import ChatMessage, Tool

__all__ = ["ToolCallStream", "ToolPlan", "conversation", "plan_tools"]

#: Keywords that only check values (rather than shape them) and that JSON mode cannot
#: enforce, or enforces only in part (some patterns, some formats), dropped from non-strict
#: tools so that their schemas are always served.
_VALUE_CHECKS = frozenset(
    (
        "pattern",
        "format",
        "multipleOf",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "contentEncoding",
        "contentMediaType",
    )
)
_EXCLUSIVE = frozenset(("exclusiveMinimum", "exclusiveMaximum"))
#: Keywords whose value is a schema, a list of schemas, or a map of names to schemas.
_SUBSCHEMA = ("items", "additionalProperties")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


def _relaxed(schema: Any) -> Any:
    """``schema`` without `_VALUE_CHECKS`, at every level where a schema can stand."""
    if not isinstance(schema, dict):
        return schema
    out = {
        k: v
        for k, v in schema.items()
        # draft 4 wrote exclusive bounds as flags beside minimum/maximum
        if k not in _VALUE_CHECKS and not (k in _EXCLUSIVE and isinstance(v, bool))
    }
    for key in _SUBSCHEMA:
        if key in out:
            out[key] = _relaxed(out[key])
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_relaxed(s) for s in out[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _relaxed(s) for name, s in out[key].items()}
    return out


def _rebased(schema: Any, base: str) -> Any:
    """``schema`` with its local references (``#/...``) made relative to ``base``, a JSON
    pointer to where the schema is placed inside a larger one."""
    if isinstance(schema, list):
        return [_rebased(s, base) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _rebased(v, base) for k, v in schema.items()}
    ref = schema.get("$ref")
    if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
        out["$ref"] = base + ref[1:]
    return out


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """How one request may call its tools: the prompt text, the schema and how to read the
    answer. Build it with `plan_tools`."""

    tools: tuple[Tool, ...]
    #: The function every answer calls (a named ``tool_choice``), or None for an array of calls.
    named: str | None
    #: The model may answer in text instead ("auto").
    optional: bool
    parallel: bool
    schema: dict[str, Any] = field(repr=False)

    @property
    def schema_json(self) -> str:
        """The schema of the answer, as the engine takes it."""
        return json.dumps(self.schema)

    def instructions(self) -> str:
        """The system-message text that describes the tools and how to call them."""
        lines = ["You can call these functions (name, purpose, JSON Schema of the arguments):"]
        for tool in self.tools:
            fn = tool.function
            entry: dict[str, Any] = {"name": fn.name}
            if fn.description:
                entry["description"] = fn.description
            entry["parameters"] = fn.parameters if fn.parameters is not None else _NO_PARAMETERS
            lines.append(json.dumps(entry, ensure_ascii=False))
        calls = 'a JSON array of calls, [{"name": "<function name>", "arguments": {...}}]'
        if self.named is not None:
            lines.append(f"Call {self.named}: answer with only the JSON object of its arguments.")
        elif self.optional:
            lines.append(
                f"To call functions, answer with only {calls}. To answer without calling "
                "one, write plain text."
            )
        else:
            lines.append(f"Answer with only {calls}.")
        if self.named is None and not self.parallel:
            lines.append("Make at most one call.")
        return "\n".join(lines)

    def explain(self, message: str) -> str:
        """An engine error about the schema, with its paths named as the request's tools."""
        index = {t.function.name: i for i, t in enumerate(self.tools)}
        if self.named is not None:
            where = f"tools[{index[self.named]}].function.parameters"
            return re.sub(r"^schema\b", where, message).replace("#/", where + "#/", 1)
        message = re.sub(
            r"schema\.items\.anyOf\[(\d+)\]\.properties\.arguments",
            r"tools[\1].function.parameters",
            message,
        )
        return re.sub(
            r"#/items/anyOf/(\d+)/properties/arguments", r"tools[\1].function.parameters#", message
        )

    def calls(self, text: str) -> list[tuple[str, str]] | None:
        """The (name, arguments JSON) calls of a finished answer, or None for a text answer."""
        stripped = text.strip()
        if self.named is not None:
            try:
                arguments = json.loads(stripped)
            except ValueError:
                return None
            return [(self.named, stripped)] if isinstance(arguments, dict) else None
        if not stripped.startswith("["):
            return None
        try:
            calls = json.loads(stripped)
        except ValueError:
            return None
        if not isinstance(calls, list) or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) and "arguments" in c
            for c in calls
        ):
            return None
        return [(c["name"], json.dumps(c["arguments"], ensure_ascii=False)) for c in calls]


def plan_tools(
    tools: Sequence[Tool], choice: str | None, *, parallel: bool = True
) -> ToolPlan | None:
    """The plan for ``tools`` and ``tool_choice`` (``"auto"``, ``"required"``, ``"none"`` or a
    function name); None when no call can be made."""
    if not tools or choice == "none":
        return None
    arguments = {t.function.name: _arguments_schema(t) for t in tools}
    if choice not in (None, "auto", "required"):
        return ToolPlan(tuple(tools), choice, False, parallel, arguments[choice])
    alternatives = [
        {
            "type": "object",
            "properties": {
                "name": {"const": name},
                "arguments": _rebased(schema, f"#/items/anyOf/{i}/properties/arguments"),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for i, (name, schema) in enumerate(arguments.items())
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": alternatives}}
    if not parallel:
        schema["maxItems"] = 1
    return ToolPlan(tuple(tools), None, choice != "required", parallel, schema)


def _arguments_schema(tool: Tool) -> Any:
    fn = tool.function
    schema = fn.parameters if fn.parameters is not None else _NO_PARAMETERS
    return schema if fn.strict else _relaxed(schema)


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # shown to the model as it was sent


def conversation(messages: Sequence[ChatMessage], plan: ToolPlan | None) -> list[dict[str, Any]]:
    """The messages as the chat template takes them, with the tools described up front.

    Calls in assistant messages are written as the JSON array the model is told to write.
    """
    out: list[dict[str, Any]] = []
    for m in messages:
        message: dict[str, Any] = {
            "role": "system" if m.role == "developer" else m.role,
            "content": m.text,
        }
        if m.tool_calls:
            calls = [
                {"name": c.function.name, "arguments": _arguments(c.function.arguments)}
                for c in m.tool_calls
            ]
            text = json.dumps(calls, ensure_ascii=False)
            message["content"] = f"{m.text}\n{text}" if m.text else text
        if m.tool_call_id is not None:
            message["tool_call_id"] = m.tool_call_id
        if m.reasoning_content is not None:
            message["reasoning_content"] = m.reasoning_content  # Qwen3's template reads it
        out.append(message)
    if plan is not None:
        text = plan.instructions()
        if out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{text}" if out[0]["content"] else text
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def call_id() -> str:
    """A fresh tool call id, as OpenAI spells them."""
    return "call_" + secrets.token_hex(12)


def call_body(name: str, arguments: str, index: int | None = None) -> dict[str, Any]:
    """One entry of ``tool_calls`` (with ``index`` in stream deltas)."""
    body: dict[str, Any] = {} if index is None else {"index": index}
    body.update(id=call_id(), type="function", function={"name": name, "arguments": arguments})
    return body


class ToolCallStream:
    """One choice's text deltas turned into chat deltas: content, or tool calls.

    A named call streams its arguments as they come. An array of calls is held until the
    choice ends, and sent whole if it is complete (a cut one is sent as text); under "auto",
    text is held only until its first non-blank character shows that it is not a call.
    """

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self._held: list[str] = []
        self._text = False  # decided: a text answer, passed through
        self._calls = not plan.optional  # decided: calls, held to the end
        self._started = False  # a named call's first delta is sent
        #: Calls sent once the choice has finished with them.
        self.calls = 0

    def push(self, text: str, finish: str | None) -> tuple[dict[str, Any], str | None]:
        """The delta for ``text`` and the finish reason to report with it."""
        plan = self.plan
        if self._text:
            return ({"content": text} if text else {}), finish
        if plan.named is not None:
            delta: dict[str, Any] = {}
            if text and not self._started:
                self._started = True
                delta = {"tool_calls": [call_body(plan.named, text, 0)]}
            elif text:
                delta = {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}
            if finish == "stop" and self._started:
                self.calls = 1
                return delta, "tool_calls"
            return delta, finish
        self._held.append(text)
        if not self._calls:  # only blanks so far: the first other character decides
            head = text.lstrip()
            if head:
                self._calls = head.startswith("[")
                self._text = not self._calls
                if self._text:
                    return {"content": "".join(self._held)}, finish
        if finish is None:
            return {}, None
        held = "".join(self._held)
        calls = plan.calls(held) if finish == "stop" else None
        if calls is None:
            return ({"content": held} if held else {}), finish
        tool_calls = [call_body(name, args, i) for i, (name, args) in enumerate(calls)]
        self.calls = len(tool_calls)
        return {"tool_calls": tool_calls}, "tool_calls"
