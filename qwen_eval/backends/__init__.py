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

import time
from typing import Any, Mapping

from qwen_eval.backends.base import Backend, unsupported
from qwen_eval.errors import UserError

__all__ = ["BACKENDS", "Backend", "build", "unsupported"]

BACKENDS = ("qwen", "hf", "replay", "openai", "vllm")


def build(model_cfg: Mapping[str, Any], *, seed: int = 1234) -> Backend:
    """The backend named by `model.backend`, built from the `model` config group; its
    `load_seconds` says how long that took (results.json timing)."""
    start = time.perf_counter()
    backend = _build(model_cfg, seed=seed)
    backend.load_seconds = time.perf_counter() - start
    return backend


def _build(model_cfg: Mapping[str, Any], *, seed: int) -> Backend:
    kind = model_cfg.get("backend")
    if int(model_cfg.get("replicas") or 1) > 1:
        from qwen_eval.backends.replicas import ReplicaPool
        return ReplicaPool(model_cfg, build, seed=seed)
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
