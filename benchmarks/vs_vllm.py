"""The bundled engine and vLLM side by side on the same work, one process each, in one run.

    python benchmarks/vs_vllm.py [--gguf PATH] [--data ../shared/data] [--cases mmlu-114,gsm8k-16]
                                 [--dtypes float32,bfloat16] [--workdir /tmp/vs-vllm] [--kv-cache-gib 4]

Needs vLLM in this environment (docs/vllm.md). Each case runs the real 0.5B GGUF through
`qwen-eval ... model=qwen` and then `model=vllm` (the same file, exported once to an HF folder for
vLLM; the export is made before timing starts), each with a fresh answer cache. Printed per case
and dtype: engine time (results.json `answer_seconds`: answering the requests, load excluded),
load time (`load_seconds`: weights, engine start, vLLM's compilation), whole-process wall time,
peak memory of the process tree (vLLM's engine core is a child process), vLLM/bundled ratios, and
whether both engines' predictions (and GSM8K's generated texts) are the same sample for sample.
Run it alone on the machine: on two cores anything else running skews the timings.

Cases: mmlu-114 (MMLU 5-shot, 2 questions a subject), gsm8k-16 (GSM8K 8-shot, first 16 problems,
greedy, up to 512 new tokens), gsm8k-full (all 1,319).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from qwen_eval.run_files import read_samples_text, samples_file

CASES = {
    "mmlu-114": (["task=mmlu", "shots=5", "limit=2"], "mmlu"),
    "gsm8k-16": (["task=gsm8k", "shots=8", "limit=16"], "gsm8k"),
    "gsm8k-full": (["task=gsm8k", "shots=8"], "gsm8k"),
}
# bundled-dense: the bundled engine with its bf16 weights left dense (model.packed_weights=false),
# the engine before model/linear.py; the same as `bundled` in fp32
ENGINES = {"bundled": ["model=qwen"], "bundled-dense": ["model=qwen", "model.packed_weights=false"],
           "vllm": ["model=vllm"]}


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (from /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


def run(argv: list[str]) -> tuple[float, int]:
    """Run argv; its wall seconds and the peak memory of its process tree."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_bytes(proc.pid))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, peak[0]


def samples(out: Path) -> list[dict]:
    return [json.loads(line) for line in read_samples_text(samples_file(out)).split("\n") if line]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default=None, help="default: the real-0.5b fixture")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--cases", default="mmlu-114,gsm8k-16")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--engines", default="bundled,vllm")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vs-vllm"))
    parser.add_argument("--kv-cache-gib", type=int, default=4)
    parser.add_argument("--command", default=shutil.which("qwen-eval") or "qwen-eval")
    args = parser.parse_args()
    if args.gguf is None:
        from qwen_eval.tools import fixtures

        args.gguf = str(fixtures.cached_path("real-0.5b"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    import torch

    from qwen_eval.model.hf_export import hf_folder_for

    for dtype in args.dtypes.split(","):  # exported now, so no timed run pays for it
        hf_folder_for(args.gguf, getattr(torch, dtype))

    rows = []
    for case in args.cases.split(","):
        task_args, folder = CASES[case]
        for dtype in args.dtypes.split(","):
            measured = {}
            for engine in args.engines.split(","):
                out = args.workdir / f"{case}-{dtype}-{engine}"
                cache = args.workdir / f"{case}-{dtype}-{engine}-cache"
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(cache, ignore_errors=True)
                extra = [f"model.kv_cache_gib={args.kv_cache_gib}"] if engine == "vllm" else []
                argv = [args.command, *task_args, *ENGINES[engine], f"model.path={args.gguf}", f"model.dtype={dtype}",
                        *extra, f"data.path={args.data / folder}", f"cache_dir={cache}", "progress=false",
                        f"output_dir={out}"]
                wall, peak = run(argv)
                timing = json.loads((out / "results.json").read_text(encoding="utf-8"))["timing"]
                measured[engine] = {"engine": timing["answer_seconds"], "load": timing.get("load_seconds"),
                                    "wall": wall, "peak_gib": peak / 2**30, "samples": samples(out)}
                m = measured[engine]
                print(f"{case:11s} {dtype:8s} {engine:13s} engine {m['engine']:8.1f} s  load {m['load'] or 0:6.1f} s  "
                      f"wall {wall:8.1f} s  peak {m['peak_gib']:5.1f} GiB", flush=True)
            if "bundled" in measured and "vllm" in measured:
                a, b = measured["bundled"], measured["vllm"]
                same_pred = sum(x["prediction"] == y["prediction"] for x, y in zip(a["samples"], b["samples"]))
                same_text = sum(x.get("response") == y.get("response") for x, y in zip(a["samples"], b["samples"]))
                rows.append((case, dtype, a, b, same_pred, same_text))
                print(f"{'':11s} {dtype:8s} vLLM/bundled engine time {b['engine'] / a['engine']:.2f}, whole process "
                      f"{b['wall'] / a['wall']:.2f}; same predictions {same_pred}/{len(a['samples'])}, same texts "
                      f"{same_text}/{len(a['samples'])}", flush=True)

    print("\n| work | dtype | bundled engine | vLLM engine | bundled ÷ vLLM engine time | bundled whole | vLLM whole "
          "(load) | peak bundled / vLLM | same predictions |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case, dtype, a, b, same_pred, same_text in rows:
        print(f"| {case} | {dtype} | {a['engine']:.1f} s | {b['engine']:.1f} s | {a['engine'] / b['engine']:.2f} | "
              f"{a['wall']:.1f} s | {b['wall']:.1f} s ({b['load']:.0f} s) | {a['peak_gib']:.1f} / {b['peak_gib']:.1f} GiB | "
              f"{same_pred}/{len(a['samples'])} (texts {same_text}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
