"""Tokenizers on the ``tokenizers`` library, from ``tokenizer.json`` or GGUF metadata, and an
incremental detokenizer for streaming."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from inferno_models.errors import ModelFormatError, UnsupportedModelError

__all__ = ["IncrementalDetokenizer", "Tokenizer", "byte_to_unicode"]

# GGUF token types (llama.cpp's llama_token_type).
_CONTROL = 3
_USER_DEFINED = 4
_BYTE = 6

#: Pre-tokenizer split patterns for GGUF ``tokenizer.ggml.pre`` values whose vocabularies were
#: learned on Llama-3-style splits; others use the GPT-2 byte-level split.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: Qwen2's: digits one at a time.
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
#: GPT-4o's (o200k; Phi-4's vocabularies): a word may open with capitals and close with a
#: contraction, so "HelloWorld's" is "Hello" and "World's".
_UPPER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
_LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_CONTRACTION = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
_GPT4O_SPLIT = (
    rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTION}"
    rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTION}"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "smaug-bpe"), _LLAMA3_SPLIT)
_SPLITS["qwen2"] = _QWEN2_SPLIT
_SPLITS["gpt-4o"] = _GPT4O_SPLIT
#: Vocabularies learned on NFC-normalized text (Qwen2's tokenizer.json normalizes to NFC).
_NFC_PRES = frozenset({"qwen2"})


@cache
def byte_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character map of byte-level BPE vocabularies.

    Printable Latin-1 bytes map to themselves; the rest are shifted past U+0100 in order, so
    every byte has a visible, non-whitespace stand-in.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


class Tokenizer:
    """Text <-> token ids for one model, with its special tokens and BOS/EOS policy.

    ``encode`` parses special tokens written in the text (``<|im_start|>``) as single ids, as the
    reference implementation does, and adds BOS when the model asks for it.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        bos_token_id: int | None,
        eos_token_ids: Sequence[int],
        add_bos_token: bool,
        source: str = "<memory>",
    ) -> None:
        self.backend = backend
        self.bos_token_id = bos_token_id
        self.eos_token_ids = tuple(eos_token_ids)
        self.add_bos_token = add_bos_token
        self.source = source
        # A tokenizer.json may carry its own BOS policy in its post-processor.
        self._post_processor_adds = _post_processor_adds_tokens(backend)
        self.special_token_ids = frozenset(
            tid for tid, tok in backend.get_added_tokens_decoder().items() if tok.special
        )

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; ``add_special_tokens`` adds BOS if the model wants it."""
        if self._post_processor_adds:
            return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)
        ids: list[int] = self.backend.encode(text, add_special_tokens=False).ids
        if add_special_tokens and self.add_bos_token and self.bos_token_id is not None:
            return [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (invalid UTF-8 becomes U+FFFD)."""
        return str(self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def token_to_id(self, token: str) -> int | None:
        """Id of a token string, or ``None``."""
        tid = self.backend.token_to_id(token)
        return None if tid is None else int(tid)

    def id_to_token(self, token_id: int) -> str | None:
        """Token string of an id, or ``None``."""
        tok = self.backend.id_to_token(token_id)
        return None if tok is None else str(tok)

    def token_bytes(self) -> list[bytes]:
        """What each id adds to decoded text, as UTF-8 bytes (a piece of a character for
        byte-level tokens that split one); empty for special tokens.

        This is the vocabulary a constrained decoder checks tokens against: decoding ids one by
        one cannot give it, as a lone piece of a character decodes to U+FFFD.
        """
        out = [b""] * self.vocab_size
        added = self.backend.get_added_tokens_decoder()
        byte_level = isinstance(self.backend.decoder, decoders.ByteLevel)
        unspell = {ch: b for b, ch in byte_to_unicode().items()}
        for piece, tid in self.backend.get_vocab(with_added_tokens=True).items():
            if not 0 <= tid < len(out) or tid in self.special_token_ids:
                continue
            if tid in added:
                out[tid] = added[tid].content.encode("utf-8")
            elif byte_level:
                out[tid] = b"".join(
                    bytes([unspell[ch]]) if ch in unspell else ch.encode("utf-8") for ch in piece
                )
            elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                out[tid] = bytes([int(piece[3:5], 16)])  # a SentencePiece byte-fallback token
            else:
                out[tid] = piece.replace("\u2581", " ").encode("utf-8")
        return out

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_pretrained_dir(cls, directory: str | Path) -> Tokenizer:
        """Load ``tokenizer.json`` (+ ``tokenizer_config.json`` for BOS/EOS) from a directory.

        Raises:
            ModelFormatError: the files are missing or unreadable.
        """
        directory = Path(directory)
        path = directory / "tokenizer.json"
        try:
            backend = Backend.from_file(str(path))
        except Exception as exc:  # the Rust side raises plain Exception subclasses
            raise ModelFormatError(path, f"unreadable tokenizer: {exc}") from None
        config = _read_json(directory / "tokenizer_config.json") or {}
        model_config = _read_json(directory / "config.json") or {}

        def token_id(entry: Any) -> int | None:
            if isinstance(entry, dict):
                entry = entry.get("content")
            return backend.token_to_id(entry) if isinstance(entry, str) else None

        bos = token_id(config.get("bos_token"))
        if bos is None:
            bos = model_config.get("bos_token_id")
        eos_cfg = model_config.get("eos_token_id")
        eos = [eos_cfg] if isinstance(eos_cfg, int) else list(eos_cfg or [])
        tok_eos = token_id(config.get("eos_token"))
        if tok_eos is not None and tok_eos not in eos:
            eos.insert(0, tok_eos)
        add_bos = bool(config.get("add_bos_token", False))
        return cls(
            backend, bos_token_id=bos, eos_token_ids=eos, add_bos_token=add_bos, source=str(path)
        )

    @classmethod
    def from_gguf_metadata(cls, metadata: dict[str, Any], *, source: str) -> Tokenizer:
        """Build from ``tokenizer.ggml.*`` metadata: ``gpt2`` (byte-level BPE) or ``llama``
        (SentencePiece BPE with byte fallback).

        Raises:
            UnsupportedModelError: another tokenizer model.
            ModelFormatError: the vocabulary is missing or inconsistent.
        """
        kind = metadata.get("tokenizer.ggml.model")
        tokens = metadata.get("tokenizer.ggml.tokens")
        if not tokens:
            raise ModelFormatError(source, "no tokenizer vocabulary (tokenizer.ggml.tokens)")
        types = list(metadata.get("tokenizer.ggml.token_type") or [1] * len(tokens))
        if len(types) != len(tokens):
            raise ModelFormatError(source, "tokenizer.ggml.token_type length differs from tokens")
        try:
            if kind == "gpt2":
                backend = _byte_level_bpe(tokens, metadata, types)
            elif kind == "llama":
                backend = _sentencepiece_bpe(tokens, metadata)
            else:
                raise UnsupportedModelError(source, f"unsupported tokenizer model {kind!r}")
        except ModelFormatError:
            raise
        except Exception as exc:
            raise ModelFormatError(source, f"cannot build tokenizer: {exc}") from None
        specials = [
            AddedToken(tok, special=True, normalized=False)
            for tok, ty in zip(tokens, types, strict=True)
            if ty == _CONTROL
        ]
        user = [
            AddedToken(tok, special=False, normalized=False)
            for tok, ty in zip(tokens, types, strict=True)
            if ty == _USER_DEFINED
        ]
        backend.add_special_tokens(specials)
        backend.add_tokens(user)
        bos = metadata.get("tokenizer.ggml.bos_token_id")
        eos = [
            int(t)
            for t in (
                metadata.get("tokenizer.ggml.eos_token_id"),
                metadata.get("tokenizer.ggml.eot_token_id"),
            )
            if t is not None
        ]
        add_bos = metadata.get("tokenizer.ggml.add_bos_token")
        if add_bos is None:
            add_bos = kind == "llama"
        return cls(
            backend,
            bos_token_id=None if bos is None else int(bos),
            eos_token_ids=list(dict.fromkeys(eos)),
            add_bos_token=bool(add_bos),
            source=source,
        )

    def save(self, directory: str | Path, *, chat_template: str | None = None) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` (loadable by transformers)."""
        directory = Path(directory)
        backend = self.backend
        if self.add_bos_token and self.bos_token_id is not None and not self._post_processor_adds:
            # Readers of tokenizer.json expect the BOS policy in its post-processor.
            backend = Backend.from_str(backend.to_str())
            bos = self.id_to_token(self.bos_token_id)
            backend.post_processor = processors.TemplateProcessing(
                single=f"{bos}:0 $A:0",
                pair=f"{bos}:0 $A:0 $B:1",
                special_tokens=[(str(bos), self.bos_token_id)],
            )
        backend.save(str(directory / "tokenizer.json"))
        config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "add_bos_token": self.add_bos_token,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1 << 30,
        }
        if self.bos_token_id is not None:
            config["bos_token"] = self.id_to_token(self.bos_token_id)
        if self.eos_token_ids:
            config["eos_token"] = self.id_to_token(self.eos_token_ids[0])
        if chat_template is not None:
            config["chat_template"] = chat_template
        (directory / "tokenizer_config.json").write_text(
            json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8"
        )


def _byte_level_bpe(tokens: list[str], metadata: dict[str, Any], types: list[int]) -> Backend:
    alphabet = set(byte_to_unicode().values())
    spell = byte_to_unicode()
    vocab: dict[str, int] = {}
    for index, tok in enumerate(tokens):
        # Control tokens written outside the byte alphabet are kept verbatim; anything else
        # in plain text is re-spelled into the byte alphabet.
        if types[index] != _CONTROL and not set(tok) <= alphabet:
            tok = "".join(spell[b] for b in tok.encode("utf-8"))
        vocab.setdefault(tok, index)
    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges") or []]
    backend = Backend(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    pre = str(metadata.get("tokenizer.ggml.pre"))
    split = _SPLITS.get(pre)
    if pre in _NFC_PRES:
        backend.normalizer = normalizers.NFC()
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece_bpe(tokens: list[str], metadata: dict[str, Any]) -> Backend:
    vocab = {tok: index for index, tok in enumerate(tokens)}
    raw_merges = metadata.get("tokenizer.ggml.merges")
    if raw_merges:
        merges = [tuple(m.split(" ", 1)) for m in raw_merges]
    else:
        scores = metadata.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
        merges = _merges_from_scores(tokens, [float(s) for s in scores], vocab)
    unk = metadata.get("tokenizer.ggml.unknown_token_id")
    backend = Backend(
        models.BPE(
            vocab=vocab,
            merges=merges,
            unk_token=tokens[int(unk)] if unk is not None else None,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    prepend = "first" if metadata.get("tokenizer.ggml.add_space_prefix", True) else "never"
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend)
    parts: list[Any] = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prepend == "first":
        parts.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(parts)
    return backend


def _merges_from_scores(
    tokens: list[str], scores: list[float], vocab: dict[str, int]
) -> list[tuple[str, str]]:
    """SentencePiece vocabularies without merges: every split of a token into two vocabulary
    pieces is a merge, ranked by the merged token's score (higher first)."""
    ranked: list[tuple[float, int, int, str, str]] = []
    for tok, score in zip(tokens, scores, strict=True):
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in vocab and right in vocab:
                ranked.append((-score, vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


def _post_processor_adds_tokens(backend: Backend) -> bool:
    return len(backend.encode("", add_special_tokens=True).ids) > 0


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(path, f"unreadable JSON: {exc}") from None
    return data if isinstance(data, dict) else None


class IncrementalDetokenizer:
    """Turns a stream of token ids into text deltas that never split a UTF-8 character.

    Text is held back while the decoded tail ends in U+FFFD (an incomplete multi-byte character);
    `flush` releases it at the end. Concatenating every delta and the flush equals
    ``tokenizer.decode(all_ids)`` for byte-level vocabularies, and the same text in context for
    SentencePiece ones (``prompt_ids`` supply that context).
    """

    _CONTEXT = 4

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        skip_special_tokens: bool = True,
        prompt_ids: Sequence[int] = (),
    ) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        context = list(prompt_ids[-self._CONTEXT :])
        self._ids: list[int] = context
        self._prefix = 0  # start of the window decoded for context
        self._read = len(context)  # ids before this have been emitted

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now final (possibly empty)."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        if full_text.endswith("\ufffd") or len(full_text) <= len(prefix_text):
            return ""
        delta = full_text[len(prefix_text) :]
        self._prefix, self._read = self._read, len(self._ids)
        return delta

    def flush(self) -> str:
        """Text still held back (e.g. an incomplete character at the end), releasing it."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        self._prefix, self._read = self._read, len(self._ids)
        return full_text[len(prefix_text) :] if len(full_text) > len(prefix_text) else ""

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip)
