"""This machine's memory bandwidth as torch sees it: the floor under a decode step, which reads
every weight once.

    python benchmarks/memory_bandwidth.py [--gib 1] [--reps 10]

Read: `x.sum()` over a tensor far larger than the caches (bytes read / time). Copy: `y.copy_(x)`
(bytes read + written / time). Both with torch's threads (all cores by default). Prints GB/s and
the decode-step floor this gives for the real 0.5B model's weights in fp32 and bf16 (all matmul
weights and lm_head: 494 M parameters; the embedding is gathered, not read whole). Run it alone.
"""

from __future__ import annotations

import argparse
import time

import torch

# Qwen2.5-Coder-0.5B: 24 layers of qkv (896 x 1,152), out (896 x 896), gate, up, down (896 x 4,864),
# and the untied lm_head (151,936 x 896): 357.8 M + 136.1 M
MATMUL_PARAMETERS = 24 * (896 * 1152 + 896 * 896 + 3 * 896 * 4864) + 151936 * 896


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    n = int(args.gib * 2**30 / 4)
    x = torch.ones(n, dtype=torch.float32)
    y = torch.empty_like(x)
    x.sum(), y.copy_(x)  # pages in
    start = time.perf_counter()
    for _ in range(args.reps):
        x.sum()
    read = n * 4 * args.reps / (time.perf_counter() - start) / 1e9
    start = time.perf_counter()
    for _ in range(args.reps):
        y.copy_(x)
    copy = 2 * n * 4 * args.reps / (time.perf_counter() - start) / 1e9
    print(f"threads {torch.get_num_threads()}: read {read:.1f} GB/s, copy {copy:.1f} GB/s (read + write)")
    for name, size in (("fp32", 4), ("bf16", 2)):
        gb = MATMUL_PARAMETERS * size / 1e9
        print(f"0.5B decode step, {name}: {gb:.2f} GB of weights -> at least {gb / read * 1e3:.0f} ms a step at the read rate")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
