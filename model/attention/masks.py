"""The one rule as masks, and the layouts the kernels share.

A query at position p sees the keys at positions j with j <= p and, in a layer with window w > 0,
j > p - w. Masked attention runs over blocks of queries so that no mask, and no score block of the
math kernel, grows to [L, L] for a long input.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qwen_eval.model.attention.cache import KVSegment
from qwen_eval.model.attention.meta import AttentionMeta

# Masked attention runs over blocks of queries so a mask (or a score block of the math kernel)
# stays at most this many elements per block (never [L, L] for long inputs).
MASK_BLOCK_ELEMENTS = 1 << 24


def query_block(t: int, per_query: int) -> int:
    """How many of t queries one block holds when each query costs per_query mask elements."""
    return max(1, min(t, MASK_BLOCK_ELEMENTS // max(1, per_query)))


def fits_one_block(elements: int) -> bool:
    """Whether a mask of this many elements may be built whole (else it is built in query blocks)."""
    return elements <= MASK_BLOCK_ELEMENTS


def visible(q_pos: Tensor, k_pos: Tensor, window: int) -> Tensor:
    """[..., Q] query positions x [N] key positions -> bool [..., Q, N]: the one rule."""
    vis = k_pos <= q_pos[..., None]
    if window:
        vis &= k_pos > q_pos[..., None] - window
    return vis


def fold_rows(q: Tensor, kv_heads: int) -> Tensor:
    """[B, T, H, hd] -> [1, kv, B*T*g, hd]: every row's queries as one sequence per kv head,
    ordered (b, t, j) with query head = kv head * g + j (for a segment all rows share)."""
    b, t, h, d = q.shape
    return q.reshape(b, t, kv_heads, h // kv_heads, d).permute(2, 0, 1, 3, 4).reshape(1, kv_heads, -1, d)


def unfold_rows(out: Tensor, b: int, t: int) -> Tensor:
    """Inverse of fold_rows for [1, kv, B*T*g, X] (X = hd, or absent for the lse)."""
    kv = out.shape[1]
    rest = out.shape[3:]
    out = out.reshape(kv, b, t, -1, *rest).permute(1, 2, 0, 3, *range(4, 4 + len(rest)))
    return out.reshape(b, t, -1, *rest)


def fold_heads(q: Tensor, kv_heads: int) -> Tensor:
    """[B, T, H, hd] -> [B, kv, T*g, hd], ordered (t, j) per kv head (grouped-query heads as
    queries of their kv head, for kernels without GQA)."""
    b, t, h, d = q.shape
    return q.reshape(b, t, kv_heads, h // kv_heads, d).permute(0, 2, 1, 3, 4).reshape(b, kv_heads, -1, d)


def unfold_heads(out: Tensor, t: int) -> Tensor:
    """Inverse of fold_heads for [B, kv, T*g, X] (X = hd, or absent for the lse)."""
    b, kv = out.shape[:2]
    rest = out.shape[3:]
    out = out.reshape(b, kv, t, -1, *rest).permute(0, 2, 1, 3, *range(4, 4 + len(rest)))
    return out.reshape(b, t, -1, *rest)


def whole(meta: AttentionMeta, s: int, e: int | None) -> bool:
    """Whether queries s:e are all of the forward's (a mask of them can be shared by the layers)."""
    return s == 0 and (e is None or e >= meta.positions.shape[1])


def segment_visible(meta: AttentionMeta, seg: KVSegment, window: int, s: int = 0, e: int | None = None) -> Tensor:
    """bool [B, T', N] for queries s:e against the segment's keys. Built once per forward and
    shared by the layers when it covers every query; blocks of a long input are rebuilt per layer
    (keeping them all would hold the whole L x L mask)."""
    n = seg.keys.shape[1]

    def build():
        k_pos = seg.start + torch.arange(n, device=meta.positions.device)
        return visible(meta.positions[:, s:e], k_pos, window)
    return meta.cached(("visible", seg.start, n, window), build) if whole(meta, s, e) else build()
