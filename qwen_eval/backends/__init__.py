"""Backends answer requests. One small interface (qwen_eval.backends.base.Backend); any backend
serves any task.

    choice(requests)   -> list[ChoiceResult]
    generate(requests) -> list[GenerateResult]
    rolling(requests)  -> list[RollingResult]

A backend that cannot answer a request type raises UserError naming the type and the backend.
`fingerprint` identifies everything that changes answers (weights, dtype, numerics options); the
cache is keyed by it.
"""

from __future__ import annotations

from typing import Any, Mapping

from qwen_eval.backends.base import Backend, unsupported
from qwen_eval.errors import UserError

__all__ = ["BACKENDS", "Backend", "build", "unsupported"]

BACKENDS = ("qwen", "hf", "replay", "openai", "vllm")


def build(model_cfg: Mapping[str, Any], *, seed: int = 1234) -> Backend:
    """The backend named by `model.backend`, built from the `model` config group."""
    kind = model_cfg.get("backend")
    if int(model_cfg.get("replicas") or 1) > 1:
        from qwen_eval.backends.replicas import ReplicaPool
        return ReplicaPool(model_cfg, seed=seed)
    if kind == "qwen":
        from qwen_eval.backends.qwen import QwenBackend
        return QwenBackend.from_config(model_cfg, seed=seed)
    if kind == "hf":
        from qwen_eval.backends.hf import HFBackend
        return HFBackend.from_config(model_cfg, seed=seed)
    if kind == "replay":
        from qwen_eval.backends.replay import ReplayBackend
        return ReplayBackend.from_config(model_cfg)
    if kind == "openai":
        from qwen_eval.backends.openai import OpenAIBackend
        return OpenAIBackend.from_config(model_cfg)
    if kind == "vllm":
        from qwen_eval.backends.vllm import VLLMBackend
        return VLLMBackend.from_config(model_cfg, seed=seed)
    raise UserError(f"model.backend={kind!r} is not a backend; valid: {', '.join(BACKENDS)}")
