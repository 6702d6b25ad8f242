"""The flash kernel: flash-attn (CUDA, fp16/bf16).

flash_attn_func for the fresh phase; flash_attn_with_kvcache for cached rows (each row's own
length, causal bottom-right alignment) and for the shared prefix (every row's queries as one
sequence). A window reaching into a shared prefix is the one mask flash-attn cannot express (its
window is relative to one query offset per row); that part runs SDPA's memory-efficient kernel
(sdpa.part_lse).
"""

from __future__ import annotations

import inspect

import torch

from qwen_eval.model.attention.kernel import Kernel
from qwen_eval.model.attention.sdpa import part_lse

try:  # optional, CUDA only
    from flash_attn import flash_attn_func, flash_attn_with_kvcache
except Exception:  # ImportError, or a broken CUDA build
    flash_attn_func = flash_attn_with_kvcache = None


class FlashKernel(Kernel):
    """flash-attn (CUDA, fp16/bf16); the one mask it cannot express goes to SDPA (see above)."""

    name = "flash"

    def unavailable(self, device, dtype):
        if device.type != "cuda":
            return f"flash-attn runs on CUDA only (the model is on {device.type})"
        if flash_attn_func is None:
            return "flash-attn is not installed (pip install -e '.[flash]')"
        if dtype not in (torch.float16, torch.bfloat16):
            return f"flash-attn needs float16 or bfloat16 (the model is {str(dtype).removeprefix('torch.')})"
        if "return_softmax_lse" not in inspect.signature(flash_attn_with_kvcache).parameters:
            return "the installed flash-attn is too old (flash_attn_with_kvcache has no return_softmax_lse; need >= 2.6)"
        return None

    def causal(self, q, k, v, window, meta):
        return flash_attn_func(q, k, v, causal=True, window_size=(window - 1, 0) if window else (-1, -1))

    def part(self, q, seg, window, meta, lse):
        b, t, h, d = q.shape
        if seg.shared:
            if window:  # a window relative to each row's own offset: not expressible in flash-attn
                return part_lse(q, seg, window, meta)
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
