"""The math kernel: attention written out in plain PyTorch, the reference to read first.

    scores = q @ k^T / sqrt(hd)            # fp32, [B, kv, T*g, N] (g query heads per kv head)
    scores[key not visible] = -inf         # the one rule (masks.visible)
    out = softmax(scores) @ v              # with lse = log(sum(exp(scores))) per query

It runs on any device and in any dtype (computing in fp32), over blocks of queries so the score
block stays bounded. Every other kernel is tested against it; it is slow, and never chosen by auto.
"""

from __future__ import annotations

import math

import torch

from qwen_eval.model.attention.kernel import Kernel
from qwen_eval.model.attention.masks import fold_heads, query_block, segment_visible, unfold_heads


class MathKernel(Kernel):
    """The reference: fp32 scores and softmax, written out, over blocks of queries."""

    name = "math"

    def part(self, q, seg, window, meta, lse):
        b, t, h, d = q.shape
        k, v = seg.keys, seg.values
        kv, n = k.shape[2], k.shape[1]
        g = h // kv
        kt = k.float().permute(0, 2, 3, 1)  # [Bk, kv, d, n]; Bk = 1 broadcasts over rows
        vh = v.float().transpose(1, 2)  # [Bk, kv, n, d]
        block = query_block(t, b * h * n)
        outs, lses = [], []
        for s in range(0, t, block):
            qb = fold_heads(q[:, s:s + block].float(), kv)  # [B, kv, tb*g, d]
            tb = qb.shape[2] // g
            scores = (qb @ kt) / math.sqrt(d)  # [B, kv, tb*g, n]
            vis = segment_visible(meta, seg, window, s, s + block)  # [B, tb, n]
            scores = scores.view(b, kv, tb, g, n).masked_fill(~vis[:, None, :, None, :], float("-inf"))
            scores = scores.view(b, kv, tb * g, n)
            # a query that sees no key of this segment (a window ending before it) gets max 0, so
            # its row stays finite: out 0 and lse -inf, which the merge weighs as nothing
            m = scores.amax(-1, keepdim=True)
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            p = torch.exp(scores - m)
            total = p.sum(-1, keepdim=True)
            out = (p @ vh) / total.clamp_min(torch.finfo(torch.float32).tiny)
            outs.append(unfold_heads(out, tb))
            lses.append(unfold_heads((m + torch.log(total))[..., 0], tb))
        out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        out_lse = torch.cat(lses, dim=1) if len(lses) > 1 else lses[0]
        return (out if lse else out.to(q.dtype)), (out_lse if lse else None)
