"""Two installs of qwen-eval on the same cases, alternating, in one run: a refactor's speed check.

    python benchmarks/before_after.py --before /venv-old/bin/qwen-eval [--after qwen-eval] \
        [--data ../shared/data] [--repeats 1] [--workdir /tmp/before-after]

Each case (MMLU 5-shot at 2 questions a subject, 114 questions; GSM8K 8-shot, 16 problems; each in
fp32 and bf16) runs through the real 0.5B GGUF with a fresh answer cache, the `before` command
first and then `after`, so that drift of the machine falls on both alike. Printed per case: each
side's engine time (results.json `answer_seconds`) and whole-process wall time, the ratio, and
whether the two runs' predictions are the same sample for sample. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from qwen_eval.run_files import read_samples_text, samples_file

CASES = {
    "mmlu-114": ["task=mmlu", "shots=5", "limit=2"],
    "gsm8k-16": ["task=gsm8k", "shots=8", "limit=16"],
}
DATA_FOLDER = {"mmlu-114": "mmlu", "gsm8k-16": "gsm8k"}


def predictions(run: Path) -> list[tuple[str, str]]:
    text = read_samples_text(samples_file(run))
    return [(r["doc_id"], json.dumps(r["prediction"])) for r in map(json.loads, filter(None, text.split("\n")))]


def run_case(command: str, case: str, dtype: str, gguf: str, data: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cache = out.with_name(out.name + "-cache")
    shutil.rmtree(cache, ignore_errors=True)
    argv = [command, *CASES[case], "model=qwen", f"model.path={gguf}", f"model.dtype={dtype}",
            f"data.path={data / DATA_FOLDER[case]}", f"cache_dir={cache}", "progress=false", f"output_dir={out}"]
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    timing = json.loads((out / "results.json").read_text(encoding="utf-8"))["timing"]
    return {"engine": timing["answer_seconds"], "wall": wall, "predictions": predictions(out)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the qwen-eval command of the old install")
    parser.add_argument("--after", default="qwen-eval", help="the qwen-eval command of the new install")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/before-after"))
    args = parser.parse_args()
    gguf = subprocess.run([sys.executable, "-m", "qwen_eval.tools.fixtures", "real-0.5b"], check=True,
                          capture_output=True, text=True).stdout.strip()
    print("| case | dtype | before engine (s) | after engine (s) | after/before | before wall (s) | after wall (s) "
          "| same predictions |")
    print("|---|---|---|---|---|---|---|---|")
    for case in CASES:
        for dtype in ("float32", "bfloat16"):
            sides = {"before": [], "after": []}
            for repeat in range(args.repeats):
                for side, command in (("before", args.before), ("after", args.after)):
                    out = args.workdir / f"{case}-{dtype}-{side}-{repeat}"
                    sides[side].append(run_case(command, case, dtype, gguf, args.data, out))
            best = {side: min(runs, key=lambda r: r["engine"]) for side, runs in sides.items()}
            same = all(b["predictions"] == a["predictions"] for b, a in zip(sides["before"], sides["after"]))
            print(f"| {case} | {dtype} | {best['before']['engine']:.1f} | {best['after']['engine']:.1f} | "
                  f"{best['after']['engine'] / best['before']['engine']:.2f} | {best['before']['wall']:.1f} | "
                  f"{best['after']['wall']:.1f} | {'yes' if same else 'NO'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
