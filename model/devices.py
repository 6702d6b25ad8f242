"""Where and in what precision the model runs: `model.device` and `model.dtype` as torch objects.

Shared by the checkpoint loader, the bundled backend and the transformers backend, so `auto` means
the same everywhere: CUDA when available, and there bf16 where supported (fp16 otherwise), fp32 on
a CPU.
"""

from __future__ import annotations

import torch

from qwen_eval.errors import UserError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"model.device={name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"model.device={name} but CUDA is not available here; use model.device=cpu")
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """auto: bf16 on a CUDA device that supports it (fp16 otherwise), fp32 on CPU."""
    if name in (None, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise UserError(f"model.dtype={name!r} is not supported; use auto, float32, bfloat16 or float16")
    return DTYPES[name]
