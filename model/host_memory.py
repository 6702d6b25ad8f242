"""A long CPU run's resident memory held down: bounded matmul caches and freed heap handed back.

Measured on the real 0.5B model in bf16 (MMLU 5-shot, 285 questions; the figures are in
docs/model.md, "CPU kernels: bounded caches, padding and row blocks"): without these, RSS climbs
from 1.70 GB after loading to 2.56 GB at the end, and a full MMLU run reached 4.47 GB. Two
things grow:

- bf16 matmuls go through oneDNN, and torch keeps two caches of compiled matmuls keyed by shape,
  1,024 entries each by default: oneDNN's primitive cache (ONEDNN_PRIMITIVE_CACHE_CAPACITY) and
  ideep's (LRU_CACHE_CAPACITY), about 1.5 MiB a shape. Every scoring batch has its own row count,
  so both only fill; capping one alone still leaves the other holding its entries.
- glibc keeps the freed activations of one batch in its heap, in pieces the next batch's
  differently sized tensors do not fit, so the heap grows by fragments.

A third cache is bounded where it is filled: SDPA's bf16 CPU flash kernel compiles a brgemm
kernel per block shape into a cache torch never trims, so model/attention/cpu_blocks.py hands it
whole query blocks only (`cpu_flash_query_rows`) and, for the cascade's own keys, whole blocks of
32 keys (`cpu_flash_key_columns`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import lru_cache

KERNEL_CACHE_CAPACITY = 16  # shapes; one forward uses about 10 (5 projections at its rows and at the kept rows)


def bound_kernel_caches(capacity: int = KERNEL_CACHE_CAPACITY) -> None:
    """Cap oneDNN's and ideep's caches of compiled matmuls, unless the user set them.

    Both read their variable when they build their first entry, so call this before the first
    bf16 matmul of the process; afterwards it changes nothing. No slower (MMLU limit=5, bf16:
    66.2 s against 66.8-67.1 s): a forward reuses its ~10 shapes across all its layers, and a
    later batch seldom needs an older one.
    """
    for variable in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(variable, str(capacity))


@lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library is not glibc (macOS, musl)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Give the heap's free pages back to the system (glibc's malloc_trim). Called between
    engine calls; the next batch faults the pages in again, which costs a run about 3% of its
    time for about 100 MB less peak. False where there is no glibc."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
