"""This CPU's matmul roofline at the real model's shapes, and what it allows in tokens/s.

The body of Qwen2.5-Coder-0.5B (24 layers, hidden 896, 14 query / 2 KV heads of 64, MLP 4864) is
seven matmuls a layer; at prefill, with M tokens in a step, each is an (M x K) @ (K x N) product.
The script times each of those products through torch (the kernels the engine calls) at M = 512
(a prefill chunk), in fp32 and bf16, and reports GFLOP/s per shape and the roofline:
tokens/s = FLOP/s sustained over the body's shapes / FLOP a token (2 * weights of the body, plus
attention's q.k and p.v at the given context length; the lm_head runs at the scored positions
only, so it is left out, as the engine leaves it out).

A second row per dtype times the same products the way a forward meets them: each of the 24
layers with its own weights, one after another, so the weights stream from memory instead of
sitting in cache (`layered`). That is the rate a forward of M tokens can reach; the first row is
the hot-cache peak the issue's 85% target was set against.

    python benchmarks/roofline.py [--tokens 512] [--context 600] [--threads N]

Run it alone on the machine, in the same sitting as the engine benchmark it is compared with
(the same code moves by about 10% between sittings).
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

# (name, K, N) of one layer's products at the real model's shape
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, MLP, LAYERS = 896, 14, 2, 64, 4864, 24
SHAPES = [("qkv", HIDDEN, (HEADS + 2 * KV_HEADS) * HEAD_DIM), ("o", HEADS * HEAD_DIM, HIDDEN),
          ("gate+up", HIDDEN, 2 * MLP), ("down", MLP, HIDDEN)]


def calls_per_second(fn: Callable[[], object], seconds: float, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        count += 1
    return count / elapsed


def gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 1.0) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    return 2 * m * k * n * calls_per_second(lambda: a @ b, seconds, warmup=3) / 1e9


def layered_gflops(m: int, dtype: torch.dtype, seconds: float = 3.0) -> float:
    """The body's products over LAYERS layers of distinct weights, as one forward runs them."""
    weights = [[torch.randn(k, n, dtype=dtype) for _, k, n in SHAPES] for _ in range(LAYERS)]
    inputs = {k: torch.randn(m, k, dtype=dtype) for _, k, _ in SHAPES}

    def forward() -> None:
        for layer in weights:
            for (_, k, _), w in zip(SHAPES, layer):
                inputs[k] @ w

    return 2 * m * LAYERS * sum(k * n for _, k, n in SHAPES) * calls_per_second(forward, seconds) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=512, help="M: tokens in one prefill step")
    p.add_argument("--context", type=int, default=600, help="mean context length a token attends over")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    body_flops = 2 * LAYERS * sum(k * n for _, k, n in SHAPES)
    attention_flops = 2 * 2 * LAYERS * HEADS * HEAD_DIM * args.context  # q.k and p.v, causal mean context
    per_token = body_flops + attention_flops
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, M = {args.tokens}")
    print(f"body: {body_flops / 1e9:.3f} GFLOP a token in matmuls + {attention_flops / 1e9:.3f} in attention "
          f"(context {args.context}) = {per_token / 1e9:.3f}")
    print("| dtype | " + " | ".join(f"{name} {k}x{n}" for name, k, n in SHAPES) + " | body (time-weighted) | roofline tok/s |")
    print("|---|" + "---|" * (len(SHAPES) + 2))
    for dtype in (torch.float32, torch.bfloat16):
        rates = [gflops(args.tokens, k, n, dtype) for _, k, n in SHAPES]
        # the body's sustained rate: total FLOP over the sum of each product's time
        seconds = sum(2 * k * n / (r * 1e9) for (_, k, n), r in zip(SHAPES, rates))
        sustained = sum(2 * k * n for _, k, n in SHAPES) / seconds / 1e9
        roofline = sustained * 1e9 / per_token
        print(f"| {str(dtype).removeprefix('torch.')} | " + " | ".join(f"{r:.0f}" for r in rates)
              + f" | {sustained:.0f} GFLOP/s | {roofline:.0f} |")
        layered = layered_gflops(args.tokens, dtype)
        print(f"| {str(dtype).removeprefix('torch.')}, layered | " + " | ".join("" for _ in SHAPES)
              + f" | {layered:.0f} GFLOP/s | {layered * 1e9 / per_token:.0f} |")


if __name__ == "__main__":
    main()
