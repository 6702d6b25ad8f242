"""The interface every attention kernel implements, and the exact merge of partial attentions.

Shapes: queries q [B, T, H, hd]; keys and values [B or 1, N, kv_heads, hd]; an output is
[B, T, H, hd], a log-sum-exp [B, T, H] in fp32 (natural log). `window` is the layer's window
(0: full attention) and `meta` the forward's AttentionMeta (positions, cached masks).

  causal(q, k, v, window, meta) -> out
      The fresh phase: no key precedes the new tokens, so plain causal attention over them.
  part(q, segment, window, meta, lse) -> (out, lse or None)
      Attention over one KVSegment of keys, masked by position; with lse, also each query's
      log-sum-exp, so parts over disjoint keys can be merged exactly.
  cascade(q, segments, window, meta) -> out
      The phase after a shared prefix: one part per segment, merged by their log-sum-exp. A
      kernel may fuse it; the one here is the generic merge.
  unavailable(device, dtype) -> str | None
      Why the kernel cannot run there (None: it can), for the selector's one-line error.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

from qwen_eval.model.attention.cache import KVSegment
from qwen_eval.model.attention.meta import AttentionMeta


def merge_partials(parts: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Exact attention over the union of disjoint key sets from each set's normalised output
    [B, T, H, hd] and log-sum-exp [B, T, H]: sum_i exp(lse_i - lse) * out_i, lse = logaddexp.
    A part with lse -inf (no visible key) weighs nothing; every query sees at least one key."""
    lses = [lse.float() for _, lse in parts]
    total = lses[0]
    for lse in lses[1:]:
        total = torch.logaddexp(total, lse)
    out = None
    for (o, _), lse in zip(parts, lses):
        # an empty part's output may be anything (0, or NaN from some kernels): it weighs exactly 0
        term = torch.where(torch.isneginf(lse)[..., None], 0.0, o.float() * torch.exp(lse - total)[..., None])
        out = term if out is None else out + term
    return out


class Kernel(ABC):
    """One attention kernel (`model.attention=<name>`); see the module docstring for the contract."""

    name: ClassVar[str]

    def unavailable(self, device: torch.device, dtype: torch.dtype) -> str | None:
        return None

    def causal(self, q: Tensor, k: Tensor, v: Tensor, window: int, meta: AttentionMeta) -> Tensor:
        return self.part(q, KVSegment(k, v, 0), window, meta, lse=False)[0]

    @abstractmethod
    def part(self, q: Tensor, seg: KVSegment, window: int, meta: AttentionMeta,
             lse: bool) -> tuple[Tensor, Tensor | None]:
        ...

    def cascade(self, q: Tensor, segments: list[KVSegment], window: int, meta: AttentionMeta) -> Tensor:
        parts = []
        for seg in segments:
            out, lse = self.part(q, seg, window, meta, lse=True)
            if window and seg.shared:  # queries whose window ends before this segment see none of it
                empty = meta.positions - window + 1 >= seg.start + seg.keys.shape[1]  # [B, T]
                lse = lse.masked_fill(empty[:, :, None], float("-inf"))
            parts.append((out, lse))
        return merge_partials(parts).to(q.dtype)
