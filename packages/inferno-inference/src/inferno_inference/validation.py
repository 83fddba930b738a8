"""Checks a request must pass before an engine accepts it (shared by the real and fake engines)."""

from __future__ import annotations

from inferno_inference.errors import InvalidRequestError, PromptTooLongError
from inferno_inference.types import EmbeddingRequest, GenerationRequest

__all__ = ["validate_embedding", "validate_request"]


def _check_prompt(request_id: str, prompt: tuple[int, ...], vocab_size: int) -> None:
    if not request_id:
        raise InvalidRequestError("request_id must not be empty", param="request_id")
    if not prompt:
        raise InvalidRequestError("the prompt must contain at least one token", param="prompt")
    bad = next((t for t in prompt if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequestError(
            f"prompt token id {bad} is outside the vocabulary (0..{vocab_size - 1})",
            param="prompt",
        )


def validate_embedding(request: EmbeddingRequest, *, max_model_len: int, vocab_size: int) -> None:
    """Raise a typed error naming the problem if ``request`` cannot be embedded.

    Raises:
        InvalidRequestError: empty id or input, a token id outside the vocabulary, or an
            unknown pooling.
        PromptTooLongError: the input is longer than the context.
    """
    _check_prompt(request.request_id, request.prompt_token_ids, vocab_size)
    if request.pooling not in ("mean", "last"):
        raise InvalidRequestError(
            f"pooling must be 'mean' or 'last', not {request.pooling!r}", param="pooling"
        )
    n = len(request.prompt_token_ids)
    if n > max_model_len:
        raise PromptTooLongError(
            f"the input has {n} tokens but the context holds {max_model_len}; "
            f"shorten it to at most {max_model_len} tokens",
            param="input",
        )


def validate_request(request: GenerationRequest, *, max_model_len: int, vocab_size: int) -> None:
    """Raise a typed error naming the problem if ``request`` cannot be served.

    Raises:
        InvalidRequestError: empty id or prompt, a prompt, stop or logit-bias token id
            outside the vocabulary, or a JSON Schema that JSON mode cannot enforce.
        PromptTooLongError: the prompt leaves no room for a single new token in the context.
    """
    prompt = request.prompt_token_ids
    _check_prompt(request.request_id, prompt, vocab_size)
    if len(prompt) >= max_model_len:
        raise PromptTooLongError(
            f"the prompt has {len(prompt)} tokens but the context holds {max_model_len}; "
            f"shorten it to at most {max_model_len - 1} tokens",
            param="prompt",
        )
    bad = next((t for t in request.sampling.stop_token_ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequestError(
            f"stop token id {bad} is outside the vocabulary (0..{vocab_size - 1})",
            param="stop_token_ids",
        )
    if request.sampling.json_schema is not None:
        # Here, not at the top: the seam (and the fake engine) must import without torch.
        from inferno_inference.json_mode import SchemaError, compile_schema

        try:
            compile_schema(request.sampling.json_schema)
        except SchemaError as exc:
            raise InvalidRequestError(str(exc), param="response_format") from None
    if request.sampling.regex is not None:
        from inferno_inference.json_regex import RegexError, whole_match

        try:
            whole_match(request.sampling.regex)
        except RegexError as exc:
            raise InvalidRequestError(str(exc), param="regex") from None
    if request.sampling.grammar is not None:
        from inferno_inference.gbnf import GrammarError, compile_grammar

        try:
            compile_grammar(request.sampling.grammar)
        except GrammarError as exc:
            raise InvalidRequestError(str(exc), param="grammar") from None
    bad = next((t for t, _ in request.sampling.logit_bias if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequestError(
            f"logit_bias token id {bad} is outside the vocabulary (0..{vocab_size - 1})",
            param="logit_bias",
        )
