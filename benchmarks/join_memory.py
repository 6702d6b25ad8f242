"""Peak memory of a decode-batch join (KVCache.stacked) at the real 0.5B model's cache shape.

A running batch and a set of newcomers, each in its own cache, become one cache when the
newcomers join (model/generation.py, Scheduler._decode). This builds the two caches with the shape of
Qwen2.5-0.5B's (24 layers, 2 kv heads of 64, bf16), fills them, stacks them, and reports the
peak RSS above the two inputs, in a fresh process per implementation: this checkout's, and
`--old REV`'s (the file holding KVCache read with `git show`: model/attention/cache.py, or
model/attention.py before attention became a package).

    python benchmarks/join_memory.py --old 4f28e63           # 48 running rows + 64 newcomers
    python benchmarks/join_memory.py --running 8 --newcomers 64 --positions 1500
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, importlib.util, torch
spec = importlib.util.spec_from_file_location("join_attention", sys.argv[1])
module = importlib.util.module_from_spec(spec); sys.modules[spec.name] = module; spec.loader.exec_module(module)
running, newcomers, positions = map(int, sys.argv[2:5])
def filled(rows):
    cache = module.KVCache(24, rows, positions, 2, 64, dtype=torch.bfloat16, device=torch.device("cpu"))
    for t in cache.keys + cache.values:
        t.normal_()
    cache.advance(None, positions)
    return cache
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
a, b = filled(running), filled(newcomers)
before = peak_mb()
out = module.KVCache.stacked([a, b], 256)
del a, b
cache_mb = sum(t.numel() * t.element_size() for t in out.keys + out.values) / 2**20
print(json.dumps({"inputs_peak_mb": round(before), "peak_mb": round(peak_mb()), "stacked_cache_mb": round(cache_mb)}))
"""


def measure(cache_py: Path, args: argparse.Namespace) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(cache_py), str(args.running), str(args.newcomers),
                          str(args.positions)], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old", help="a git revision whose KVCache to compare with")
    p.add_argument("--running", type=int, default=48, help="rows of the running batch")
    p.add_argument("--newcomers", type=int, default=64, help="rows that join it")
    p.add_argument("--positions", type=int, default=1200, help="positions each row holds")
    args = p.parse_args()
    runs = {"this checkout": ROOT / "model" / "attention" / "cache.py"}
    with tempfile.TemporaryDirectory() as tmp:
        if args.old:
            old = Path(tmp) / "cache.py"
            for source in ("model/attention/cache.py", "model/attention.py"):
                shown = subprocess.run(["git", "show", f"{args.old}:{source}"], capture_output=True, text=True,
                                       cwd=ROOT)
                if shown.returncode == 0:
                    break
            shown.check_returncode()
            old.write_text(shown.stdout)
            runs = {args.old: old, **runs}
        print(f"{args.running} running rows + {args.newcomers} newcomers, {args.positions} positions each, "
              "24 layers x 2 kv heads x 64, bf16")
        for name, path in runs.items():
            r = measure(path, args)
            print(f"{name:>14}: peak {r['peak_mb']} MB, {r['peak_mb'] - r['inputs_peak_mb']} MB above the inputs' "
                  f"{r['inputs_peak_mb']} MB (the stacked cache is {r['stacked_cache_mb']} MB)")


if __name__ == "__main__":
    main()
