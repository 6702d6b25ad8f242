"""Attention with one entry point, the KV cache, and the per-forward metadata they share.

    out = attend(q, k, v, meta, layer)     # q [B, T, H, hd], k and v [B, T, kv_heads, hd] -> [B, T, H, hd]

One rule, in positions: a query at position p sees the keys at positions j with j <= p and, in a
layer with window w > 0, j > p - w. A position is a token's index in its own sequence; every
mask, window and cache write below speaks positions.

The phases a forward can be in, and what `attend` does in each:
  * fresh: no key precedes the new tokens (a cache-less forward, or prompts written into an
    empty cache). Plain causal attention over the new keys (rows are right-padded, so a real
    query never sees a padded key).
  * cached: the new tokens follow keys already in the cache (decoding, or a prompt continued).
    One segment of keys per row, masked by position.
  * after a shared prefix: the cache holds a prefix every row shares, once for the batch, and
    each row's own keys after it. Cascade attention: one attention of every row's queries
    against the prefix (read once for the whole batch), one against each row's own keys, the
    two merged exactly by their log-sum-exp (out = sum_i exp(lse_i - lse) out_i).

The kernel is chosen once, by name (`model.attention`, `Qwen.set_attention`), never by a fallback:
  * math   the reference in plain PyTorch: fp32 scores, masked softmax, any device. Slow; the
           yardstick the tests hold the other kernels to.
  * sdpa   torch's scaled_dot_product_attention for the fresh and cached phases. The cascade
           needs each part's log-sum-exp, which the public function does not return, so it runs
           SDPA's own kernels that do: on CPU `_scaled_dot_product_flash_attention_for_cpu`,
           on CUDA `_scaled_dot_product_efficient_attention` (memory-efficient kernel, masks as
           a bias). On CUDA, masked calls fold grouped-query heads into the query length, since
           the memory-efficient kernel takes no GQA and SDPA would otherwise run its math backend.
  * flash  flash-attn (CUDA, fp16/bf16): flash_attn_func for the fresh phase,
           flash_attn_with_kvcache for cached rows (each row's own length, causal bottom-right
           alignment) and for the shared prefix (every row's queries as one sequence). A window
           reaching into a shared prefix is the one mask flash-attn cannot express (its window is
           relative to one query offset per row); that part runs SDPA's memory-efficient kernel.
  * flex   torch.nn.attention.flex_attention with a mask_mod from the same positions, its
           log-sum-exp for the cascade. Compiled on CUDA. On CPU torch 2.13 cannot compile it for
           these masks (return_lse is unsupported there and the C++ code generation fails for
           per-row masks), so it runs eagerly: correct, unfused, slow — for checking only.
  * auto   CPU: sdpa (the fastest CPU path; see benchmarks/attention_paths.py). CUDA: flash
           when flash-attn is installed and the dtype is fp16/bf16, else sdpa.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

try:  # optional, CUDA only
    from flash_attn import flash_attn_func, flash_attn_with_kvcache
except Exception:  # ImportError, or a broken CUDA build
    flash_attn_func = flash_attn_with_kvcache = None

KERNELS = ("auto", "sdpa", "flash", "flex", "math")

# Masked attention runs over blocks of queries so a mask (or a score block of the math kernel)
# stays at most this many elements per block (never [L, L] for long inputs).
MASK_BLOCK_ELEMENTS = 1 << 24


class AttentionUnavailable(ValueError):
    """The kernel asked for by name cannot run here (the message names the option)."""


# ---------------------------------------------------------------------------------------------
# Choosing the kernel


def _flash_problem(device: torch.device, dtype: torch.dtype) -> str | None:
    if device.type != "cuda":
        return f"flash-attn runs on CUDA only (the model is on {device.type})"
    if flash_attn_func is None:
        return "flash-attn is not installed (pip install -e '.[flash]')"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"flash-attn needs float16 or bfloat16 (the model is {str(dtype).removeprefix('torch.')})"
    if "return_softmax_lse" not in inspect.signature(flash_attn_with_kvcache).parameters:
        return "the installed flash-attn is too old (flash_attn_with_kvcache has no return_softmax_lse; need >= 2.6)"
    return None


# SDPA's kernels that also return each query's log-sum-exp (the cascade's parts merge with it)
SDPA_LSE_OPS = {"cpu": "_scaled_dot_product_flash_attention_for_cpu", "cuda": "_scaled_dot_product_efficient_attention"}


def _sdpa_problem(device: torch.device) -> str | None:
    if device.type not in SDPA_LSE_OPS:
        return f"the sdpa kernel supports cpu and cuda (the model is on {device.type})"
    op = SDPA_LSE_OPS[device.type]
    if not hasattr(torch.ops.aten, op):
        return f"this torch has no aten.{op} (the log-sum-exp kernel of the shared-prefix path)"
    return None


def _flex_problem(device: torch.device) -> str | None:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError as e:
        return f"this torch has no FlexAttention ({e})"
    if device.type not in ("cpu", "cuda"):
        return f"flex runs on cpu and cuda here (the model is on {device.type})"
    return None


def resolve_kernel(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """The kernel `model.attention=name` runs on this device and dtype (auto: one fixed choice per
    device). Raises AttentionUnavailable, naming the option, when it cannot run here."""
    if name not in KERNELS:
        raise AttentionUnavailable(f"model.attention={name!r} is not a kernel; use one of {', '.join(KERNELS)}")
    device = torch.device(device)
    if name == "auto":
        return "flash" if device.type == "cuda" and _flash_problem(device, dtype) is None else "sdpa"
    problem = {"flash": lambda: _flash_problem(device, dtype), "sdpa": lambda: _sdpa_problem(device),
               "flex": lambda: _flex_problem(device), "math": lambda: None}[name]()
    if problem:
        raise AttentionUnavailable(f"model.attention={name}: {problem}; use model.attention=auto")
    return name


# ---------------------------------------------------------------------------------------------
# The KV cache and the per-forward metadata


@dataclass(frozen=True)
class KVSegment:
    """Keys and values of consecutive positions start, start + 1, ... ([Bk, n, kv_heads, hd]);
    shared: Bk is 1 and the segment serves every row of the batch."""

    keys: Tensor
    values: Tensor
    start: int
    shared: bool = False


class KVCache:
    """Keys and values of a batch of rows, by position, per layer.

    Every row holds positions [0, lengths[b]). A prefix all rows share (load_prefix) is held once
    for the batch, by reference: positions [0, start). Each row's own positions [start, ...) live
    in preallocated storage [B, capacity, kv_heads, hd] per layer (flash-attn's layout). `update`
    and `segments` are the only code that turns a position into a storage index.
    """

    def __init__(self, num_layers: int, batch_size: int, capacity: int, kv_heads: int, head_dim: int, *,
                 dtype: torch.dtype, device: torch.device, scratch: bool = False):
        """scratch: one storage serves every layer, for a single forward whose keys nobody reads
        afterwards (scoring after a shared prefix): each layer writes its keys, attends, and the
        next layer overwrites them. A 16K-token scoring batch of the 0.5B model in bf16 holds
        8 MiB of keys instead of 24 layers' 192 MiB."""
        shape = (batch_size, capacity, kv_heads, head_dim)
        stores = 1 if scratch else num_layers
        keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(stores)]
        values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(stores)]
        self.keys = keys * num_layers if scratch else keys
        self.values = values * num_layers if scratch else values
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.host_lengths = [0] * batch_size  # the same, on the host: no sync to size a forward
        self.alphas: list[float] = [1.0] * batch_size  # NTK alpha fixed at the cache-less call
        self.capacity = capacity  # own positions each row can hold after the shared prefix
        self.start = 0  # the first position the rows' own storage holds
        self.prefix: list[tuple[Tensor, Tensor]] | None = None  # per layer [1, start, kv_heads, hd]

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def max_len(self) -> int:  # the positions a row can hold in all
        return self.start + self.capacity

    @property
    def empty(self) -> bool:
        """No row holds any position yet (the next forward is the fresh phase)."""
        return self.prefix is None and not any(self.host_lengths)

    def reset(self) -> None:
        self.lengths.zero_()
        self.host_lengths = [0] * self.batch_size

    def load_prefix(self, keys: list[Tensor], values: list[Tensor], alpha: float) -> None:
        """Start every row with one shared prefix ([1, P, kv_heads, hd] per layer), by reference.

        Attention reads the prefix once per step for the whole batch instead of once per row
        (decoding after GSM8K's 8 shots is bound by reading the KV cache), and the rows' storage
        only holds what follows it (capacity counts the tokens after the prefix).
        """
        self.prefix = list(zip(keys, values))
        self.start = keys[0].shape[1]
        self.lengths.fill_(self.start)
        self.host_lengths = [self.start] * self.batch_size
        self.alphas = [alpha] * self.batch_size

    @classmethod
    def stacked(cls, caches: list["KVCache"], room: int) -> "KVCache":
        """One cache holding the rows of `caches` in order, with room for `room` more positions
        after its longest row: rows prefilled apart (after different prefixes, or a running
        batch and newcomers) then decode as one batch. A prefix all of them read by reference
        (the same tensors) stays shared; otherwise every row gets its own copy of its prefix.

        The caches given are consumed: the new storage is made a layer at a time and each layer
        of theirs is released once copied, so the old and the new rows never coexist whole (the
        peak is the larger of the two plus one layer, not their sum)."""
        first = caches[0]
        shared = first.prefix is not None and all(
            c.prefix is not None and c.start == first.start
            and all(a[0].data_ptr() == b[0].data_ptr() for a, b in zip(c.prefix, first.prefix)) for c in caches[1:])
        start = first.start if shared else 0
        k0 = first.keys[0]
        longest = max(n for c in caches for n in c.host_lengths)
        rows = sum(c.batch_size for c in caches)
        out = cls(0, rows, longest - start + room, k0.shape[2], k0.shape[3], dtype=k0.dtype, device=k0.device)
        if shared:
            out.prefix, out.start = first.prefix, start
        for layer in range(len(first.keys)):
            for side, (store, name) in enumerate(((out.keys, "keys"), (out.values, "values"))):
                dst = torch.zeros((rows, out.capacity, *k0.shape[2:]), dtype=k0.dtype, device=k0.device)
                row = 0
                for c in caches:
                    n, own, at = c.batch_size, max(c.host_lengths) - c.start, c.start - start
                    if c.prefix is not None and not shared:
                        dst[row:row + n, :c.start] = c.prefix[layer][side]  # [1, P] to every row
                    dst[row:row + n, at:at + own] = getattr(c, name)[layer][:, :own]
                    getattr(c, name)[layer] = None  # consumed
                    row += n
                store.append(dst)
        out.lengths = torch.cat([c.lengths for c in caches])
        out.host_lengths = [n for c in caches for n in c.host_lengths]
        out.alphas = [a for c in caches for a in c.alphas]
        return out

    def update(self, layer: int, positions: Tensor, keys: Tensor, values: Tensor) -> None:
        """Write keys and values [B, T, kv_heads, hd] at positions [B, T] (each >= start)."""
        b, t = positions.shape
        rows = torch.arange(b, device=positions.device)[:, None].expand(b, t)
        cols = positions - self.start
        self.keys[layer][rows, cols] = keys
        self.values[layer][rows, cols] = values

    def segments(self, layer: int, kv_len: int) -> list[KVSegment]:
        """What a forward whose positions end below kv_len reads: the shared prefix, if any, and
        each row's own keys up to position kv_len - 1."""
        own = KVSegment(self.keys[layer][:, :kv_len - self.start], self.values[layer][:, :kv_len - self.start],
                        self.start)
        if self.prefix is None:
            return [own]
        k, v = self.prefix[layer]
        return [KVSegment(k, v, 0, shared=True), own]

    def advance(self, lengths: Tensor | None, t: int) -> None:
        """After a forward of t new tokens per row, `lengths` of them real (None: all t)."""
        if lengths is None:
            self.lengths += t
            self.host_lengths = [n + t for n in self.host_lengths]
        else:
            self.lengths += lengths
            self.host_lengths = [n + int(m) for n, m in zip(self.host_lengths, lengths.tolist())]

    def keep_rows(self, rows: Tensor | list[int]) -> None:
        """Keep only these rows, in this order: new row i is old row rows[i] (decoding continues
        with them). Storage is not reallocated: only rows that change place are copied, in place,
        and only the positions they hold; the storage then views its first len(rows) rows. (The
        engine keeps the survivors in order, so the rows before the first finished one stay put:
        moving the last rows into the holes would copy less, but a row's place in the batch can
        change a matmul's rounding, and with it an answer.)"""
        rows = [int(r) for r in (rows.tolist() if isinstance(rows, Tensor) else rows)]
        moved = [(i, r) for i, r in enumerate(rows) if i != r]
        filled = max((self.host_lengths[r] for _, r in moved), default=self.start) - self.start
        if moved and filled > 0:
            device = self.lengths.device
            dst = torch.tensor([i for i, _ in moved], device=device)
            src = torch.tensor([r for _, r in moved], device=device)
            for store in (self.keys, self.values):
                for s in store:
                    s[dst, :filled] = s[src, :filled]  # the right side is gathered before the write
        index = torch.tensor(rows, device=self.lengths.device)
        n = len(rows)
        self.keys = [k[:n] for k in self.keys]
        self.values = [v[:n] for v in self.values]
        self.lengths = self.lengths.index_select(0, index)
        self.host_lengths = [self.host_lengths[r] for r in rows]
        self.alphas = [self.alphas[r] for r in rows]


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


# ---------------------------------------------------------------------------------------------
# The entry point


def attend(q: Tensor, k: Tensor, v: Tensor, meta: AttentionMeta, layer: int) -> Tensor:
    """Attention of the new queries q [B, T, H, hd] (new keys and values k, v [B, T, kv, hd]),
    written into meta.cache first when there is one. Returns [B, T, H, hd] in q's dtype."""
    kernel = _KERNEL_IMPLS[meta.kernel]
    window = meta.windows[layer]
    if meta.cache is not None:
        meta.cache.update(layer, meta.positions, k, v)
    if meta.fresh:
        return kernel.causal(q, k, v, window, meta)
    segments = meta.cache.segments(layer, meta.kv_len)
    if len(segments) == 1:
        return kernel.part(q, segments[0], window, meta, lse=False)[0]
    if kernel is _KERNEL_IMPLS["sdpa"] and q.device.type == "cpu" and not window:
        exact = kernel.cpu_cascade(q, segments, meta)
        if exact is not None:
            return exact
    parts = []
    for seg in segments:
        out, lse = kernel.part(q, seg, window, meta, lse=True)
        if window and seg.shared:  # queries whose window ends before this segment see none of it
            empty = meta.positions - window + 1 >= seg.start + seg.keys.shape[1]  # [B, T]
            lse = lse.masked_fill(empty[:, :, None], float("-inf"))
        parts.append((out, lse))
    return merge_partials(parts).to(q.dtype)


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


# ---------------------------------------------------------------------------------------------
# Masks and layouts shared by the kernels


def visible(q_pos: Tensor, k_pos: Tensor, window: int) -> Tensor:
    """[..., Q] query positions x [N] key positions -> bool [..., Q, N]: the one rule."""
    vis = k_pos <= q_pos[..., None]
    if window:
        vis &= k_pos > q_pos[..., None] - window
    return vis


def _fold_rows(q: Tensor, kv_heads: int) -> Tensor:
    """[B, T, H, hd] -> [1, kv, B*T*g, hd]: every row's queries as one sequence per kv head,
    ordered (b, t, j) with query head = kv head * g + j (for a segment all rows share)."""
    b, t, h, d = q.shape
    return q.reshape(b, t, kv_heads, h // kv_heads, d).permute(2, 0, 1, 3, 4).reshape(1, kv_heads, -1, d)


def _unfold_rows(out: Tensor, b: int, t: int) -> Tensor:
    """Inverse of _fold_rows for [1, kv, B*T*g, X] (X = hd, or absent for the lse)."""
    kv = out.shape[1]
    rest = out.shape[3:]
    out = out.reshape(kv, b, t, -1, *rest).permute(1, 2, 0, 3, *range(4, 4 + len(rest)))
    return out.reshape(b, t, -1, *rest)


def _fold_heads(q: Tensor, kv_heads: int) -> Tensor:
    """[B, T, H, hd] -> [B, kv, T*g, hd], ordered (t, j) per kv head (grouped-query heads as
    queries of their kv head, for kernels without GQA)."""
    b, t, h, d = q.shape
    return q.reshape(b, t, kv_heads, h // kv_heads, d).permute(0, 2, 1, 3, 4).reshape(b, kv_heads, -1, d)


def _unfold_heads(out: Tensor, t: int) -> Tensor:
    """Inverse of _fold_heads for [B, kv, T*g, X] (X = hd, or absent for the lse)."""
    b, kv = out.shape[:2]
    rest = out.shape[3:]
    out = out.reshape(b, kv, t, -1, *rest).permute(0, 2, 1, 3, *range(4, 4 + len(rest)))
    return out.reshape(b, t, -1, *rest)


def _whole(meta: AttentionMeta, s: int, e: int | None) -> bool:
    return s == 0 and (e is None or e >= meta.positions.shape[1])


def _seg_visible(meta: AttentionMeta, seg: KVSegment, window: int, s: int = 0, e: int | None = None) -> Tensor:
    """bool [B, T', N] for queries s:e against the segment's keys. Built once per forward and
    shared by the layers when it covers every query; blocks of a long input are rebuilt per layer
    (keeping them all would hold the whole L x L mask)."""
    n = seg.keys.shape[1]

    def build():
        k_pos = seg.start + torch.arange(n, device=meta.positions.device)
        return visible(meta.positions[:, s:e], k_pos, window)
    return meta.cached(("visible", seg.start, n, window), build) if _whole(meta, s, e) else build()


# ---------------------------------------------------------------------------------------------
# Kernels: causal(q, k, v, window, meta) for the fresh phase; part(q, segment, window, meta, lse)
# for one segment of keys, returning (out [B, T, H, hd], lse [B, T, H] fp32 or None).


class MathKernel:
    """The reference: fp32 scores and softmax, written out, over blocks of queries."""

    def causal(self, q, k, v, window, meta):
        return self.part(q, KVSegment(k, v, 0), window, meta, lse=False)[0]

    def part(self, q, seg, window, meta, lse):
        b, t, h, d = q.shape
        k, v = seg.keys, seg.values
        kv, n = k.shape[2], k.shape[1]
        g = h // kv
        kt = k.float().permute(0, 2, 3, 1)  # [Bk, kv, d, n]; Bk = 1 broadcasts over rows
        vh = v.float().transpose(1, 2)  # [Bk, kv, n, d]
        block = max(1, min(t, MASK_BLOCK_ELEMENTS // max(1, b * h * n)))
        outs, lses = [], []
        for s in range(0, t, block):
            qb = _fold_heads(q[:, s:s + block].float(), kv)  # [B, kv, tb*g, d]
            tb = qb.shape[2] // g
            scores = (qb @ kt) / math.sqrt(d)  # [B, kv, tb*g, n]
            vis = _seg_visible(meta, seg, window, s, s + block)  # [B, tb, n]
            scores = scores.view(b, kv, tb, g, n).masked_fill(~vis[:, None, :, None, :], float("-inf"))
            scores = scores.view(b, kv, tb * g, n)
            m = scores.amax(-1, keepdim=True)
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            p = torch.exp(scores - m)
            total = p.sum(-1, keepdim=True)
            out = (p @ vh) / total.clamp_min(torch.finfo(torch.float32).tiny)
            outs.append(_unfold_heads(out, tb))
            lses.append(_unfold_heads((m + torch.log(total))[..., 0], tb))
        out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        out_lse = torch.cat(lses, dim=1) if len(lses) > 1 else lses[0]
        return (out if lse else out.to(q.dtype)), (out_lse if lse else None)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
    """SDPA on [B, T, H, hd] tensors. Grouped-query heads: SDPA's enable_gqa on CPU; on CUDA a
    masked call folds them into the queries (the memory-efficient kernel takes no GQA)."""
    gqa = q.shape[2] != k.shape[2]
    if gqa and mask is not None and q.is_cuda:
        kv, t = k.shape[2], q.shape[1]
        g = q.shape[2] // kv
        mask = mask[:, :, :, None, :].expand(-1, -1, -1, g, -1).reshape(mask.shape[0], 1, -1, mask.shape[-1])
        out = F.scaled_dot_product_attention(_fold_heads(q, kv), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=mask)
        return _unfold_heads(out, t)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask, is_causal=is_causal, enable_gqa=gqa)
    return out.transpose(1, 2)


def _float_mask(vis: Tensor, dtype: torch.dtype, g: int, align: int = 1, columns: int | None = None) -> Tensor:
    """bool [B, T, N] -> additive mask [B, 1, T*g, N] (rows ordered (t, j)), 0 or -inf; on CUDA
    padded so its rows are `align`-aligned, as the memory-efficient kernel needs. columns (>= N):
    the width of a mask for keys padded past N, its extra columns -inf (padded keys weigh 0)."""
    b, t, n = vis.shape
    columns = columns or n
    hidden = ~vis[:, None, :, None, :].expand(b, 1, t, g, n).reshape(b, 1, t * g, n)
    width = -(-columns // align) * align
    mask = torch.zeros((b, 1, t * g, width), dtype=dtype, device=vis.device)
    mask[..., :n].masked_fill_(hidden, float("-inf"))
    mask[..., n:columns] = float("-inf")
    return mask[..., :columns]


class SdpaKernel:
    """torch SDPA; for the cascade's parts, SDPA's kernels that also return the log-sum-exp."""

    def causal(self, q, k, v, window, meta):
        if not window:
            return _sdpa(q, k, v, is_causal=True)
        return self.part(q, KVSegment(k, v, 0), window, meta, lse=False)[0]

    def part(self, q, seg, window, meta, lse):
        if lse:
            return self._part_lse(q, seg, window, meta)
        return self._masked(q, seg, window, meta), None

    def _masked(self, q, seg, window, meta):
        """Blocks of queries, each against the key columns its queries can see."""
        b, t = q.shape[:2]
        k, v = seg.keys, seg.values
        n = k.shape[1]
        block = max(1, min(t, MASK_BLOCK_ELEMENTS // max(1, b * n)))
        outs = []
        for s in range(0, t, block):
            e = min(t, s + block)
            hi = meta.max_start + e - seg.start  # one past the last column the block's queries see
            lo = max(0, meta.min_start + s - seg.start - window + 1) if window else 0
            vis = _seg_visible(meta, seg, window, s, e)[:, :, lo:hi]
            outs.append(_sdpa(q[:, s:e], k[:, lo:hi], v[:, lo:hi], mask=vis[:, None]))
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]

    def cpu_cascade(self, q, segments, meta):
        """The cascade on CPU without a window, merged in the folded layout the kernels return:
        bitwise the numbers of the CPU path this replaced (the generic merge reorders the parts
        first, and torch's elementwise exp can differ by an ulp between memory layouts). In
        bf16/fp16 the own keys are padded to whole blocks (cpu_flash_key_columns): the padded
        keys weigh 0, but the kernel's sums then run over other lengths, so bf16 results move
        within bf16's rounding. None when the own-key mask would exceed one block (the generic
        path blocks it)."""
        prefix, own = segments
        b, t, h, d = q.shape
        kv, n = prefix.keys.shape[2], own.keys.shape[1]
        g = h // kv
        columns = cpu_flash_key_columns(n) if q.dtype in CPU_BRGEMM_DTYPES else n
        if b * t * g * columns > MASK_BLOCK_ELEMENTS:
            return None
        qg = q.reshape(b, t, kv, g, d)  # query head = kv head * g + j
        out_p, lse_p = _lse_attention(qg.permute(2, 0, 1, 3, 4).reshape(1, kv, b * t * g, d),
                                      prefix.keys.transpose(1, 2), prefix.values.transpose(1, 2), None)
        out_p = out_p.view(kv, b, t * g, d).transpose(0, 1)  # [B, kv, t*g, d]
        lse_p = lse_p.view(kv, b, t * g).transpose(0, 1)
        vis = _seg_visible(meta, own, 0)
        mask = meta.cached(("float", own.start, n, 0, g, b, columns),
                           lambda: _float_mask(vis, q.dtype, g, columns=columns))
        k, v = own.keys.transpose(1, 2), own.values.transpose(1, 2)
        if columns != n:
            k, v = _pad_rows(k, columns), _pad_rows(v, columns)
        out_o, lse_o = _lse_attention(qg.permute(0, 2, 1, 3, 4).reshape(b, kv, t * g, d), k, v, mask)
        lse = torch.logaddexp(lse_p.float(), lse_o.float())
        out = out_p.float() * torch.exp(lse_p - lse)[..., None] + out_o.float() * torch.exp(lse_o - lse)[..., None]
        return out.view(b, kv, t, g, d).permute(0, 2, 1, 3, 4).reshape(b, t, h, d).to(q.dtype)

    def _part_lse(self, q, seg, window, meta):
        b, t, h, d = q.shape
        kv, n = seg.keys.shape[2], seg.keys.shape[1]
        g = h // kv
        k, v = seg.keys.transpose(1, 2), seg.values.transpose(1, 2)  # [Bk, kv, n, d]
        rows = 1 if seg.shared else b  # the shared segment: all rows' queries as one sequence
        block = max(1, min(t, MASK_BLOCK_ELEMENTS // max(1, b * g * n)))
        outs, lses = [], []
        for s in range(0, t, block):
            e = min(t, s + block)
            qb = q[:, s:e]
            qf = _fold_rows(qb, kv) if seg.shared else _fold_heads(qb, kv)
            mask = None
            if not (seg.shared and not window):  # every prefix key is visible without a window
                vis = _seg_visible(meta, seg, window, s, e)  # [B, tb, n]
                align = 16 if q.is_cuda else 1
                build = lambda: _float_mask(vis.reshape(rows, -1, n), q.dtype, g, align)  # noqa: E731
                mask = meta.cached(("float", seg.start, n, window, g, rows), build) if _whole(meta, s, e) else build()
            out, out_lse = _lse_attention(qf, k, v, mask)
            unfold = (lambda x: _unfold_rows(x, b, e - s)) if seg.shared else (lambda x: _unfold_heads(x, e - s))
            outs.append(unfold(out))
            lses.append(unfold(out_lse))
        return (torch.cat(outs, dim=1) if len(outs) > 1 else outs[0],
                torch.cat(lses, dim=1) if len(lses) > 1 else lses[0])


# bf16 and fp16 run SDPA's CPU flash kernel through brgemm kernels, compiled per block shape
# into a cache torch never trims (see _lse_attention); fp32 runs plain gemm calls.
CPU_BRGEMM_DTYPES = (torch.bfloat16, torch.float16)
CPU_FLASH_KEY_BLOCK = 32  # keys; the kernel splits keys into blocks of 512, the tail compiles per length


def cpu_flash_key_columns(n: int, block: int = CPU_FLASH_KEY_BLOCK) -> int:
    """n keys rounded up to whole blocks of `block` keys: a key tail (n mod 512) takes 16
    lengths instead of 512. The cascade's own keys are as many as its batch is wide, and a full
    MMLU run meets most widths up to 2,048. Blocks of 32 rather than 64: a narrow batch's own
    part is not doubled, and 16 tails x 3 query blocks stay within 10 MiB (docs/model.md, "CPU
    kernels: bounded caches, padding and row blocks")."""
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


def _pad_rows(x: Tensor, rows: int) -> Tensor:
    """x [B, H or 1, M, N] with zero rows appended to `rows` along dim 2 (queries, mask rows,
    or keys and values)."""
    padded = x.new_zeros(*x.shape[:2], rows, x.shape[3])
    padded[:, :, :x.shape[2]] = x
    return padded


def _dense(x: Tensor) -> Tensor:
    """A dense copy of a cut tensor in its own stride order: the layout the kernel returns
    without padding (its lse is [B, M, H] in memory). The cascade's merge takes exp of the lse,
    and torch's exp can differ by an ulp between memory layouts."""
    order = sorted(range(x.dim()), key=lambda i: -x.stride(i))
    return x.permute(order).contiguous().permute([order.index(i) for i in range(x.dim())])


def _lse_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Attention [B, H, M, d] with equal head counts and an optional additive mask [B, 1, M, N],
    returning (out, lse [B, H, M] fp32) from SDPA's own fused kernels.

    On CPU in bf16/fp16 the queries are padded to whole blocks of the kernel (zero queries, their
    rows cut off after). The kernel compiles a brgemm kernel for each new (query block, key block)
    shape into a cache torch never trims; a scoring run meets a new query count at nearly every
    batch, so a full bf16 MMLU run grew by hundreds of MB. With whole query blocks the shapes
    come from the key lengths only: the prefixes' (a few per task) and the own keys', which
    cpu_cascade pads to whole blocks of 32 (figures in docs/model.md, "CPU kernels: bounded
    caches, padding and row blocks"). fp32 runs through plain gemm calls, no cache, and is left
    exact as it was."""
    op = getattr(torch.ops.aten, SDPA_LSE_OPS[q.device.type])
    if q.device.type == "cpu":
        m = q.shape[2]
        rows = cpu_flash_query_rows(m) if q.dtype in CPU_BRGEMM_DTYPES else m
        if rows == m:
            return op(q, k, v, 0.0, False, attn_mask=mask)
        if mask is not None:
            mask = _pad_rows(mask, rows)
        out, lse = op(_pad_rows(q, rows), k, v, 0.0, False, attn_mask=mask)[:2]
        return _dense(out[:, :, :m]), _dense(lse[:, :, :m])
    bias = None if mask is None else mask.expand(q.shape[0], q.shape[1], -1, -1)
    out, lse = op(q, k, v, bias, True)[:2]
    return out, lse[..., :q.shape[2]]  # the kernel pads the lse to a multiple of 32 queries


class FlashKernel:
    """flash-attn (CUDA, fp16/bf16); the one mask it cannot express goes to SDPA (see above)."""

    def causal(self, q, k, v, window, meta):
        return flash_attn_func(q, k, v, causal=True, window_size=(window - 1, 0) if window else (-1, -1))

    def part(self, q, seg, window, meta, lse):
        b, t, h, d = q.shape
        if seg.shared:
            if window:  # a window relative to each row's own offset: not expressible in flash-attn
                return SdpaKernel()._part_lse(q, seg, window, meta)
            out, out_lse = flash_attn_with_kvcache(q.reshape(1, b * t, h, d), seg.keys, seg.values,
                                                   cache_seqlens=seg.keys.shape[1], causal=False,
                                                   return_softmax_lse=True)
            return out.view(b, t, h, d), out_lse.view(h, b, t).permute(1, 2, 0)
        # each row's columns [0, positions[b, -1] - start], causal aligned to its last query
        seqlens = (meta.positions[:, -1] - seg.start + 1).to(torch.int32)
        result = flash_attn_with_kvcache(q, seg.keys, seg.values, cache_seqlens=seqlens, causal=True,
                                         window_size=(window - 1, 0) if window else (-1, -1),
                                         return_softmax_lse=lse)
        if lse:
            out, out_lse = result
            return out, out_lse.transpose(1, 2)
        return result, None


@functools.lru_cache(maxsize=None)
def _flex_function(device_type: str):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True) if device_type == "cuda" else flex_attention


class FlexKernel:
    """FlexAttention with a mask_mod of the one rule; block masks built once per forward."""

    def causal(self, q, k, v, window, meta):
        return self.part(q, KVSegment(k, v, 0), window, meta, lse=False)[0]

    def part(self, q, seg, window, meta, lse):
        from torch.nn.attention.flex_attention import AuxRequest, create_block_mask

        b, t, h, d = q.shape
        n = seg.keys.shape[1]
        device = q.device
        # positions as tensors, so a compiled kernel does not specialise (and recompile) on them
        start = torch.tensor(seg.start, device=device)
        window_t = torch.tensor(window, device=device)
        if seg.shared:  # every row's queries as one sequence against the one copy of the keys
            q_pos = meta.positions.reshape(1, -1)
            qx = q.reshape(1, b * t, h, d)
        else:
            q_pos, qx = meta.positions, q

        def mask_mod(bi, hi, qi, ki):
            p = q_pos[bi, qi]
            ok = ki + start <= p
            if window:
                ok = ok & (ki + start > p - window_t)
            return ok

        rows = q_pos.shape[0]
        block_mask = meta.cached(("flex", seg.start, n, window, seg.shared),
                                 lambda: create_block_mask(mask_mod, rows, None, q_pos.shape[1], n, device=device))
        with warnings.catch_warnings():  # eager on CPU: flex warns that it is unfused, as we know
            warnings.simplefilter("ignore", UserWarning)
            result = _flex_function(device.type)(
                qx.transpose(1, 2), seg.keys.transpose(1, 2), seg.values.transpose(1, 2), block_mask=block_mask,
                enable_gqa=qx.shape[2] != seg.keys.shape[2], return_aux=AuxRequest(lse=True) if lse else None)
        if lse:
            out, aux = result
            out_lse = aux.lse  # [rows, H, L], natural log
        else:
            out, out_lse = result, None
        out = out.transpose(1, 2).reshape(b, t, h, d)
        if out_lse is not None:
            out_lse = out_lse.transpose(1, 2).reshape(b, t, h).float()
        return out, out_lse


_KERNEL_IMPLS = {"math": MathKernel(), "sdpa": SdpaKernel(), "flash": FlashKernel(), "flex": FlexKernel()}
