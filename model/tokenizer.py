"""Qwen's tokenizer: tiktoken over `qwen.tiktoken` with Qwen's 208 special tokens (design §14).

Every tokenizer the engine gets from `load_tokenizer` (a `QwenTokenizer` for Qwen-1 checkpoints
and for no checkpoint at all, an `HFTokenizer` for Qwen2-format checkpoints that carry their own
`tokenizer.json`) exposes the same small interface, `Tokenizer` below:

    encode(text) -> list[int]            no BOS/EOS is added; special-token text such as
                                         "<|endoftext|>" becomes the special id, as Qwen does
    encode_batch(texts) -> list[list[int]]
    decode(ids, skip_special_tokens=False) -> str    invalid UTF-8 decodes to U+FFFD
    decode_bytes(ids) -> bytes           the raw bytes, for incremental decoding and stop strings
    eod_id: int                          id of <|endoftext|>, the document separator
    vocab_size: int                      ids that decode (the embedding may have more rows)
    name_or_path: str                    where the vocabulary came from

`write_hf_tokenizer(directory)` writes a Hugging Face `tokenizer.json` that encodes exactly like
`QwenTokenizer` (what Qwen2's tokenizer.json is), so tests can build tiny Qwen2 checkpoints with
the real vocabulary.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.resources
import json
import os
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import AbstractSet, Collection, Iterable, Literal, Protocol, Sequence

import tiktoken

from qwen_eval.errors import UserError

VOCAB_FILE = "qwen.tiktoken"

# cl100k's pattern with \p{N}{1,3} replaced by \p{N}: every digit is its own pre-token (§14.2).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

N_REGULAR_TOKENS = 151643  # ranks 0..151642 in qwen.tiktoken; the specials follow (§14.3)
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: dict[str, int] = {
    token: N_REGULAR_TOKENS + i
    for i, token in enumerate((ENDOFTEXT, IM_START, IM_END, *(f"<|extra_{i}|>" for i in range(205))))
}

_THREADS = min(8, os.cpu_count() or 1)

SpecialSet = Literal["all"] | AbstractSet[str]


class Tokenizer(Protocol):
    """What the engine needs from a tokenizer (see the module docstring)."""

    eod_id: int
    vocab_size: int
    name_or_path: str

    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str: ...
    def decode_bytes(self, ids: Iterable[int]) -> bytes: ...


# ---------------------------------------------------------------------------------------------
# Qwen (v1): tiktoken


class QwenTokenizer:
    """Qwen's `QWenTokenizer` semantics: NFC on encode, specials parsed by default, no BOS/EOS."""

    def __init__(self, encoding: tiktoken.Encoding, path: Path, sha256: str, errors: str = "replace"):
        self._encoding = encoding
        self.name_or_path = str(path)
        self.vocab_sha256 = sha256
        self.errors = errors  # default for decode(); Qwen suggests "ignore" for streaming
        self.special_tokens = dict(SPECIAL_TOKENS)
        self.vocab_size = N_REGULAR_TOKENS + len(SPECIAL_TOKENS)  # 151851
        self.eod_id = SPECIAL_TOKENS[ENDOFTEXT]
        self.im_start_id = SPECIAL_TOKENS[IM_START]
        self.im_end_id = SPECIAL_TOKENS[IM_END]

    @classmethod
    def from_path(cls, vocab_file: str | Path, errors: str = "replace") -> QwenTokenizer:
        path = Path(vocab_file).expanduser().resolve()
        try:
            stat = path.stat()
        except OSError as e:
            raise UserError(f"cannot read the tokenizer vocabulary {path} ({e.strerror}); "
                            f"set tokenizer.path to a qwen.tiktoken file") from None
        encoding, sha256 = _load_encoding(str(path), stat.st_mtime_ns, stat.st_size)
        return cls(encoding, path, sha256, errors)

    def __repr__(self) -> str:
        return f"QwenTokenizer({self.name_or_path!r})"

    def encode(self, text: str, allowed_special: SpecialSet = "all",
               disallowed_special: SpecialSet | Collection[str] = ()) -> list[int]:
        """`allowed_special` texts become special ids, others encode as plain bytes, and any
        `disallowed_special` text raises ("all" = every special not allowed)."""
        text = unicodedata.normalize("NFC", text)
        allowed = self._encoding.special_tokens_set if allowed_special == "all" else allowed_special
        if disallowed_special == "all":
            disallowed_special = self._encoding.special_tokens_set - allowed
        for token in disallowed_special:
            if token in text:
                raise UserError(f"the text contains the special token {token!r}, which "
                                f"disallowed_special forbids; remove it or allow it")
        return self._encoding.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_batch(self, texts: Sequence[str], allowed_special: SpecialSet = "all",
                     disallowed_special: SpecialSet | Collection[str] = ()) -> list[list[int]]:
        encode = functools.partial(self.encode, allowed_special=allowed_special,
                                   disallowed_special=disallowed_special)
        if len(texts) < 2:
            return [encode(text) for text in texts]
        with ThreadPoolExecutor(_THREADS) as pool:  # tiktoken releases the GIL while encoding
            return list(pool.map(encode, texts))

    def decode(self, ids: int | Iterable[int], skip_special_tokens: bool = False,
               errors: str | None = None) -> str:
        """No whitespace clean-up; `skip_special_tokens` drops all 208 specials (ids >= 151643)."""
        ids = self._checked(ids)
        if skip_special_tokens:
            ids = [i for i in ids if i < self.eod_id]
        return self._encoding.decode_bytes(ids).decode("utf-8", errors=errors or self.errors)

    def decode_bytes(self, ids: int | Iterable[int]) -> bytes:
        """Special ids decode to their surface text."""
        return self._encoding.decode_bytes(self._checked(ids))

    def _checked(self, ids: int | Iterable[int]) -> list[int]:
        ids = _id_list(ids)
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise UserError(f"token id {bad} is outside Qwen's vocabulary (0..{self.vocab_size - 1}); "
                            f"higher ids are embedding padding rows and have no text")
        return ids


@functools.lru_cache(maxsize=8)
def _load_encoding(path: str, mtime_ns: int, size: int) -> tuple[tiktoken.Encoding, str]:
    """Parse and check `qwen.tiktoken` once per (path, version of the file)."""
    ranks, sha256 = read_vocab(Path(path))
    encoding = tiktoken.Encoding(f"qwen:{path}", pat_str=PRETOKENIZE_REGEX, mergeable_ranks=ranks,
                                 special_tokens=SPECIAL_TOKENS, explicit_n_vocab=N_REGULAR_TOKENS + len(SPECIAL_TOKENS))
    return encoding, sha256


def read_vocab(path: Path) -> tuple[dict[bytes, int], str]:
    """Token bytes -> rank from `<base64> <rank>` lines, and the file's sha256. The ranks must be
    0..151642 exactly, since the special ids are fixed right after them."""
    data = path.read_bytes()
    ranks: dict[bytes, int] = {}
    for line_number, line in enumerate(data.splitlines(), 1):
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise UserError(f"{path} line {line_number}: expected '<base64 token> <rank>'; "
                            f"is this a qwen.tiktoken vocabulary?") from None
    if len(ranks) != N_REGULAR_TOKENS or sorted(ranks.values()) != list(range(N_REGULAR_TOKENS)):
        raise UserError(f"{path}: expected the {N_REGULAR_TOKENS} distinct ranks 0..{N_REGULAR_TOKENS - 1} "
                        f"of Qwen's vocabulary, found {len(ranks)} tokens; use Qwen's qwen.tiktoken")
    return ranks, hashlib.sha256(data).hexdigest()


def packaged_vocab() -> Path:
    """The copy of qwen.tiktoken shipped in the package (see NOTICE)."""
    return Path(str(importlib.resources.files("qwen_eval.model") / VOCAB_FILE))


def find_vocab(tokenizer_path: str | Path | None, checkpoint_dir: str | Path | None) -> Path:
    """The explicit `tokenizer.path` (a file, or a folder holding qwen.tiktoken), else the
    checkpoint's own qwen.tiktoken, else the packaged copy."""
    if tokenizer_path:
        path = Path(tokenizer_path).expanduser()
        if path.is_dir():
            path = path / VOCAB_FILE
        if not path.is_file():
            raise UserError(f"tokenizer.path={tokenizer_path}: no such file ({path}); point it at "
                            f"a qwen.tiktoken vocabulary or a folder holding one")
        return path
    if checkpoint_dir and (Path(checkpoint_dir) / VOCAB_FILE).is_file():
        return Path(checkpoint_dir) / VOCAB_FILE
    return packaged_vocab()


def _id_list(ids: int | Iterable[int]) -> list[int]:
    if hasattr(ids, "tolist"):  # torch tensors, numpy arrays
        ids = ids.tolist()
    return [ids] if isinstance(ids, int) else list(ids)
