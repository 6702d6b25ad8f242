"""What every layer's attention needs to know about one forward, computed once before the layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from qwen_eval.model.attention.cache import KVCache


@dataclass
class AttentionMeta:
    """What every layer's attention needs to know about one forward, computed once before the
    layers (host values included, so no layer syncs with the device)."""

    kernel: str  # a resolved kernel: sdpa, flash, flex or math
    positions: Tensor  # [B, T] the position of each new token
    windows: tuple[int, ...]  # per layer; 0 = full (a window that reaches past position 0 is 0 here)
    kv_len: int  # 1 + the largest position in `positions`
    min_start: int  # the smallest first position of a row (host)
    max_start: int  # the largest (host)
    cache: KVCache | None = None
    fresh: bool = True  # no key precedes the new tokens: plain causal attention over them
    memo: dict = field(default_factory=dict)  # masks built once per forward, shared by the layers

    @classmethod
    def build(cls, kernel: str, starts: Tensor, host_starts: list[int] | None, t: int,
              windows: tuple[int, ...] | None, num_layers: int, cache: KVCache | None) -> "AttentionMeta":
        """host_starts: each row's first position on the host (None: all 0)."""
        positions = starts[:, None] + torch.arange(t, device=starts.device)[None, :]
        lo, hi = (min(host_starts), max(host_starts)) if host_starts else (0, 0)
        kv_len = hi + t
        windows = tuple(w if 0 < w < kv_len else 0 for w in windows) if windows else (0,) * num_layers
        fresh = cache is None or cache.empty
        return cls(kernel, positions, windows, kv_len, lo, hi, cache, fresh)

    def cached(self, key, build: Callable[[], Tensor]) -> Tensor:
        if key not in self.memo:
            self.memo[key] = build()
        return self.memo[key]

