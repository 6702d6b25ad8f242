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

model/tokenizer_json.py writes the Hugging Face `tokenizer.json` that encodes exactly like
`QwenTokenizer`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.resources
import os
import unicodedata
from collections.abc import Collection, Iterable, Sequence, Set
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, Protocol

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

SpecialSet = Literal["all"] | Set[str]


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
        return checked_ids(ids, self.vocab_size, "Qwen's vocabulary",
                           "; higher ids are embedding padding rows and have no text")


@functools.lru_cache(maxsize=8)
def _load_encoding(path: str, mtime_ns: int, size: int) -> tuple[tiktoken.Encoding, str]:
    """Parse and check `qwen.tiktoken` once per (path, version of the file)."""
    ranks, sha256 = read_vocab(Path(path))
    encoding = tiktoken.Encoding(f"qwen:{path}", pat_str=PRETOKENIZE_REGEX, mergeable_ranks=ranks,
                                 special_tokens=SPECIAL_TOKENS,
                                 explicit_n_vocab=N_REGULAR_TOKENS + len(SPECIAL_TOKENS))
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
        raise UserError(f"{path}: expected the {N_REGULAR_TOKENS} distinct ranks "
                        f"0..{N_REGULAR_TOKENS - 1} "
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


def checked_ids(ids: int | Iterable[int], vocab_size: int, what: str, hint: str = "") -> list[int]:
    """`ids` as a list, or a UserError naming the first id outside 0..vocab_size-1."""
    ids = _id_list(ids)
    if ids and (min(ids) < 0 or max(ids) >= vocab_size):
        bad = next(i for i in ids if not 0 <= i < vocab_size)
        raise UserError(f"token id {bad} is outside {what} (0..{vocab_size - 1}){hint}")
    return ids


def _id_list(ids: int | Iterable[int]) -> list[int]:
    if hasattr(ids, "tolist"):  # torch tensors, numpy arrays
        ids = ids.tolist()
    return [ids] if isinstance(ids, int) else list(ids)


# ---------------------------------------------------------------------------------------------
# Qwen2-format checkpoints: their own tokenizer.json through transformers


class HFTokenizer:
    """`transformers.AutoTokenizer` behind the `Tokenizer` interface."""

    def __init__(self, tokenizer, name_or_path: str):
        self._tokenizer = tokenizer
        self.name_or_path = name_or_path
        self.vocab_size = len(tokenizer)
        vocab = tokenizer.get_vocab()
        eod_id = vocab.get(ENDOFTEXT, tokenizer.eos_token_id)
        if eod_id is None:
            raise UserError(f"the tokenizer in {name_or_path} has neither {ENDOFTEXT} nor an "
                            f"eos_token; set eos_token in its tokenizer_config.json")
        self.eod_id = eod_id
        self._added_tokens = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
        self._byte_level = _is_byte_level(tokenizer)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> HFTokenizer:
        path = Path(directory).expanduser().resolve()
        stamp = max((f.stat().st_mtime_ns for f in path.glob("tokenizer*.json")), default=0)
        return cls(_load_hf_tokenizer(str(path), stamp), str(path))

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name_or_path!r})"

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False, verbose=False)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._tokenizer(list(texts), add_special_tokens=False, verbose=False,
                               return_attention_mask=False)["input_ids"]

    def decode(self, ids: int | Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tokenizer.decode(self._checked(ids), skip_special_tokens=skip_special_tokens,
                                      clean_up_tokenization_spaces=False)

    def decode_bytes(self, ids: int | Iterable[int]) -> bytes:
        """Exact for byte-level BPE (every Qwen2 tokenizer); other tokenizers have no byte
        alphabet, so their text is decoded and re-encoded as UTF-8."""
        ids = self._checked(ids)
        if not self._byte_level:
            return self.decode(ids).encode("utf-8")
        pieces = []
        for i, token in zip(ids, self._tokenizer.convert_ids_to_tokens(ids)):
            special = self._added_tokens.get(i)
            pieces.append(special.encode("utf-8") if special is not None
                          else bytes(UNICODE_TO_BYTE[c] for c in token))
        return b"".join(pieces)

    def _checked(self, ids: int | Iterable[int]) -> list[int]:
        return checked_ids(ids, self.vocab_size, f"the vocabulary of {self.name_or_path}")


@functools.lru_cache(maxsize=8)
def _load_hf_tokenizer(directory: str, stamp: int):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the Hugging Face tokenizer in {directory} "
                        f"({str(e).splitlines()[0]}); check its tokenizer.json") from None


def _is_byte_level(tokenizer) -> bool:
    from tokenizers import decoders

    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and isinstance(backend.decoder, decoders.ByteLevel)


# ---------------------------------------------------------------------------------------------
# GGUF files: the vocabulary and merges in their metadata

# tokenizer.ggml.pre values whose split is Qwen2's (llama.cpp's names)
GGUF_QWEN2_PRE = ("qwen2", "deepseek-r1-qwen", "megrez")
GGUF_CONTROL, GGUF_USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values


class BPETokenizer:
    """Byte-level BPE from a GGUF file's `tokenizer.ggml.*` metadata, through `tokenizers`.

    Built as transformers and llama.cpp build it from the same file, so ids agree with both:
    Qwen2's split regex, then GPT-2's byte alphabet; no NFC normalisation (a GGUF does not ask for
    it, unlike Qwen2's tokenizer.json); control tokens are special, user-defined ones are whole
    but not special.
    """

    def __init__(self, tokenizer, name_or_path: str, eod_id: int, specials: dict[int, str]):
        self._tokenizer = tokenizer
        self.name_or_path = name_or_path
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eod_id = eod_id
        self._added = specials  # id -> surface text of every added token
        self._special_ids = {i for i, t in specials.items()}
        self.bos_token: str | None = None  # set from the file's bos/eos ids (chat templates use them)
        self.eos_token: str | None = None

    @classmethod
    def from_gguf_vocab(cls, tokens: list[str], merges: list[str], token_types: list[int], *, model: str,
                        pre: str | None, where: str, eod_id: int | None = None) -> BPETokenizer:
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
        from tokenizers.models import BPE

        if model != "gpt2":
            raise UserError(f"{where}: tokenizer.ggml.model {model!r} is not a byte-level BPE; the bundled "
                            f"model reads Qwen's ('gpt2')")
        if pre not in GGUF_QWEN2_PRE:
            raise UserError(f"{where}: tokenizer.ggml.pre {pre!r} is not Qwen's pre-tokenizer "
                            f"({', '.join(GGUF_QWEN2_PRE)}); set model.tokenizer_path to the model's tokenizer.json")
        alphabet = set(BYTE_TO_UNICODE.values())
        vocab = {}
        for i, token in enumerate(tokens):
            spelled = token if set(token) <= alphabet else "".join(BYTE_TO_UNICODE[b] for b in token.encode())
            vocab.setdefault(spelled, i)
        bpe = BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False,
                  byte_fallback=False)
        tokenizer = Tokenizer(bpe)
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tokenizer.decoder = decoders.ByteLevel()
        types = list(token_types) + [0] * (len(tokens) - len(token_types))
        control = [t for t, k in zip(tokens, types) if k == GGUF_CONTROL and set(t) <= alphabet]
        user = [t for t, k in zip(tokens, types) if k == GGUF_USER_DEFINED and t in vocab]
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
        added = {tokenizer.token_to_id(t): t for t in control + user}
        if eod_id is None:
            eod_id = tokenizer.token_to_id(ENDOFTEXT)
        if eod_id is None:
            raise UserError(f"{where}: the vocabulary has no {ENDOFTEXT} and no eos id")
        out = cls(tokenizer, where, eod_id, added)
        out._special_ids = {tokenizer.token_to_id(t) for t in control}
        return out

    def __repr__(self) -> str:
        return f"BPETokenizer({self.name_or_path!r})"

    def to_json(self) -> str:
        """This tokenizer as a tokenizer.json text (model/hf_export.py writes it beside the weights)."""
        return self._tokenizer.to_str()

    @property
    def added_tokens(self) -> dict[int, str]:
        """id -> text of every added token (control and user-defined)."""
        return dict(self._added)

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(self._special_ids)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: int | Iterable[int], skip_special_tokens: bool = False) -> str:
        ids = self._checked(ids)
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: int | Iterable[int]) -> bytes:
        pieces = []
        for i in self._checked(ids):
            added = self._added.get(i)
            pieces.append(added.encode("utf-8") if added is not None
                          else bytes(UNICODE_TO_BYTE[c] for c in self._tokenizer.id_to_token(i)))
        return b"".join(pieces)

    def _checked(self, ids: int | Iterable[int]) -> list[int]:
        return checked_ids(ids, self.vocab_size, f"the vocabulary of {self.name_or_path}")


def load_tokenizer(checkpoint_dir: str | Path | None,
                   tokenizer_path: str | Path | None = None) -> QwenTokenizer | HFTokenizer:
    """The tokenizer for a checkpoint folder (None: the packaged Qwen vocabulary).

    `tokenizer_path` (config `tokenizer.path`) overrides the folder: a qwen.tiktoken file, or a
    folder holding qwen.tiktoken or a Hugging Face tokenizer.json. A folder with a tokenizer.json
    and no qwen.tiktoken (Qwen1.5/2/2.5) gets its own tokenizer through transformers.
    """
    if checkpoint_dir is not None and not Path(checkpoint_dir).expanduser().is_dir():
        raise UserError(f"checkpoint folder {checkpoint_dir} does not exist; check model.path")
    folder = Path(tokenizer_path or checkpoint_dir or "").expanduser()
    if ((tokenizer_path or checkpoint_dir) and folder.is_dir()
            and not (folder / VOCAB_FILE).is_file() and (folder / "tokenizer.json").is_file()):
        return HFTokenizer.from_pretrained(folder)
    return QwenTokenizer.from_path(find_vocab(tokenizer_path, checkpoint_dir))



def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the other 68
    bytes map to U+0100 onward, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in mapping):
        mapping[b] = chr(256 + n)
    return mapping


BYTE_TO_UNICODE = _bytes_to_unicode()
UNICODE_TO_BYTE = {c: b for b, c in BYTE_TO_UNICODE.items()}
