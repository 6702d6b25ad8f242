"""Tiny random Qwen models and checkpoints for the model, loading and engine tests."""

from __future__ import annotations

from pathlib import Path

import torch

from qwen_eval.model.loading import save_checkpoint
from qwen_eval.model.model import Qwen, QwenConfig, init_weights

REAL_VOCAB = 151936  # Qwen-7B's embedding rows: the 151,851 tokenizer ids plus padding rows

# Real text for prompts (tokenised with the real vocabulary).
PROMPTS = (
    "The capital of France is Paris. The capital of Germany is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n",
    "问题：小明有3个苹果，又买了5个，他现在一共有几个苹果？\n答案：",
)


def tiny_config(**overrides) -> QwenConfig:
    """A few-layer config: MHA, untied, NTK and LogN on (as Qwen-14B), a 96-token seq_length."""
    values = dict(vocab_size=REAL_VOCAB, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=96,
                  seq_length=96)
    values.update(overrides)
    return QwenConfig(**values)


def random_model(cfg: QwenConfig, seed: int = 0) -> Qwen:
    """Qwen's initialisation, then noise on the norm gains and q/k/v biases (zeros and ones
    there would hide a mapping mistake), in fp32, eval mode."""
    model = init_weights(Qwen(cfg), seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval().requires_grad_(False)


def write_checkpoint(model: Qwen, directory: Path, **kwargs) -> Path:
    """save_checkpoint with small shards by default (several shards even for tiny models)."""
    kwargs.setdefault("max_shard_bytes", 4 << 20)
    return save_checkpoint(model, directory, **kwargs)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())
