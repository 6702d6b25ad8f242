"""Checks on the real GGUF too long for CI: the tokenizer on every benchmark file in shared/data
(token for token against the tokenizer transformers builds from the same file), plus the special
tokens, and how many texts Qwen2's NFC normalisation would change (a GGUF tokenizer, ours and
transformers' and llama.cpp's alike, does not normalise).

    python benchmarks/real_model_checks.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import time
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def corpus(data: Path) -> list[tuple[str, str]]:
    """(where, text) for every text field of every benchmark file, and each long document in
    20K-character pieces."""
    out: list[tuple[str, str]] = []
    for file in sorted(data.rglob("*")):
        if not file.is_file() or file.suffix not in (".csv", ".jsonl", ".json", ".txt", ".tex", ".adoc"):
            continue
        text = file.read_text(encoding="utf-8", errors="replace")
        rel = str(file.relative_to(data))
        if file.suffix in (".csv", ".txt", ".tex", ".adoc", ".json"):
            out += [(f"{rel}@{i}", text[i:i + 20000]) for i in range(0, len(text), 20000)]
        else:
            for n, line in enumerate(text.splitlines()):
                row = json.loads(line)
                out += [(f"{rel}:{n}.{k}", v) for k, v in row.items() if isinstance(v, str)]
    return out


def main() -> None:
    from transformers import AutoTokenizer

    from qwen_eval.tools import fixtures
    from qwen_eval.model.gguf import gguf_tokenizer, open_gguf

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = p.parse_args()
    gguf = fixtures.fetch("real-0.5b")
    ours = gguf_tokenizer(open_gguf(gguf))
    theirs = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    texts = corpus(args.data)
    specials = [t for t in theirs.get_vocab() if t.startswith("<|") and t.endswith("|>")]
    texts += [("specials", " ".join(specials)), ("specials-joined", "".join(specials)),
              ("chat", "<|im_start|>system\nYou are Qwen.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")]
    start = time.perf_counter()
    mine = ours.encode_batch([t for _, t in texts])
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    ref = [theirs.encode(t, add_special_tokens=False) for _, t in texts]
    theirs_s = time.perf_counter() - start
    differ = [where for (where, _), a, b in zip(texts, mine, ref) if a != b]
    decode_differ = [where for (where, t), ids in zip(texts, mine) if ours.decode(ids) != t and "\ufffd" not in t]
    nfc = sum(unicodedata.normalize("NFC", t) != t for _, t in texts)
    tokens = sum(map(len, ref))
    print(f"{len(texts)} texts, {sum(len(t) for _, t in texts):,} characters, {tokens:,} tokens, "
          f"{len(specials)} special tokens")
    print(f"ids equal to transformers': {len(texts) - len(differ)}/{len(texts)}" + (f" (first differing: {differ[:5]})" if differ else ""))
    print(f"decode(encode(text)) == text: {len(texts) - len(decode_differ)}/{len(texts)}")
    print(f"texts NFC would change: {nfc}")
    print(f"encode time: ours {ours_s:.1f} s (batch), transformers {theirs_s:.1f} s (one by one)")


if __name__ == "__main__":
    main()
