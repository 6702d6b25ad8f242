"""Decoding on equal work: the bundled engine and vLLM each generate exactly N tokens for the same
GSM8K prompts, no stop string, no eos, so both run the same number of steps with the same rows.

    python benchmarks/decode_steps.py [--gguf PATH] [--data ../shared/data] [--n 16] [--new-tokens 256]
                                      [--dtypes float32,bfloat16] [--engines bundled,vllm]

A task run compares engines on answers that can differ (bf16 rounding sends a row into a loop in
one engine and not the other, and steps then differ); here the work is fixed. Each engine runs in
a process of its own (vLLM needs a fresh one): the prompts are prefilled and decoded once as a
warm-up of 2 tokens, then timed. Printed: seconds, ms per decode step ((time) / N, prefill
included), tokens/s, and the time a step needs at the machine's read rate for the weights
(benchmarks/memory_bandwidth.py) for comparison. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def prompts(data: Path, n: int) -> list[str]:
    from qwen_eval.task import DataSpec
    from qwen_eval.tasks.gsm8k import GSM8K

    task = GSM8K(shots=8)
    docs = task.load(DataSpec("local", str(data / "gsm8k")), n)[:n]
    return [task.prompt(d) for d in docs]


def run_bundled(gguf: str, dtype: str, texts: list[str], new_tokens: int, packed: bool = True) -> float:
    from qwen_eval.backends import build
    from qwen_eval.requests import Generate

    backend = build({"backend": "qwen", "name": "qwen", "path": gguf, "dtype": dtype, "device": "cpu",
                     "stop_token_ids": [], "packed_weights": packed})
    backend.generate([Generate(t, max_new_tokens=2) for t in texts])
    start = time.perf_counter()
    out = backend.generate([Generate(t, max_new_tokens=new_tokens) for t in texts])
    seconds = time.perf_counter() - start
    assert all(len(backend.engine.tokenizer.encode(r.texts[0])) >= new_tokens - 8 for r in out)
    return seconds


def run_vllm(gguf: str, dtype: str, texts: list[str], new_tokens: int) -> float:
    from vllm import SamplingParams

    from qwen_eval.backends import build

    backend = build({"backend": "vllm", "path": gguf, "dtype": dtype, "device": "cpu", "kv_cache_gib": 4,
                     "max_length": 4096})
    ids = [{"prompt_token_ids": backend.tokenizer.encode(t)} for t in texts]
    backend.llm.generate(ids, SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True), use_tqdm=False)
    start = time.perf_counter()
    out = backend.llm.generate(ids, SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True),
                               use_tqdm=False)
    seconds = time.perf_counter() - start
    assert all(len(o.outputs[0].token_ids) == new_tokens for o in out)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default=None)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--engines", default="bundled,vllm", help="bundled, bundled-dense, vllm")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # engine,dtype: the child process
    args = parser.parse_args()
    if args.gguf is None:
        from qwen_eval.tools import fixtures

        args.gguf = str(fixtures.cached_path("real-0.5b"))
    if args.one:
        engine, dtype = args.one.split(",")
        texts = prompts(args.data, args.n)
        if engine == "vllm":
            seconds = run_vllm(args.gguf, dtype, texts, args.new_tokens)
        else:  # bundled, or bundled-dense: bf16 weights not packed (model.packed_weights=false)
            seconds = run_bundled(args.gguf, dtype, texts, args.new_tokens, packed=engine == "bundled")
        print(json.dumps({"seconds": seconds}))
        return 0
    print(f"{args.n} GSM8K 8-shot prompts, {args.new_tokens} new tokens each, greedy, no stops")
    print("| dtype | engine | seconds | ms a step | tokens/s |")
    print("|---|---|---|---|---|")
    for dtype in args.dtypes.split(","):
        for engine in args.engines.split(","):
            done = subprocess.run([sys.executable, __file__, "--gguf", args.gguf, "--data", str(args.data), "--n",
                                   str(args.n), "--new-tokens", str(args.new_tokens), "--one", f"{engine},{dtype}"],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{engine} {dtype} failed:\n{done.stderr[-3000:]}")
            line = next(x for x in reversed(done.stdout.splitlines()) if x.startswith('{"seconds"'))
            seconds = json.loads(line)["seconds"]
            print(f"| {dtype} | {engine} | {seconds:.1f} | {seconds / args.new_tokens * 1e3:.0f} | "
                  f"{args.n * args.new_tokens / seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
