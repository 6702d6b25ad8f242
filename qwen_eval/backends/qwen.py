"""The bundled Qwen backend: `model=tiny`, `model=qwen-14b`, `model=qwen-7b`, or any `model.path`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from qwen_eval.backends.base import Backend
from qwen_eval.errors import UserError
from qwen_eval.provenance import folder_identity, gguf_identity
from qwen_eval.model.devices import resolve_device, resolve_dtype
from qwen_eval.model.engine import Engine
from qwen_eval.model.host_memory import bound_kernel_caches, release_free_memory
from qwen_eval.model.linear import pack_cpu_linears, parameter_count
from qwen_eval.model.loading import weights_fingerprint
from qwen_eval.model.attention import AttentionUnavailable, resolve_kernel
from qwen_eval.model.model import Qwen, QwenConfig, random_qwen, resolve_window_attn
from qwen_eval.model.tokenizer import load_tokenizer
from qwen_eval.requests import Choice, ChoiceResult, Generate, GenerateResult, Rolling, RollingResult

ENGINE_VERSION = "1"  # bump when a change to the engine changes answers (invalidates cached ones)


def build_tiny(seed: int = 0, **overrides) -> Qwen:
    """The seeded random tiny Qwen (real vocabulary, a few million parameters besides embeddings)."""
    return random_qwen(QwenConfig.preset("tiny", **overrides), seed)


@dataclasses.dataclass
class Loaded:
    """A checkpoint in memory with what it says about itself."""

    model: Qwen
    tokenizer: Any
    weights_id: str
    stop_token_ids: tuple[int, ...]  # declared by the checkpoint (eos ids)
    chat_template: str | None = None
    checkpoint_format: str = "tiny"  # "qwen" (Qwen-1) or "qwen2"
    identity: dict[str, Any] = dataclasses.field(default_factory=dict)  # provenance.checkpoint_identity


@dataclasses.dataclass
class CheckpointInfo:
    """What a checkpoint says about itself, read before (or without) its weights: what the bundled
    engine loads beside them, and what model=vllm hands vLLM with its own copy of them."""

    tokenizer: Any
    weights_id: str
    stop_token_ids: tuple[int, ...]  # declared by the checkpoint (eos ids)
    chat_template: str | None
    checkpoint_format: str  # "qwen" (Qwen-1) or "qwen2"
    identity: dict[str, Any]  # provenance.checkpoint_identity
    gguf: Any = None  # the opened GGUFCheckpoint, for a .gguf path
    directory: Path | None = None  # the checkpoint folder, for any other path


def read_checkpoint(path: str, cfg: Mapping[str, Any]) -> CheckpointInfo:
    """`model.path`: a .gguf file (or a folder holding one), or a Qwen-1 / Hugging Face checkpoint
    folder (or a hub id already in the local cache). `model.tokenizer_path` overrides the tokenizer."""
    from qwen_eval.model.gguf import find_gguf, gguf_tokenizer, open_gguf

    gguf_file = find_gguf(path)
    if gguf_file is not None:
        ckpt = open_gguf(gguf_file)
        tokenizer = (load_tokenizer(None, cfg["tokenizer_path"]) if cfg.get("tokenizer_path")
                     else gguf_tokenizer(ckpt))
        return CheckpointInfo(tokenizer, weights_fingerprint(gguf_file), ckpt.stop_token_ids, ckpt.chat_template,
                              ckpt.arch, gguf_identity(gguf_file, ckpt.metadata), gguf=ckpt)
    from qwen_eval.chat import checkpoint_template
    from qwen_eval.model.loading import checkpoint_format, declared_eos_ids, read_config_json, resolve_checkpoint

    directory = Path(resolve_checkpoint(path))
    config = read_config_json(directory)
    fmt = checkpoint_format(config, directory)
    return CheckpointInfo(load_tokenizer(directory, cfg.get("tokenizer_path")), weights_fingerprint(directory),
                          declared_eos_ids(directory), checkpoint_template(directory), fmt,
                          folder_identity(directory, config, fmt), directory=directory)


def load_checkpoint(path: str, cfg: Mapping[str, Any], dtype: torch.dtype, device: torch.device) -> Loaded:
    """read_checkpoint(path, cfg), and the weights in `dtype` on `device`."""
    from qwen_eval.model.gguf import from_gguf
    from qwen_eval.model.loading import from_pretrained

    info = read_checkpoint(path, cfg)
    model = (from_gguf(info.gguf, dtype, device) if info.gguf is not None
             else from_pretrained(info.directory, dtype=dtype, device=device))
    loaded = Loaded(model, info.tokenizer, info.weights_id, info.stop_token_ids, info.chat_template,
                    info.checkpoint_format, info.identity)
    if cfg.get("seq_length"):  # where NTK/LogN begin, for any checkpoint (a Qwen-1 GGUF drops it)
        loaded.model.config.seq_length = int(cfg["seq_length"])
    return loaded


def stop_token_ids(setting: Any, declared: Sequence[int], tokenizer) -> tuple[int, ...]:
    """`model.stop_token_ids`: null = the checkpoint's declared eos ids plus <|endoftext|>;
    a list = exactly those ids."""
    if setting is None:
        return tuple(dict.fromkeys([*declared, tokenizer.eod_id]))
    if isinstance(setting, (int, str)):
        setting = [setting]
    try:
        ids = tuple(int(i) for i in setting)
    except (TypeError, ValueError):
        raise UserError(f"model.stop_token_ids={setting!r}: give null or a list of token ids, e.g. [151645,151643]") from None
    bad = [i for i in ids if not 0 <= i < tokenizer.vocab_size]
    if bad:
        raise UserError(f"model.stop_token_ids: {bad[0]} is not a token id of this tokenizer "
                        f"(0..{tokenizer.vocab_size - 1})")
    return ids


class QwenBackend(Backend):
    def __init__(self, engine: Engine, *, name: str, path: str | None, fingerprint: str):
        self.engine = engine
        self.name = name
        self.path = path
        self.max_length = engine.max_length
        self.fingerprint = fingerprint
        self.checkpoint: dict[str, Any] = {}  # provenance.checkpoint_identity of the weights
        self.packed_layers = 0  # linear layers whose weights are packed for oneDNN (model/linear.py)
        self.attention = engine.model.attention_kernel()  # the kernel model.attention resolved to here
        weight = engine.model.embed.weight  # never packed (model/linear.py)
        self.device, self.dtype = str(weight.device), str(weight.dtype).removeprefix("torch.")

    @property
    def tokens_processed(self) -> int:
        return self.engine.tokens_processed

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, seed: int = 1234) -> "QwenBackend":
        device = resolve_device(cfg.get("device"))
        dtype = resolve_dtype(cfg.get("dtype"), device)
        if device.type == "cpu":  # before the first matmul: the caches read their capacity once
            bound_kernel_caches()
        attention = str(cfg.get("attention") or "auto")
        try:  # before any weights are read: a kernel that cannot run here is the one-line error
            resolve_kernel(attention, device, dtype)
        except AttentionUnavailable as e:
            raise UserError(str(e)) from None
        preset = cfg.get("preset")
        path = cfg.get("path")
        if preset == "tiny" and not path:
            model = build_tiny(int(cfg.get("init_seed", 0)))
            seed_id = f"tiny-seed{int(cfg.get('init_seed', 0))}"
            loaded = Loaded(model, load_tokenizer(None, cfg.get("tokenizer_path")), seed_id, (),
                            identity={"name": "tiny", "source_name": seed_id, "format": "random (built in memory)",
                                      "quantization": None, "files": [], "sha256": None})
        else:
            if not path:
                raise UserError(f"model={cfg.get('name')} needs model.path=DIR (a local checkpoint folder or .gguf file)")
            loaded = load_checkpoint(str(path), cfg, dtype, device)
        model, tokenizer, weights_id = loaded.model, loaded.tokenizer, loaded.weights_id
        mc = model.config
        for key in ("use_dynamic_ntk", "use_logn_attn"):
            if cfg.get(key) is not None:
                setattr(mc, key, bool(cfg[key]))
        # resolved once, here: the config then holds the sizes every forward uses and describe() reports
        mc.window_attn = resolve_window_attn(cfg.get("window_attn"), mc.num_layers, mc.seq_length,
                                             option="model.window_attn")
        model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        model.set_attention(attention)
        packed = 0
        if cfg.get("packed_weights", True) is not False and device.type == "cpu":
            packed = pack_cpu_linears(model)  # bf16 only; bitwise the same results
        max_length = int(cfg.get("max_length") or mc.seq_length)
        stops = stop_token_ids(cfg.get("stop_token_ids"), loaded.stop_token_ids, tokenizer)
        batch_tokens = cfg.get("max_batch_tokens")  # null: the engine's own default
        engine = Engine(model, tokenizer, max_length=max_length, seed=seed, stop_token_ids=stops,
                        **({"max_batch_tokens": int(batch_tokens)} if batch_tokens else {}))
        numerics = {"config": dataclasses.asdict(mc), "dtype": str(dtype), "max_length": max_length,
                    "weights": weights_id, "engine": ENGINE_VERSION, "seed": seed, "stop_token_ids": list(stops)}
        fingerprint = hashlib.sha256(json.dumps(numerics, sort_keys=True, default=str).encode()).hexdigest()[:16]
        backend = cls(engine, name=str(cfg.get("name") or "qwen"), path=path, fingerprint=fingerprint)
        backend.chat_template = loaded.chat_template
        backend.checkpoint_format = loaded.checkpoint_format
        backend.checkpoint = loaded.identity
        backend.packed_layers = packed
        return backend

    def describe(self) -> dict[str, Any]:
        cfg = self.engine.model.config
        return {"name": self.name, "backend": "qwen", "path": self.path, "dtype": self.dtype,
                "device": self.device, "fingerprint": self.fingerprint,
                "parameters": parameter_count(self.engine.model), "packed_weights": self.packed_layers,
                "seq_length": cfg.seq_length, "use_dynamic_ntk": cfg.use_dynamic_ntk,
                "use_logn_attn": cfg.use_logn_attn, "window_attn": list(cfg.window_attn) if cfg.window_attn else None,
                "stop_token_ids": sorted(self.engine.stop_token_ids), "attention": self.attention,
                "checkpoint": self.checkpoint}

    def special_tokens(self) -> dict[str, str | None]:
        tokenizer = self.engine.tokenizer
        return {"bos_token": getattr(tokenizer, "bos_token", None), "eos_token": getattr(tokenizer, "eos_token", None)}

    def _released(self, results):
        """results, after the heap's free pages go back to the system (on a CPU; model/host_memory.py)."""
        if self.device == "cpu":
            release_free_memory()
        return results

    def choice(self, requests: Sequence[Choice]) -> list[ChoiceResult]:
        return self._released(self.engine.choice(requests))

    def generate(self, requests: Sequence[Generate]) -> list[GenerateResult]:
        return self._released(self.engine.generate(requests))

    streams = frozenset({"generate"})

    def answer_streaming(self, kind: str, requests: Sequence[Any], on_done: Callable[[int, Any], None]) -> list[Any]:
        if kind != "generate":
            return super().answer_streaming(kind, requests, on_done)

        def done(index: int, result: GenerateResult) -> None:  # one call serves a whole run
            on_done(index, result)
            self._released(None)

        return self.engine.generate(requests, on_done=done)

    def rolling(self, requests: Sequence[Rolling]) -> list[RollingResult]:
        return self._released(self.engine.rolling(requests))
