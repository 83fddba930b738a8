"""Chat templates: sandboxed Jinja2 rendering of a model's ``chat_template``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from inferno_models.errors import ModelError

__all__ = ["RESERVED_NAMES", "ChatTemplate", "ChatTemplateError"]

#: Variables `ChatTemplate.render` sets itself (and the helper functions it gives every
#: template); an extra variable may not replace one.
RESERVED_NAMES = frozenset(
    (
        "messages",
        "add_generation_prompt",
        "bos_token",
        "eos_token",
        "raise_exception",
        "strftime_now",
    )
)


class ChatTemplateError(ModelError, ValueError):
    """The template is invalid, or rendering it failed (including ``raise_exception`` calls)."""


class _TemplateRaisedError(Exception):
    """Raised by a template through ``raise_exception``."""


def _raise_exception(message: str) -> None:
    raise _TemplateRaisedError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template.

    Rendering runs in Jinja2's immutable sandbox, so a template from an untrusted model file
    cannot reach Python internals or mutate its inputs.
    """

    def __init__(
        self, source: str, *, bos_token: str | None = None, eos_token: str | None = None
    ) -> None:
        self.source = source
        self.bos_token = bos_token or ""
        self.eos_token = eos_token or ""
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise ChatTemplateError(f"invalid chat template: {exc}") from None

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """Render ``messages`` (``{"role", "content"}`` mappings) to the prompt text; ``extra``
        are further variables the template may read (``enable_thinking``, ``tools``...).

        Raises:
            ChatTemplateError: the template failed or rejected the conversation, or ``extra``
                names one of `RESERVED_NAMES`.
        """
        clash = sorted(RESERVED_NAMES.intersection(extra))
        if clash:
            raise ChatTemplateError(
                f"{', '.join(clash)}: set by the renderer, not a variable to pass"
            )
        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except _TemplateRaisedError as exc:
            raise ChatTemplateError(str(exc)) from None
        except (TemplateError, TypeError, ValueError, KeyError, IndexError) as exc:
            raise ChatTemplateError(f"chat template failed: {exc}") from None
