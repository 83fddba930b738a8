"""``POST /tokenize`` and ``POST /detokenize``: the served model's tokenizer over HTTP.

What a client needs to count tokens (a prompt's cost, what fits the context) or to read the
token ids that completions and logprobs speak in, with the same rendering and special-token
rules as the completion routes, so a count here is the count a request there uses.
"""

from __future__ import annotations

from aiohttp import web

from inferno_backend.api.errors import BadRequestError
from inferno_backend.api.openai_routes import (
    admitted,
    encode,
    parse_body,
    render_chat,
    template_defaults,
)
from inferno_backend.api.schemas import DetokenizeRequest, TokenizeRequest

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.post("/tokenize")
async def tokenize(request: web.Request) -> web.Response:
    """The token ids of a prompt, or of messages rendered by the chat template."""
    body = await parse_body(request, TokenizeRequest)
    async with admitted(request, body.model, generates=False) as served:
        if body.messages is not None:
            text = render_chat(
                served,
                body.messages,
                body.tool_plan,
                body.add_generation_prompt,
                continue_final=body.continue_final_message,
                # The count a chat request would use: the daemon's variables too.
                variables=template_defaults(request) | (body.chat_template_kwargs or {}),
            )
            special = bool(body.add_special_tokens)
        else:
            text = body.prompt or ""
            special = body.add_special_tokens is not False
        ids = await encode(served, text, special=special)
        out: dict[str, object] = {
            "count": len(ids),
            "max_model_len": served.max_model_len,
            "tokens": ids,
        }
        if body.return_token_strs:
            tokenizer = served.model.tokenizer
            out["token_strs"] = [tokenizer.id_to_token(i) for i in ids]
    return web.json_response(out)


@routes.post("/detokenize")
async def detokenize(request: web.Request) -> web.Response:
    """The text of token ids."""
    body = await parse_body(request, DetokenizeRequest)
    async with admitted(request, body.model, generates=False) as served:
        tokenizer = served.model.tokenizer
        bad = next((i for i in body.tokens if i >= tokenizer.vocab_size), None)
        if bad is not None:
            raise BadRequestError(
                f"token id {bad} is outside the vocabulary of {tokenizer.vocab_size}",
                param="tokens",
            )
        text = tokenizer.decode(body.tokens, skip_special_tokens=body.skip_special_tokens)
    return web.json_response({"prompt": text})
