from __future__ import annotations

import pytest
from inferno_models import ChatTemplate, ChatTemplateError
from inferno_models.testing import TINY_CHAT_TEMPLATE


def test_render_with_and_without_generation_prompt() -> None:
    tpl = ChatTemplate(TINY_CHAT_TEMPLATE)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    with_prompt = tpl.render(msgs)
    assert with_prompt.endswith("<|im_start|>assistant\n")
    assert tpl.render(msgs, add_generation_prompt=False) + "<|im_start|>assistant\n" == with_prompt


def test_special_variables_and_helpers() -> None:
    tpl = ChatTemplate(
        "{{ bos_token }}{% for m in messages %}{{ m | tojson }}{% endfor %}{{ eos_token }}",
        bos_token="<s>",
        eos_token="</s>",
    )
    assert (
        tpl.render([{"role": "user", "content": "é"}]) == '<s>{"role": "user", "content": "é"}</s>'
    )


def test_raise_exception_becomes_typed_error() -> None:
    tpl = ChatTemplate(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="user first"):
        tpl.render([{"role": "assistant", "content": "x"}])


def test_sandbox_blocks_python_internals() -> None:
    tpl = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ChatTemplateError):
        tpl.render([{"role": "user", "content": "x"}])


def test_invalid_template() -> None:
    with pytest.raises(ChatTemplateError, match="invalid chat template"):
        ChatTemplate("{% for %}")


def test_extra_variables_reach_the_template_but_not_reserved_ones() -> None:
    tpl = ChatTemplate("{% if enable_thinking is false %}no{% else %}yes{% endif %}")
    msgs = [{"role": "user", "content": "x"}]
    assert tpl.render(msgs) == "yes"
    assert tpl.render(msgs, enable_thinking=False) == "no"
    for name in ("bos_token", "raise_exception"):
        with pytest.raises(ChatTemplateError, match=name):
            tpl.render(msgs, **{name: "x"})
