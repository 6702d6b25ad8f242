"""Opening a GGUF: gguf's GGUFReader against qwen-eval's header reader (model/gguf_file.py), and
the whole backend build (header, tokenizer, dequantized weights) on top.

    python benchmarks/gguf_open.py                          # the real model (fixtures real-0.5b)
    python benchmarks/gguf_open.py --gguf FILE --runs 3

Each measurement is a fresh process that imports torch, qwen_eval and gguf first (the baseline),
then does one thing and reports its seconds, its peak RSS above the baseline (VmHWM) and its RSS
afterwards:
  * gguf-reader   GGUFReader(path) and the tokenizer arrays copied out of it as lists (what
                  open_gguf did before it had a reader of its own)
  * header        qwen_eval.model.gguf.open_gguf(path): metadata, vocabulary, tensor table
  * backend-*     QwenBackend.from_config for the file in fp32 / bf16 (what a run does first)
Prints the median of --runs per case; run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
from pathlib import Path

def memory():
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) / 1024
    return out

import torch, gguf  # noqa: F401
from qwen_eval.backends.qwen import QwenBackend
from qwen_eval.model.gguf import open_gguf
case, path = sys.argv[1], sys.argv[2]
base = memory()["VmRSS"]
start = time.perf_counter()
if case == "gguf-reader":
    reader = gguf.GGUFReader(path)
    kept = {k: reader.fields[k].contents() for k in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                                     "tokenizer.ggml.token_type") if k in reader.fields}
elif case == "header":
    kept = open_gguf(path)
else:
    kept = QwenBackend.from_config({"name": "bench", "path": path, "device": "cpu",
                                    "dtype": case.removeprefix("backend-")})
seconds = time.perf_counter() - start
after = memory()
print(json.dumps({"seconds": seconds, "peak_mib": after["VmHWM"] - base, "after_mib": after["VmRSS"] - base,
                  "baseline_mib": base}))
"""

CASES = ("gguf-reader", "header", "backend-float32", "backend-bfloat16")


def measure(case: str, path: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, case, path], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{case}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", help="the file (default: the fetched real model)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    path = args.gguf
    if path is None:
        from qwen_eval.tools import fixtures

        path = str(fixtures.cached_path("real-0.5b"))
    print(f"{path}\n| case | seconds | peak RSS above the imports | RSS after |\n|---|---|---|---|")
    for case in args.cases.split(","):
        runs = [measure(case, path) for _ in range(args.runs)]
        med = {k: statistics.median(r[k] for r in runs) for k in ("seconds", "peak_mib", "after_mib")}
        spread = f"{min(r['seconds'] for r in runs):.2f}-{max(r['seconds'] for r in runs):.2f}"
        print(f"| {case} | {med['seconds']:.2f} ({spread}) | {med['peak_mib']:.0f} MiB | {med['after_mib']:.0f} MiB |",
              flush=True)


if __name__ == "__main__":
    main()
