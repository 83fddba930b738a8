from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from inferno_models import (
    IncrementalDetokenizer,
    ModelFormatError,
    Tokenizer,
    UnsupportedModelError,
)
from inferno_models.testing import tiny_gguf_metadata, tiny_tokenizer

TOKENIZER = tiny_tokenizer()


def test_round_trip_and_specials() -> None:
    text = "<|im_start|>user\nthe théâtre 🎉<|im_end|>"
    ids = TOKENIZER.encode(text)
    assert ids[0] == 1  # the control token stays whole
    assert ids[-1] == 2
    assert TOKENIZER.decode(ids) == text
    assert TOKENIZER.decode(ids, skip_special_tokens=True) == "user\nthe théâtre 🎉"
    assert TOKENIZER.special_token_ids == {0, 1, 2}
    assert TOKENIZER.encode("the") == [260]


def test_bos_policy() -> None:
    meta = dict(tiny_gguf_metadata(), **{"tokenizer.ggml.add_bos_token": True})
    tok = Tokenizer.from_gguf_metadata(meta, source="m")
    assert tok.encode("a")[0] == 1
    assert tok.encode("a", add_special_tokens=False)[0] != 1


def test_bad_metadata() -> None:
    with pytest.raises(ModelFormatError, match="no tokenizer vocabulary"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "gpt2"}, source="x.gguf")
    meta = dict(tiny_gguf_metadata(), **{"tokenizer.ggml.model": "rwkv"})
    with pytest.raises(UnsupportedModelError, match=r"x\.gguf: unsupported tokenizer model 'rwkv'"):
        Tokenizer.from_gguf_metadata(meta, source="x.gguf")
    meta = dict(tiny_gguf_metadata(), **{"tokenizer.ggml.merges": ["zz qq"]})
    with pytest.raises(ModelFormatError, match="cannot build tokenizer"):
        Tokenizer.from_gguf_metadata(meta, source="x.gguf")


def test_sentencepiece_vocabulary_without_merges() -> None:
    tokens = [
        "<unk>",
        "<s>",
        "</s>",
        "▁",
        "h",
        "i",
        "▁h",
        "▁hi",
        *[f"<0x{b:02X}>" for b in range(256)],
    ]
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": [0.0] * 6 + [-1.0, -0.5] + [0.0] * 256,
        "tokenizer.ggml.token_type": [2, 3, 3] + [1] * 5 + [6] * 256,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }
    tok = Tokenizer.from_gguf_metadata(meta, source="sp.gguf")
    assert tok.encode("hi") == [1, 7]  # BOS by default, "▁hi" merged
    assert tok.decode(tok.encode("hi hé")) == "<s> hi hé"
    assert tok.decode(tok.encode("hi hé"), skip_special_tokens=True) == "hi hé"
    raw = tok.token_bytes()
    assert raw[1:8] == [b"", b"", b" ", b"h", b"i", b" h", b" hi"]  # <s> and </s> are special
    assert raw[8 + 0xC3] == b"\xc3"  # byte-fallback pieces are single bytes


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_token_bytes_concatenate_to_the_decoded_text(text: str) -> None:
    raw = TOKENIZER.token_bytes()
    ids = TOKENIZER.encode(text, add_special_tokens=False)
    assert b"".join(raw[i] for i in ids) == TOKENIZER.decode(ids).encode()
    assert len(raw) == TOKENIZER.vocab_size
    assert all(raw[i] == b"" for i in TOKENIZER.special_token_ids)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_incremental_detokenizer_equals_full_decode(text: str) -> None:
    ids = TOKENIZER.encode(text)
    detok = IncrementalDetokenizer(TOKENIZER, skip_special_tokens=False)
    pieces = [detok.push(i) for i in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == TOKENIZER.decode(ids)
    assert all("\ufffd" not in p for p in pieces[:-1]) or "\ufffd" in text


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=3, max_value=268), max_size=30))
def test_incremental_detokenizer_on_arbitrary_ids(ids: list[int]) -> None:
    """Random byte tokens may form invalid UTF-8: still no broken characters mid-stream, and the
    concatenation equals the full decode."""
    detok = IncrementalDetokenizer(TOKENIZER)
    pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == TOKENIZER.decode(ids, skip_special_tokens=True)


def test_multibyte_character_is_held_back() -> None:
    ids = TOKENIZER.encode("🎉")
    assert len(ids) == 4  # one byte token each
    detok = IncrementalDetokenizer(TOKENIZER)
    assert [detok.push(i) for i in ids] == ["", "", "", "🎉"]


def test_gpt4o_pre_tokenizer_splits_as_o200k() -> None:
    # Phi-4's GGUF files name GPT-4o's pre-tokenizer: capitals open a word, contractions
    # close it, a slash stays with the punctuation before it.
    metadata = {**tiny_gguf_metadata(), "tokenizer.ggml.pre": "gpt-4o"}
    tokenizer = Tokenizer.from_gguf_metadata(metadata, source="<phi4>")
    assert tokenizer.backend.pre_tokenizer is not None
    pieces = tokenizer.backend.pre_tokenizer.pre_tokenize_str("HelloWorld's 2024 DON'T a.//b")
    assert [p for p, _ in pieces] == [
        "Hello",
        "World's",
        "Ġ",
        "202",
        "4",
        "ĠDON'T",
        "Ġa",
        ".//",
        "b",
    ]
    text = "HelloWorld's 2024 DON'T\n\n ok"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
