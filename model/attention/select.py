"""Choosing the attention kernel: `model.attention` resolved once per device and dtype, by name,
never by a fallback (a kernel that cannot run here is an error naming the option).

  math   the reference in plain PyTorch (math.py), any device; slow, never chosen by auto.
  sdpa   torch's scaled_dot_product_attention (sdpa.py); cpu and cuda.
  flash  flash-attn >= 2.6 (flash.py); CUDA, fp16/bf16.
  flex   FlexAttention (flex.py); compiled on CUDA, eager and slow on CPU.
  auto   CPU: sdpa, the fastest kernel there. CUDA: flash when flash-attn can run (installed, and
         the dtype is fp16/bf16), else sdpa.
"""

from __future__ import annotations

import torch

from qwen_eval.model.attention.flash import FlashKernel
from qwen_eval.model.attention.flex import FlexKernel
from qwen_eval.model.attention.kernel import Kernel
from qwen_eval.model.attention.math import MathKernel
from qwen_eval.model.attention.sdpa import SdpaKernel

KERNELS = ("auto", "sdpa", "flash", "flex", "math")
_IMPLEMENTATIONS: dict[str, Kernel] = {k.name: k for k in (SdpaKernel(), FlashKernel(), FlexKernel(), MathKernel())}


class AttentionUnavailable(ValueError):
    """The kernel asked for by name cannot run here (the message names the option)."""


def resolve_kernel(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """The kernel `model.attention=name` runs on this device and dtype (auto: one fixed choice per
    device). Raises AttentionUnavailable, naming the option, when it cannot run here."""
    if name not in KERNELS:
        raise AttentionUnavailable(f"model.attention={name!r} is not a kernel; use one of {', '.join(KERNELS)}")
    device = torch.device(device)
    if name == "auto":
        flash = _IMPLEMENTATIONS["flash"]
        return "flash" if device.type == "cuda" and flash.unavailable(device, dtype) is None else "sdpa"
    problem = _IMPLEMENTATIONS[name].unavailable(device, dtype)
    if problem:
        raise AttentionUnavailable(f"model.attention={name}: {problem}; use model.attention=auto")
    return name


def kernel_named(name: str) -> Kernel:
    """The implementation of a resolved kernel name (AttentionMeta.kernel)."""
    return _IMPLEMENTATIONS[name]
