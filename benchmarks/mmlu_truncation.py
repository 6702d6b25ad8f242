"""Can MMLU prompts longer than the model's 2,048 tokens keep a shared prefix without changing a
single token the model sees?

Qwen's evaluate_mmlu.py cuts a long prompt's tokens from the left (the last max_len - 1 are kept).
All questions of a subject share the header and five shots; a cut prompt starts `offset` tokens
into that shared text, where offset = len(prompt) - (max_len - 1). Two cut prompts begin with the
same tokens only when their offsets are equal, i.e. their questions are the same number of
tokens long (and then they share the shared part past the offset). This script measures, on the
full MMLU test set, how many prompts are cut, how many tokens a shared prefix saves today on the
uncut ones, and how many more it could save on the cut ones by sharing among equal offsets.

    python benchmarks/mmlu_truncation.py [--data ../shared/data/mmlu] [--max-length 2048]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from qwen_eval.model.tokenizer import QwenTokenizer
from qwen_eval.task import DataSpec
from qwen_eval.tasks.mmlu import MMLU

ROOT = Path(__file__).resolve().parents[1]


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mmlu")
    p.add_argument("--max-length", type=int, default=2048)
    args = p.parse_args()

    tokenizer = QwenTokenizer.from_path(ROOT / "model" / "qwen.tiktoken")
    task = MMLU(shots=5)
    docs = task.load(DataSpec("local", str(args.data)))
    by_subject: dict[str, list[list[int]]] = defaultdict(list)
    prompts = [task.prompt(d) for d in docs]
    for doc, ids in zip(docs, tokenizer.encode_batch(prompts)):
        by_subject[doc.subject].append(ids)

    keep = args.max_length - 1
    total = cut = uncut_tokens = uncut_saved = cut_tokens = cut_saved = 0
    cut_subjects: dict[str, int] = {}
    equal_offset_groups = 0
    for subject, rows in by_subject.items():
        shared = min(common_prefix(rows[0], r) for r in rows)  # header + shots (token-exact)
        uncut = [r for r in rows if len(r) <= args.max_length]
        long = [r for r in rows if len(r) > args.max_length]
        total += len(rows)
        uncut_tokens += sum(map(len, uncut))
        uncut_saved += max(0, len(uncut) - 1) * shared  # the shared part counted once
        if long:
            cut += len(long)
            cut_subjects[subject] = len(long)
            cut_tokens += len(long) * keep
            by_offset: dict[int, int] = defaultdict(int)
            for r in long:
                by_offset[len(r) - keep] += 1
            for offset, count in by_offset.items():
                if count > 1:
                    equal_offset_groups += 1
                    cut_saved += (count - 1) * max(0, shared - offset)
    print(f"MMLU 5-shot, {total} prompts, {len(by_subject)} subjects, max length {args.max_length}")
    print(f"uncut: {total - cut} prompts, {uncut_tokens:,} tokens; a shared prefix saves {uncut_saved:,} "
          f"({uncut_saved / max(uncut_tokens, 1):.0%})")
    print(f"cut:   {cut} prompts in {len(cut_subjects)} subjects "
          f"({', '.join(f'{s} {n}' for s, n in sorted(cut_subjects.items(), key=lambda x: -x[1])[:6])}, ...), "
          f"{cut_tokens:,} tokens")
    print(f"       sharing among cut prompts of equal offset (equal question lengths): {equal_offset_groups} groups, "
          f"{cut_saved:,} tokens ({cut_saved / max(cut_tokens, 1):.1%} of the cut prompts' tokens, "
          f"{cut_saved / max(uncut_tokens + cut_tokens, 1):.2%} of all)")


if __name__ == "__main__":
    main()
