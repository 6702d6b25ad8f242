"""Where the engine's time goes on the real model's shape: torch profiler shares per operator.

Two workloads, each after one warm-up pass:
  mmlu   the first N questions of M MMLU subjects, 5-shot, scored as qwen-eval scores them
         (one Choice request each: a shared prefix per subject, then the question);
  gsm8k  the first N GSM8K problems, 8-shot, greedy, a fixed number of new tokens.

    python benchmarks/profile_engine.py --gguf $(python -m qwen_eval.tools.fixtures real-0.5b) --case mmlu
    python benchmarks/profile_engine.py --gguf ... --case gsm8k --n 16 --max-new-tokens 64 --dtype bfloat16

Prints the wall time, tokens/s, and the operators with the largest self CPU time.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def requests_for(case: str, n: int, subjects: int, max_new_tokens: int) -> list:
    from dataclasses import replace

    from qwen_eval.task import DataSpec

    if case == "mmlu":
        from qwen_eval.tasks.mmlu import MMLU

        task = MMLU(shots=5)
        docs = task.load(DataSpec("local", str(SHARED / "mmlu")), limit=n)
        chosen = list(dict.fromkeys(d.subject for d in docs))[:subjects]
        return [r for d in docs if d.subject in chosen for r in task.requests(d)]
    from qwen_eval.tasks.gsm8k import GSM8K

    task = GSM8K()
    docs = task.load(DataSpec("local", str(SHARED / "gsm8k")), limit=n)
    return [replace(r, max_new_tokens=max_new_tokens) for d in docs for r in task.requests(d)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", type=Path, required=True)
    p.add_argument("--case", choices=("mmlu", "gsm8k"), default="mmlu")
    p.add_argument("--n", type=int, default=5, help="MMLU: questions per subject; GSM8K: problems")
    p.add_argument("--subjects", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--packed-weights", default="auto", choices=("auto", "false"),
                   help="model.packed_weights: bf16 weights packed once for oneDNN (model/linear.py), or dense")
    args = p.parse_args()

    from qwen_eval.backends.qwen import QwenBackend

    backend = QwenBackend.from_config({"name": "qwen", "path": str(args.gguf), "device": "cpu", "dtype": args.dtype,
                                       "packed_weights": args.packed_weights != "false"})
    requests = requests_for(args.case, args.n, args.subjects, args.max_new_tokens)
    answer = backend.choice if args.case == "mmlu" else backend.generate
    batches = [requests[i:i + args.batch_size] for i in range(0, len(requests), args.batch_size)]
    answer(batches[0][:2])  # warm-up: kernels, thread pool
    start_tokens = backend.tokens_processed
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for batch in batches:
            answer(batch)
        wall = time.perf_counter() - start
    tokens = backend.tokens_processed - start_tokens
    print(f"{args.case}, {len(requests)} requests, {args.dtype}, {torch.get_num_threads()} threads: {wall:.1f} s, "
          f"{tokens} tokens, {tokens / wall:.0f} tok/s (profiler overhead included)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
