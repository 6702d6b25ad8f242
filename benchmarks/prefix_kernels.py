"""The cascade's prefix part on CPU in bf16: SDPA's flash kernel against the same attention as two
matmuls with an fp32 softmax (a bf16 profile gave the flash kernel 15% of the engine's time for
7% of its FLOPs, so matmuls, twice as fast in bf16, looked like a lever).

    python benchmarks/prefix_kernels.py                   # MMLU's shape on the real model
    python benchmarks/prefix_kernels.py --queries 4480 --keys 1000

The shape: every row's queries folded into one sequence per KV head (2 KV heads x 7 query heads
x 16 questions x 80 tokens = 8,960 queries) against a subject's ~500 shared prefix keys, head
dim 64, as SdpaKernel.cascade calls it. Each variant returns (out, lse); its error is against
the fp32 flash kernel on the same (bf16-rounded) inputs. Prints the median of --repeats.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def flash(q, k, v):
    out, lse = FLASH(q, k, v, 0.0, False)[:2]
    return out, lse


def matmuls(q, k, v, *, scores_fp32: bool):
    """scores = q k^T (fp32 inputs, or bf16 rounded to bf16), fp32 softmax, bf16 p @ v."""
    scores = (q.float() @ k.float().transpose(-1, -2)) if scores_fp32 else (q @ k.transpose(-1, -2)).float()
    scores = scores * (1 / math.sqrt(q.shape[-1]))
    m = scores.amax(-1, keepdim=True)
    p = torch.exp(scores - m)
    total = p.sum(-1, keepdim=True)
    return (p.to(v.dtype) @ v) / total, (m + total.log())[..., 0]


VARIANTS = {"flash (SDPA's CPU kernel)": flash,
            "matmuls, fp32 scores": lambda q, k, v: matmuls(q, k, v, scores_fp32=True),
            "matmuls, bf16 scores": lambda q, k, v: matmuls(q, k, v, scores_fp32=False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--queries", type=int, default=8960)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, args.kv_heads, n, args.head_dim, generator=gen).bfloat16()
               for n in (args.queries, args.keys, args.keys))
    with torch.inference_mode():
        ref_out, ref_lse = flash(q.float(), k.float(), v.float())
        print(f"{args.kv_heads} KV heads x {args.queries} queries x {args.keys} keys, head dim {args.head_dim}, bf16, "
              f"{torch.get_num_threads()} threads\n| variant | ms | max abs error of out | of lse |\n|---|---|---|---|")
        for name, fn in VARIANTS.items():
            fn(q, k, v)  # warm-up
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                out, lse = fn(q, k, v)
                times.append(time.perf_counter() - start)
            print(f"| {name} | {statistics.median(times) * 1e3:.1f} | {(out.float() - ref_out).abs().max():.1e} | "
                  f"{(lse.float() - ref_lse).abs().max():.1e} |")


if __name__ == "__main__":
    main()
