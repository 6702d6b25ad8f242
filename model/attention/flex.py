"""The flex kernel: torch.nn.attention.flex_attention with a mask_mod of the one rule, and its
log-sum-exp for the cascade.

Compiled on CUDA. On CPU torch 2.13 cannot compile it for these masks (return_lse is unsupported
there and the C++ code generation fails for per-row masks), so it runs eagerly: correct, unfused,
slow; for checking only.
"""

from __future__ import annotations

import functools
import warnings

import torch

from qwen_eval.model.attention.kernel import Kernel


@functools.lru_cache(maxsize=None)
def _flex_function(device_type: str):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True) if device_type == "cuda" else flex_attention


class FlexKernel(Kernel):
    """FlexAttention with a mask_mod of the one rule; block masks built once per forward."""

    name = "flex"

    def unavailable(self, device, dtype):
        try:
            import torch.nn.attention.flex_attention  # noqa: F401
        except ImportError as e:
            return f"this torch has no FlexAttention ({e})"
        if device.type not in ("cpu", "cuda"):
            return f"flex runs on cpu and cuda here (the model is on {device.type})"
        return None

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

