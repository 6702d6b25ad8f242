"""Does SDPA's bf16 CPU flash kernel keep growing with the number of keys it meets?

The cascade's own-key part (model/attention/sdpa.py) has as many keys as its batch is wide. This calls
the kernel as that part does, queries padded as the engine pads them, at widths 1-2,048 in a
scrambled order, and prints the growth of RSS (after a heap trim) every 200 calls: with the keys
as they are, and padded with zero keys to whole blocks under -inf mask columns, as
`cpu_flash_key_columns` does. One mode a process, since the cache lives as long as the process.

    python benchmarks/flash_key_cache.py --keys plain
    python benchmarks/flash_key_cache.py --keys padded --block 32
"""

from __future__ import annotations

import argparse
import time

import torch

from qwen_eval.model.attention import cpu_flash_key_columns, cpu_flash_query_rows
from qwen_eval.model.host_memory import release_free_memory

KV_HEADS, HEAD_DIM, GROUP = 2, 64, 7  # Qwen2.5-0.5B: 14 query heads over 2 kv heads


def rss_mib() -> float:
    release_free_memory()  # the heap's free pages back first: only what is held counts
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2 ** 20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keys", choices=("plain", "padded"), required=True)
    p.add_argument("--block", type=int, default=32, help="keys per block when padded")
    p.add_argument("--calls", type=int, default=1200)
    args = p.parse_args()
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    dtype = torch.bfloat16
    warm = torch.randn(1, KV_HEADS, 64, HEAD_DIM, dtype=dtype)
    op(warm, warm, warm, 0.0, False)
    start_rss, start = rss_mib(), time.perf_counter()
    for i in range(args.calls):
        width = 1 + (i * 7919) % 2048  # own keys = the batch's width, every width in a scrambled order
        queries = cpu_flash_query_rows(min(width, 64) * GROUP)  # the engine pads the queries too
        keys = cpu_flash_key_columns(width, args.block) if args.keys == "padded" else width
        q = torch.randn(1, KV_HEADS, queries, HEAD_DIM, dtype=dtype)
        k = torch.randn(1, KV_HEADS, keys, HEAD_DIM, dtype=dtype)
        mask = torch.zeros(1, 1, queries, keys, dtype=dtype)
        mask[..., width:] = float("-inf")
        op(q, k, k, 0.0, False, attn_mask=mask)
        if i % 200 == 199:
            print(f"{args.keys} keys{f' (blocks of {args.block})' if args.keys == 'padded' else ''}: "
                  f"{i + 1} calls, RSS +{rss_mib() - start_rss:.0f} MiB, {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    with torch.inference_mode():
        main()
