"""Shapes for torch's CPU flash-attention kernel, so its cache of compiled kernels stays bounded.

In bf16 and fp16, `_scaled_dot_product_flash_attention_for_cpu` runs brgemm kernels compiled for
each (query block, key block) shape it meets and keeps them in a cache that torch never trims. A
scoring run meets a new query count and a new own-key count at nearly every batch, so that cache
grew by hundreds of MB over a full bf16 MMLU run. Two paddings bound the shapes:

  * queries padded with zero rows to whole query blocks of the kernel, their rows cut off after
    (`flash_attention`, `cpu_flash_query_rows`): the results are bitwise the unpadded call's;
  * the cascade's own keys padded with zero keys to whole blocks of 32 under -inf mask columns
    (`cpu_flash_key_columns`, applied by the sdpa kernel's cascade): the padded keys weigh 0,
    but the kernel's sums then run over other lengths, so bf16 results move within rounding.

fp32 runs plain gemm calls with no such cache and is never padded. The figures behind both rules
(memory growth and speed with and without them, the block sizes tried) are in docs/model.md,
"CPU kernels: bounded caches, padding and row blocks".
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

# bf16 and fp16 run SDPA's CPU flash kernel through brgemm kernels, compiled per block shape
# into a cache torch never trims; fp32 runs plain gemm calls.
CPU_BRGEMM_DTYPES = (torch.bfloat16, torch.float16)
CPU_FLASH_KEY_BLOCK = 32  # keys; the kernel splits keys into blocks of 512, the tail compiles per length


def cpu_flash_key_columns(n: int, block: int = CPU_FLASH_KEY_BLOCK) -> int:
    """n keys rounded up to whole blocks of `block` keys: a key tail (n mod 512) takes 16
    lengths instead of 512. The cascade's own keys are as many as its batch is wide, and a full
    MMLU run meets most widths up to 2,048. Blocks of 32 rather than 64: a narrow batch's own
    part is not doubled, and 16 tails x 3 query blocks stay within 10 MiB."""
    return -(-n // block) * block


def cpu_flash_query_rows(m: int) -> int:
    """m queries rounded up to whole query blocks of torch's CPU flash kernel: blocks of 32
    queries below 192, of 64 below 768, of 256 from there (FlashAttentionKernel.cpp). Up to 32
    queries are one block of their own size: at most 32 shapes, so they stay as they are (a
    decoding step's few queries would otherwise cost a block of 32)."""
    if m <= 32:
        return m

    def block(n: int) -> int:
        return 256 if n >= 768 else 64 if n >= 192 else 32
    rows = -(-m // block(m)) * block(m)
    return -(-rows // block(rows)) * block(rows)  # rounding up may reach the next block size


def pad_rows(x: Tensor, rows: int) -> Tensor:
    """x [B, H or 1, M, N] with zero rows appended to `rows` along dim 2 (queries, mask rows,
    or keys and values)."""
    padded = x.new_zeros(*x.shape[:2], rows, x.shape[3])
    padded[:, :, :x.shape[2]] = x
    return padded


def dense(x: Tensor) -> Tensor:
    """A dense copy of a cut tensor in its own stride order: the layout the kernel returns
    without padding (its lse is [B, M, H] in memory). The cascade's merge takes exp of the lse,
    and torch's exp can differ by an ulp between memory layouts."""
    order = sorted(range(x.dim()), key=lambda i: -x.stride(i))
    return x.permute(order).contiguous().permute([order.index(i) for i in range(x.dim())])


def flash_attention(op: Callable, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """op (the CPU flash kernel) on q [B, H, M, d], k and v [B, H, N, d] and an optional additive
    mask [B, 1, M, N], returning (out, lse [B, H, M] fp32). In bf16/fp16 the queries (and mask
    rows) are padded to whole query blocks so that the compiled shapes come from the key lengths
    only (the prefixes': a few per task; the own keys': whole blocks of 32), and the real rows come
    back in the layout the unpadded call returns."""
    m = q.shape[2]
    rows = cpu_flash_query_rows(m) if q.dtype in CPU_BRGEMM_DTYPES else m
    if rows == m:
        return op(q, k, v, 0.0, False, attn_mask=mask)
    if mask is not None:
        mask = pad_rows(mask, rows)
    out, lse = op(pad_rows(q, rows), k, v, 0.0, False, attn_mask=mask)[:2]
    return dense(out[:, :, :m]), dense(lse[:, :, :m])
