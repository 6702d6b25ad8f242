"""Start-up: seconds from a fresh `qwen-eval` process to its first request reaching the backend.

    python benchmarks/startup.py                       # model=tiny, mmlu and gsm8k, 5 runs each
    python benchmarks/startup.py --tasks mmlu --runs 3 -- model=tiny shots=0

Each run is a new interpreter that notes the time before any import, wraps
`qwen_eval.runner.answer_requests` to note when it is first called (the data is loaded, the model
built, the prompts made), then runs the CLI's main() with the given options and
`data.source=sample`, `cache_dir=null` (no answer cache, so every request is answered). The
interpreter's own start (`python -c pass`) is measured apart and added. Prints the median and
the range per task; run it alone on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

DRIVER = r"""
import time
t0 = time.perf_counter()
import sys
from qwen_eval import runner
answer = runner.answer_requests
def first_call(*args, **kwargs):
    print(f"FIRST_REQUEST {time.perf_counter() - t0:.4f}", file=sys.stderr, flush=True)
    runner.answer_requests = answer
    return answer(*args, **kwargs)
runner.answer_requests = first_call
from qwen_eval.cli import main
sys.argv = ["qwen-eval", *sys.argv[1:]]
main()
"""


def interpreter_start(runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def first_request(task: str, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([sys.executable, "-c", DRIVER, f"task={task}", "limit=1", "data.source=sample",
                               "cache_dir=null", "progress=false", f"output_dir={out}", *extra],
                              capture_output=True, text=True)
    for line in proc.stderr.splitlines():
        if line.startswith("FIRST_REQUEST "):
            return float(line.split()[1])
    raise SystemExit(f"task={task}: no request reached the backend (exit {proc.returncode}):\n{proc.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="mmlu,gsm8k")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("options", nargs="*", help="more qwen-eval options (default: model=tiny)")
    args = parser.parse_args()
    options = args.options or ["model=tiny"]
    base = interpreter_start(args.runs)
    print(f"interpreter start: {base:.3f} s (median of {args.runs})")
    for task in args.tasks.split(","):
        first_request(task, options)  # warm the page cache and Hydra's
        times = [base + first_request(task, options) for _ in range(args.runs)]
        print(f"{task} {' '.join(options)}: first request after {statistics.median(times):.2f} s "
              f"(median of {args.runs}; {min(times):.2f}-{max(times):.2f})")


if __name__ == "__main__":
    main()
