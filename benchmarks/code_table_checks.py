"""Why a code cell is where it is: checks on a finished HumanEval-instruct or MBPP+ run folder.

    python benchmarks/code_table_checks.py RUN_DIR [--hf N] [--seed S]

1. Raw against sanitized: how many samples pass each way, and which tasks flip (the sanitizer
   rescues a reply whose prose or test calls broke it, or drops something the test needed).
2. Failures by reason: the first line of each failed sample's reason, counted.
3. `--hf N`: N of the run's tasks (a seeded sample) generated again by transformers' `generate`
   from the same checkpoint file (its own GGUF loader and dequantization, the run's dtype), from
   the exact prompt the run recorded, greedy, with the same stops and budget: the texts should be
   identical; any that differ are listed with the first character where they part.

Everything is read from the run's results.json and samples.jsonl; the checkpoint is the file
results.json names. Prints a Markdown report.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from qwen_eval.run_files import read_samples_text, samples_file  # noqa: E402


def load(run: Path) -> tuple[dict, list[dict]]:
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    text = read_samples_text(samples_file(run))
    samples = [json.loads(line) for line in text.split("\n") if line]
    return results, samples


def verdicts(sample: dict) -> dict[str, bool]:
    """pass/fail of a sample under each metric its task reports ("pass", "raw_pass", and MBPP+'s
    "base_pass", "raw_base_pass"), from its per-metric counts."""
    return {key.removeprefix("correct_"): bool(value) for key, value in sample.items()
            if key.startswith("correct_")} | {"pass": bool(sample["correct"])}


def raw_vs_sanitized(samples: list[dict]) -> list[str]:
    lines = ["## Raw and sanitized", ""]
    pairs = [("pass", "raw_pass"), ("base_pass", "raw_base_pass")]
    for sanitized, raw in pairs:
        have = [s for s in samples if sanitized in verdicts(s) and raw in verdicts(s)]
        if not have:
            continue
        v = [verdicts(s) for s in have]
        rescued = [s["doc_id"] for s, x in zip(have, v) if x[sanitized] and not x[raw]]
        lost = [s["doc_id"] for s, x in zip(have, v) if x[raw] and not x[sanitized]]
        lines += [f"- `{sanitized}`: sanitized {sum(x[sanitized] for x in v)}/{len(v)}, raw {sum(x[raw] for x in v)}/{len(v)}; "
                  f"passing only sanitized: {len(rescued)} {rescued[:20]}; only raw: {len(lost)} {lost[:20]}"]
    return lines + [""]


def failure_reasons(samples: list[dict]) -> list[str]:
    counts = collections.Counter()
    for s in samples:
        if not s["correct"]:
            reason = s.get("reason") or s.get("prediction") or "?"
            if isinstance(reason, dict):  # MBPP+: per test split; the first that failed
                reason = next((r for r in reason.values() if r), "?")
            counts[str(reason).strip().splitlines()[-1][:90] if str(reason).strip() else "?"] += 1
    lines = ["## Failures by reason (sanitized, the headline's)", "", "| reason | samples |", "|---|---|"]
    lines += [f"| {reason.replace('|', '/')} | {n} |" for reason, n in counts.most_common(15)]
    return lines + [""]


def hf_regeneration(results: dict, samples: list[dict], n: int, seed: int) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qwen_eval.requests import cut_at_stop

    path = Path(results["model"]["path"])
    dtype = getattr(torch, results["model"]["dtype"])
    options = results["task_config"]["options"]
    budget = options.get("instruct_max_new_tokens") or options.get("max_new_tokens")
    cap = options.get("instruct_max_length", options.get("max_length"))
    stops = tuple(results["config"]["task"].get("stop_strings") or ())
    from qwen_eval.tasks.qwen_coder_instruct import INSTRUCT_STOPS

    stops = INSTRUCT_STOPS + ("<|im_end|>",) if not stops else stops
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype).eval()
    chosen = random.Random(seed).sample(samples, min(n, len(samples)))
    same, differ, started = 0, [], time.perf_counter()
    for s in chosen:
        ids = torch.tensor([tokenizer(s["prompt"], add_special_tokens=False)["input_ids"]])
        room = budget if cap is None else max(0, min(budget, cap - ids.shape[1]))
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=room, do_sample=False,
                                 eos_token_id=[151643, 151645], pad_token_id=151643, stop_strings=list(stops),
                                 tokenizer=tokenizer)
        new = [t for t in out[0, ids.shape[1]:].tolist() if t not in (151643, 151645)]
        text = cut_at_stop(tokenizer.decode(new, clean_up_tokenization_spaces=False), stops)
        if text == s["response"]:
            same += 1
        else:
            at = next((i for i, (a, b) in enumerate(zip(text, s["response"])) if a != b), min(len(text), len(s["response"])))
            differ.append((s["doc_id"], at, len(s["response"]), len(text)))
    lines = ["## transformers generate on the same file", "",
             f"{same}/{len(chosen)} texts identical to the run's ({results['model']['dtype']}, seed {seed}, "
             f"{time.perf_counter() - started:.0f} s)."]
    lines += [f"- {doc}: differ from character {at} (run {a} chars, transformers {b})" for doc, at, a, b in differ]
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--hf", type=int, default=0, help="regenerate this many tasks with transformers")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    results, samples = load(args.run)
    head = results["headline"]
    lines = [f"# {args.run.name}: {results['task']} {head['metric']} {100 * head['value']:.1f} on {len(samples)} tasks", ""]
    lines += raw_vs_sanitized(samples) + failure_reasons(samples)
    if args.hf:
        lines += hf_regeneration(results, samples, args.hf, args.seed)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
