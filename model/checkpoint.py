"""One entry point for every checkpoint format the harness reads (what `model.path` accepts).

    model = from_pretrained("/ckpt/Qwen-14B")                       # a Qwen-1 or Hugging Face Qwen2 folder
    model = from_pretrained("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")  # a llama.cpp GGUF file (or its folder)
    model = from_pretrained("Qwen/Qwen2.5-7B", device="cuda")        # a hub id already in the local cache
"""

from __future__ import annotations

from pathlib import Path

import torch

from qwen_eval.model import gguf, loading
from qwen_eval.model.devices import resolve_device, resolve_dtype
from qwen_eval.model.model import Qwen


def from_pretrained(path: str | Path, dtype: torch.dtype | str | None = None,
                    device: torch.device | str | None = None) -> Qwen:
    """The model of a checkpoint in any format `model.path` takes, in eval mode. dtype
    None/"auto": bf16 on CUDA, fp32 on CPU (a GGUF's quantized tensors are dequantized to it);
    device None/"auto": CUDA when available."""
    gguf_file = gguf.find_gguf(path)
    if gguf_file is None:
        return loading.from_pretrained(path, dtype=dtype, device=device)
    target_device = resolve_device(None if device is None else str(device))
    target_dtype = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, target_device)
    return gguf.from_gguf(gguf_file, target_dtype, target_device)
