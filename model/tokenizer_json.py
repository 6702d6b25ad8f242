"""`qwen.tiktoken` as the Hugging Face `tokenizer.json` Qwen2 ships: `write_hf_tokenizer(directory)`
writes one that encodes exactly like `QwenTokenizer`, so a tiny Qwen2 checkpoint can carry the real
vocabulary (tests, the `qwen2-tiny` preset) and transformers can read it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from qwen_eval.errors import UserError
from qwen_eval.model.tokenizer import (BYTE_TO_UNICODE, ENDOFTEXT, PRETOKENIZE_REGEX, SPECIAL_TOKENS, QwenTokenizer,
                                       packaged_vocab, read_vocab)

# As Qwen2 ships it. transformers 5 then rebuilds the pipeline in Qwen2Tokenizer (same NFC and
# regex) from our vocabulary and merges; transformers 4 and other readers use tokenizer.json as is.
_TOKENIZER_CONFIG = {
    "tokenizer_class": "Qwen2Tokenizer",
    "bos_token": None,
    "eos_token": ENDOFTEXT,
    "pad_token": ENDOFTEXT,
    "unk_token": None,
    "clean_up_tokenization_spaces": False,
    "add_prefix_space": False,
    "split_special_tokens": False,
    "errors": "replace",
    "model_max_length": 32768,
    "added_tokens_decoder": {
        str(i): {"content": token, "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": True}
        for token, i in SPECIAL_TOKENS.items()
    },
}



def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merge that creates each token of >= 2 bytes, in rank order.

    tiktoken has ranks, not merges. Running BPE on a token's own bytes with only the lower ranks
    must stop at exactly two parts; joining them is the merge that creates the token.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = [token[i:i + 1] for i in range(len(token))]
        while len(parts) > 2:
            pair_ranks = [ranks.get(parts[i] + parts[i + 1], rank) for i in range(len(parts) - 1)]
            best = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
            if pair_ranks[best] >= rank:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) != 2:
            raise UserError(f"vocabulary token of rank {rank} ({token!r}) cannot be built by BPE "
                            f"from lower ranks; this is not a BPE vocabulary")
        merges.append((parts[0], parts[1]))
    return merges


def build_hf_tokenizer_json(vocab_file: Path) -> str:
    """tokenizer.json text equivalent to QwenTokenizer over `vocab_file` (a few seconds)."""
    from tokenizers import (AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers,
                            processors)
    from tokenizers.models import BPE

    ranks, _ = read_vocab(vocab_file)

    def unicode_form(token: bytes) -> str:
        return "".join(BYTE_TO_UNICODE[b] for b in token)

    vocab = {unicode_form(token): rank for token, rank in ranks.items()}
    merges = [(unicode_form(a), unicode_form(b)) for a, b in recover_merges(ranks)]
    # ignore_merges: a pre-token that is itself a vocabulary entry is taken whole, as tiktoken does
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False,
                              byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                  for token in SPECIAL_TOKENS])
    wrong = {token: i for token, i in SPECIAL_TOKENS.items() if tokenizer.token_to_id(token) != i}
    assert not wrong, f"special tokens got unexpected ids: {wrong}"
    return tokenizer.to_str()


def write_hf_tokenizer(directory: str | Path, vocab_file: str | Path | None = None) -> Path:
    """Write tokenizer.json + tokenizer_config.json for `AutoTokenizer.from_pretrained(directory)`.

    The conversion takes seconds, so its result is kept in memory and under
    `$QWEN_EVAL_CACHE/tokenizer/<sha256 of the vocabulary>/` (default ~/.cache/qwen-eval).
    """
    vocab = QwenTokenizer.from_path(vocab_file or packaged_vocab())
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(_hf_tokenizer_json(vocab.vocab_sha256, vocab.name_or_path),
                                              encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps(_TOKENIZER_CONFIG, indent=2) + "\n",
                                                     encoding="utf-8")
    return directory


_HF_JSON_MEMO: dict[str, str] = {}  # vocabulary sha256 -> tokenizer.json text, for this process


def _hf_tokenizer_json(sha256: str, vocab_file: str) -> str:
    if sha256 in _HF_JSON_MEMO:
        return _HF_JSON_MEMO[sha256]
    cached = _cache_root() / "tokenizer" / sha256 / "tokenizer.json"
    try:
        text = cached.read_text(encoding="utf-8")
    except OSError:
        text = build_hf_tokenizer_json(Path(vocab_file))
        try:  # best effort; another process may write the same file, replace() keeps it whole
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_name(f"tokenizer.json.{os.getpid()}.tmp")
            partial.write_text(text, encoding="utf-8")
            partial.replace(cached)
        except OSError:
            pass
    _HF_JSON_MEMO[sha256] = text
    return text


def _cache_root() -> Path:
    return Path(os.environ.get("QWEN_EVAL_CACHE") or "~/.cache/qwen-eval").expanduser()
