"""Attention with one entry point, the KV cache, and the per-forward metadata they share.

    out = attend(q, k, v, meta, layer)     # q [B, T, H, hd], k and v [B, T, kv_heads, hd] -> [B, T, H, hd]

One rule, in positions: a query at position p sees the keys at positions j with j <= p and, in a
layer with window w > 0, j > p - w. A position is a token's index in its own sequence; every
mask, window and cache write speaks positions.

The phases a forward can be in, and what `attend` does in each:
  * fresh: no key precedes the new tokens (a cache-less forward, or prompts written into an
    empty cache). Plain causal attention over the new keys (rows are right-padded, so a real
    query never sees a padded key): Kernel.causal.
  * cached: the new tokens follow keys already in the cache (decoding, or a prompt continued).
    One segment of keys per row, masked by position: Kernel.part.
  * after a shared prefix: the cache holds a prefix every row shares, once for the batch, and
    each row's own keys after it. Cascade attention: one attention of every row's queries
    against the prefix (read once for the whole batch), one against each row's own keys, the
    two merged exactly by their log-sum-exp (out = sum_i exp(lse_i - lse) out_i): Kernel.cascade.

The files, in reading order:
  kernel.py      the interface every kernel implements (causal, part with log-sum-exp, cascade)
  math.py        the reference kernel, attention written out in plain PyTorch
  sdpa.py        torch SDPA, and SDPA's kernels that return the log-sum-exp
  flash.py       flash-attn (CUDA, fp16/bf16)
  flex.py        FlexAttention: compiled on CUDA; on CPU it runs eagerly (torch 2.13 cannot
                 compile it for these masks), correct but slow, for checking only
  select.py      `model.attention` (auto, sdpa, flash, flex, math) resolved to one kernel
  cpu_blocks.py  the shapes given to torch's CPU flash kernel, so its compiled-kernel cache stays bounded
  masks.py       the one rule as masks, query blocks, and the layouts the kernels share
  cache.py       the KV cache and its segments
  meta.py        AttentionMeta, what every layer needs to know about one forward
"""

from __future__ import annotations

from torch import Tensor

from qwen_eval.model.attention.cache import KVCache, KVSegment
from qwen_eval.model.attention.cpu_blocks import cpu_flash_key_columns, cpu_flash_query_rows
from qwen_eval.model.attention.kernel import Kernel, merge_partials
from qwen_eval.model.attention.masks import visible
from qwen_eval.model.attention.meta import AttentionMeta
from qwen_eval.model.attention.select import KERNELS, AttentionUnavailable, kernel_named, resolve_kernel

__all__ = ["AttentionMeta", "AttentionUnavailable", "KERNELS", "KVCache", "KVSegment", "Kernel", "attend",
           "cpu_flash_key_columns", "cpu_flash_query_rows", "merge_partials", "resolve_kernel", "visible"]


def attend(q: Tensor, k: Tensor, v: Tensor, meta: AttentionMeta, layer: int) -> Tensor:
    """Attention of the new queries q [B, T, H, hd] (new keys and values k, v [B, T, kv, hd]),
    written into meta.cache first when there is one. Returns [B, T, H, hd] in q's dtype."""
    implementation = kernel_named(meta.kernel)
    window = meta.windows[layer]
    if meta.cache is not None:
        meta.cache.update(layer, meta.positions, k, v)
    if meta.fresh:
        return implementation.causal(q, k, v, window, meta)
    segments = meta.cache.segments(layer, meta.kv_len)
    if len(segments) == 1:
        return implementation.part(q, segments[0], window, meta, lse=False)[0]
    return implementation.cascade(q, segments, window, meta)
