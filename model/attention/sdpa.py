"""The sdpa kernel: torch's scaled_dot_product_attention, and SDPA's own kernels that also return
each query's log-sum-exp for the cascade's parts.

The public function returns no log-sum-exp, so a part that must be merged runs SDPA's kernel that
does (SDPA_LSE_OPS): on CPU `_scaled_dot_product_flash_attention_for_cpu`, on CUDA
`_scaled_dot_product_efficient_attention` (the memory-efficient kernel, masks as a bias). On CUDA a
masked call folds grouped-query heads into the query length, since the memory-efficient kernel
takes no GQA and SDPA would otherwise run its math backend. On CPU it is the fastest kernel and
the one auto chooses there (docs/model.md, "Attention: phases and kernels").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from qwen_eval.model.attention import cpu_blocks, masks
from qwen_eval.model.attention.kernel import Kernel
from qwen_eval.model.attention.masks import fold_heads, fold_rows, segment_visible, unfold_heads, unfold_rows, whole

# SDPA's kernels that also return each query's log-sum-exp (the cascade's parts merge with it)
SDPA_LSE_OPS = {"cpu": "_scaled_dot_product_flash_attention_for_cpu", "cuda": "_scaled_dot_product_efficient_attention"}


def _sdpa(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
    """SDPA on [B, T, H, hd] tensors. Grouped-query heads: SDPA's enable_gqa on CPU; on CUDA a
    masked call folds them into the queries (the memory-efficient kernel takes no GQA)."""
    gqa = q.shape[2] != k.shape[2]
    if gqa and mask is not None and q.is_cuda:
        kv, t = k.shape[2], q.shape[1]
        g = q.shape[2] // kv
        mask = mask[:, :, :, None, :].expand(-1, -1, -1, g, -1).reshape(mask.shape[0], 1, -1, mask.shape[-1])
        out = F.scaled_dot_product_attention(fold_heads(q, kv), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=mask)
        return unfold_heads(out, t)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask, is_causal=is_causal, enable_gqa=gqa)
    return out.transpose(1, 2)


def float_mask(vis: Tensor, dtype: torch.dtype, g: int, align: int = 1, columns: int | None = None) -> Tensor:
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


def lse_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Attention [B, H, M, d] with equal head counts and an optional additive mask [B, 1, M, N],
    returning (out, lse [B, H, M] fp32) from SDPA's own fused kernels (on CPU with the queries in
    whole kernel blocks, cpu_blocks.flash_attention)."""
    op = getattr(torch.ops.aten, SDPA_LSE_OPS[q.device.type])
    if q.device.type == "cpu":
        return cpu_blocks.flash_attention(op, q, k, v, mask)
    bias = None if mask is None else mask.expand(q.shape[0], q.shape[1], -1, -1)
    out, lse = op(q, k, v, bias, True)[:2]
    return out, lse[..., :q.shape[2]]  # the kernel pads the lse to a multiple of 32 queries


def part_lse(q: Tensor, seg, window: int, meta) -> tuple[Tensor, Tensor]:
    """One segment's attention and log-sum-exp through SDPA's log-sum-exp kernel, over blocks of
    queries; a shared segment takes every row's queries as one sequence (its keys read once)."""
    b, t, h, d = q.shape
    kv, n = seg.keys.shape[2], seg.keys.shape[1]
    g = h // kv
    k, v = seg.keys.transpose(1, 2), seg.values.transpose(1, 2)  # [Bk, kv, n, d]
    rows = 1 if seg.shared else b  # the shared segment: all rows' queries as one sequence
    block = masks.query_block(t, b * g * n)
    outs, lses = [], []
    for s in range(0, t, block):
        e = min(t, s + block)
        qb = q[:, s:e]
        qf = fold_rows(qb, kv) if seg.shared else fold_heads(qb, kv)
        mask = None
        if not (seg.shared and not window):  # every prefix key is visible without a window
            vis = segment_visible(meta, seg, window, s, e)  # [B, tb, n]
            align = 16 if q.is_cuda else 1
            build = lambda: float_mask(vis.reshape(rows, -1, n), q.dtype, g, align)  # noqa: E731
            mask = meta.cached(("float", seg.start, n, window, g, rows), build) if whole(meta, s, e) else build()
        out, out_lse = lse_attention(qf, k, v, mask)
        unfold = (lambda x: unfold_rows(x, b, e - s)) if seg.shared else (lambda x: unfold_heads(x, e - s))
        outs.append(unfold(out))
        lses.append(unfold(out_lse))
    return (torch.cat(outs, dim=1) if len(outs) > 1 else outs[0],
            torch.cat(lses, dim=1) if len(lses) > 1 else lses[0])


class SdpaKernel(Kernel):
    """torch SDPA; for the cascade's parts, SDPA's kernels that also return the log-sum-exp."""

    name = "sdpa"

    def unavailable(self, device, dtype):
        if device.type not in SDPA_LSE_OPS:
            return f"the sdpa kernel supports cpu and cuda (the model is on {device.type})"
        op = SDPA_LSE_OPS[device.type]
        if not hasattr(torch.ops.aten, op):
            return f"this torch has no aten.{op} (the log-sum-exp kernel of the shared-prefix path)"
        return None

    def causal(self, q, k, v, window, meta):
        if not window:
            return _sdpa(q, k, v, is_causal=True)
        return super().causal(q, k, v, window, meta)

    def part(self, q, seg, window, meta, lse):
        if lse:
            return part_lse(q, seg, window, meta)
        return self._masked(q, seg, window, meta), None

    def _masked(self, q, seg, window, meta):
        """Blocks of queries, each against the key columns its queries can see."""
        b, t = q.shape[:2]
        k, v = seg.keys, seg.values
        n = k.shape[1]
        block = masks.query_block(t, b * n)
        outs = []
        for s in range(0, t, block):
            e = min(t, s + block)
            hi = meta.max_start + e - seg.start  # one past the last column the block's queries see
            lo = max(0, meta.min_start + s - seg.start - window + 1) if window else 0
            vis = segment_visible(meta, seg, window, s, e)[:, :, lo:hi]
            outs.append(_sdpa(q[:, s:e], k[:, lo:hi], v[:, lo:hi], mask=vis[:, None]))
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]

    def cascade(self, q, segments, window, meta):
        """On CPU without a window, the two parts merged in the folded layout the kernels return
        rather than by the generic merge: that one unfolds the parts to [B, T, H] first, and
        torch's elementwise exp can round an ulp differently over another memory layout, so this
        layout keeps the CPU numbers those the committed CPU results were computed with. In
        bf16/fp16 the own keys are padded to whole blocks of 32 (cpu_blocks.cpu_flash_key_columns),
        so the CPU flash kernel compiles a kernel per 32-key tail rather than per batch width. A
        window, CUDA, or an own-key mask larger than one block (which the generic merge splits
        into query blocks) takes the generic merge."""
        if q.device.type != "cpu" or window:
            return super().cascade(q, segments, window, meta)
        prefix, own = segments
        b, t, h, d = q.shape
        kv, n = prefix.keys.shape[2], own.keys.shape[1]
        g = h // kv
        columns = cpu_blocks.cpu_flash_key_columns(n) if q.dtype in cpu_blocks.CPU_BRGEMM_DTYPES else n
        if not masks.fits_one_block(b * t * g * columns):
            return super().cascade(q, segments, window, meta)
        qg = q.reshape(b, t, kv, g, d)  # query head = kv head * g + j
        out_p, lse_p = lse_attention(qg.permute(2, 0, 1, 3, 4).reshape(1, kv, b * t * g, d),
                                     prefix.keys.transpose(1, 2), prefix.values.transpose(1, 2), None)
        out_p = out_p.view(kv, b, t * g, d).transpose(0, 1)  # [B, kv, t*g, d]
        lse_p = lse_p.view(kv, b, t * g).transpose(0, 1)
        vis = segment_visible(meta, own, 0)
        mask = meta.cached(("float", own.start, n, 0, g, b, columns),
                           lambda: float_mask(vis, q.dtype, g, columns=columns))
        k, v = own.keys.transpose(1, 2), own.values.transpose(1, 2)
        if columns != n:
            k, v = cpu_blocks.pad_rows(k, columns), cpu_blocks.pad_rows(v, columns)
        out_o, lse_o = lse_attention(qg.permute(0, 2, 1, 3, 4).reshape(b, kv, t * g, d), k, v, mask)
        lse = torch.logaddexp(lse_p.float(), lse_o.float())
        out = out_p.float() * torch.exp(lse_p - lse)[..., None] + out_o.float() * torch.exp(lse_o - lse)[..., None]
        return out.view(b, kv, t, g, d).permute(0, 2, 1, 3, 4).reshape(b, t, h, d).to(q.dtype)
