"""Per-sample agreement between two runs of one task (e.g. fp32 and bf16 of one checkpoint).

    python benchmarks/compare_dtypes.py results/real-0.5b/runs/mmlu-float32 results/real-0.5b/runs/mmlu-bfloat16

Prints how many predictions agree, and for multiple-choice runs the first run's top-two
probability margin on every document whose prediction flips (a flip where that margin is small
is rounding; a flip at a large margin would be a bug), against the margins of all documents.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def samples(folder: Path) -> dict[str, dict]:
    from qwen_eval.run_files import read_samples_text, samples_file

    text = read_samples_text(samples_file(folder))
    lines = [line for line in text.split("\n") if line.strip()]  # not splitlines(): prompts hold U+2028
    return {s["doc_id"]: s for s in map(json.loads, lines)}


def margin(sample: dict) -> float | None:
    probs = sample.get("probs")
    if not probs or len(probs) < 2:
        return None
    top = sorted(probs, reverse=True)
    return top[0] - top[1]


def main(first: Path, second: Path) -> None:
    a, b = samples(first), samples(second)
    common = sorted(set(a) & set(b))
    same = [d for d in common if a[d]["prediction"] == b[d]["prediction"]]
    flips = [d for d in common if d not in same]
    print(f"{len(same)}/{len(common)} predictions agree ({first.name} vs {second.name}); "
          f"scores {sum(a[d]['score'] for d in common):.0f} vs {sum(b[d]['score'] for d in common):.0f}")
    margins = [m for m in (margin(a[d]) for d in common) if m is not None]
    if margins:
        print(f"{first.name} top-two margin over all documents: median {statistics.median(margins):.3f}, "
              f"10th percentile {sorted(margins)[len(margins) // 10]:.3f}")
        flip_margins = sorted((margin(a[d]), d) for d in flips)
        for m, d in flip_margins:
            print(f"  flip {d}: {a[d]['prediction']} -> {b[d]['prediction']}, margin {m:.4f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
