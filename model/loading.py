"""Checkpoints: read the original Qwen (v1) format and the Hugging Face Qwen2 format, write both.

    model = from_pretrained("/ckpt/Qwen-14B")               # bf16 on CUDA, fp32 on CPU
    model = from_pretrained("Qwen/Qwen-14B", device="cuda")  # a hub id already in the HF cache

The model is built on the meta device, given uninitialised storage on the target device in the
target dtype, then filled tensor by tensor, shard by shard: each checkpoint tensor is read, cast
and copied into its parameter (or, for Qwen2's q/k/v, into its rows of our fused qkv) and
dropped. Peak memory is the model plus one shard's mapped pages, never a second copy of the
weights (benchmarks/load_memory.py measures it). Every parameter must be filled exactly once; a
missing, misshapen, duplicated or unknown tensor is a UserError naming the tensor and its file.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from qwen_eval.errors import UserError
from qwen_eval.model.devices import resolve_device, resolve_dtype
from qwen_eval.model.model import Qwen, QwenConfig

FORMATS = ("qwen", "qwen2")
SAFETENSORS_INDEX, SAFETENSORS_SINGLE = "model.safetensors.index.json", "model.safetensors"
BIN_INDEX, BIN_SINGLE = "pytorch_model.bin.index.json", "pytorch_model.bin"
# Buffers some exports carry; the model recomputes them.
IGNORED_TENSORS = re.compile(r".*(rotary_emb\.inv_freq|attn\.masked_bias)$")
EOD_ID = 151643  # <|endoftext|>, bos/eos of every Qwen base model


# ---------------------------------------------------------------------------------------------
# Where the checkpoint is


def resolve_checkpoint(path_or_hub_id: str | Path, *, cache_dir: str | Path | None = None) -> Path:
    """A local folder as is; otherwise a hub id looked up in the local Hugging Face cache only
    (never the network)."""
    path = Path(str(path_or_hub_id)).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"model.path {path_or_hub_id} is a file; point it at the checkpoint folder (the one "
                        f"holding config.json), or for a .gguf file use qwen_eval.model.from_pretrained, which "
                        f"reads GGUF as model.path does")
    hint = (f"download it (huggingface-cli download {path_or_hub_id} --local-dir DIR) and set "
            f"model.path=DIR")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", str(path_or_hub_id)):
        raise UserError(f"model.path {path_or_hub_id} does not exist; set model.path to a local "
                        f"checkpoint folder (config.json and safetensors shards)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_hub_id), local_files_only=True, cache_dir=cache_dir))
    except Exception:  # LocalEntryNotFoundError, or a malformed id / cache entry
        raise UserError(f"model.path {path_or_hub_id} is not a local folder and is not in the Hugging Face "
                        f"cache; {hint}") from None


def weights_fingerprint(path: Path) -> str:
    """The identity of a checkpoint's files (part of a backend's cache fingerprint): config plus
    each weight file's name, size and first/last MiB; cheap on 28 GB, and it changes whenever the
    weights do. `path`: a checkpoint folder or a single .gguf file."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.suffix in (".json", ".safetensors", ".bin", ".tiktoken", ".gguf"))
    for p in files:
        h.update(p.name.encode())
        size = p.stat().st_size
        h.update(str(size).encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), 2)
                h.update(f.read())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# config.json


def read_config_json(directory: Path) -> dict[str, Any]:
    file = directory / "config.json"
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{file} not found; model.path must be a checkpoint folder holding config.json") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {file} ({e}); is it a checkpoint's config.json?") from None
    if not isinstance(raw, dict):
        raise UserError(f"{file} is not a JSON object; is it a checkpoint's config.json?")
    return raw


def checkpoint_format(raw: dict[str, Any], where: Path) -> str:
    model_type = raw.get("model_type")
    if model_type not in FORMATS:
        raise UserError(f"{where / 'config.json'}: model_type {model_type!r} is not supported; the bundled "
                        f"model reads Qwen (model_type 'qwen') and Qwen1.5/2/2.5 ('qwen2') checkpoints "
                        f"(use model=hf for others)")
    return model_type


def _key(raw: dict[str, Any], where: Path, *names: str, default: Any = KeyError) -> Any:
    """The first of `names` present in config.json (newer name first), else `default`."""
    for name in names:
        if raw.get(name) is not None:
            return raw[name]
    if default is KeyError:
        raise UserError(f"{where / 'config.json'} has no {names[0]!r}; is it the checkpoint's own config.json?")
    return default


def config_from_checkpoint(directory: str | Path) -> QwenConfig:
    """Our QwenConfig from a Qwen-1 or Qwen2 config.json."""
    return read_checkpoint_config(Path(directory))[0]


def read_checkpoint_config(where: Path) -> tuple[QwenConfig, str]:
    """The config and the format ("qwen" or "qwen2") of a checkpoint folder."""
    raw = read_config_json(where)
    fmt = checkpoint_format(raw, where)
    try:
        cfg = _qwen1_config(raw, where) if fmt == "qwen" else _qwen2_config(raw, where)
    except (ValueError, TypeError) as e:  # bad numbers, or heads that do not divide the width
        raise UserError(f"{where / 'config.json'}: {e}") from None
    return cfg, fmt


def _qwen1_config(raw: dict[str, Any], where: Path) -> QwenConfig:
    # The Aug-2023 v1.0 configs used the GPT-style names (n_embd, n_head, ...).
    hidden = int(_key(raw, where, "hidden_size", "n_embd"))
    heads = int(_key(raw, where, "num_attention_heads", "n_head"))
    if raw.get("no_bias") is False:
        raise UserError(f"{where / 'config.json'}: no_bias false (biases on c_proj and the MLP) is not "
                        f"supported; every released Qwen has no_bias true")
    kv_channels = raw.get("kv_channels")
    if kv_channels is not None and int(kv_channels) * heads != hidden:
        raise UserError(f"{where / 'config.json'}: kv_channels {kv_channels} x {heads} heads != hidden_size "
                        f"{hidden}; the bundled model needs kv_channels = hidden_size / heads")
    return QwenConfig(
        vocab_size=int(_key(raw, where, "vocab_size", "padded_vocab_size")),
        hidden_size=hidden,
        num_layers=int(_key(raw, where, "num_hidden_layers", "n_layer")),
        num_heads=heads,
        num_kv_heads=heads,
        intermediate_size=int(_key(raw, where, "intermediate_size", "ffn_hidden_size")) // 2,  # stores 2F
        rms_norm_eps=float(_key(raw, where, "layer_norm_epsilon", default=1e-6)),
        rope_base=float(_key(raw, where, "rotary_emb_base", default=10000.0)),
        rotary_pct=float(_key(raw, where, "rotary_pct", default=1.0)),
        seq_length=int(_key(raw, where, "seq_length")),
        use_dynamic_ntk=bool(_key(raw, where, "use_dynamic_ntk", default=True)),
        use_logn_attn=bool(_key(raw, where, "use_logn_attn", default=True)),
        tie_word_embeddings=bool(_key(raw, where, "tie_word_embeddings", default=False)),
        qkv_bias=True,  # c_attn always has a bias (docs/model.md, quirk Q7)
    )


def _qwen2_config(raw: dict[str, Any], where: Path) -> QwenConfig:
    file = where / "config.json"
    if raw.get("use_sliding_window"):
        raise UserError(f"{file}: use_sliding_window true is not supported by the bundled model; set it "
                        f"false (Qwen2 checkpoints ship it false) or use model=hf")
    # transformers 4 writes rope_theta + rope_scaling, transformers 5 rope_parameters
    rope = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type", scaling.get("type")) or rope.get("rope_type", rope.get("type"))
    if rope_type not in (None, "default"):
        raise UserError(f"{file}: RoPE scaling {rope_type!r} is not implemented by the bundled model; remove "
                        f"rope_scaling from config.json or use model=hf")
    if raw.get("hidden_act", "silu") != "silu":
        raise UserError(f"{file}: hidden_act {raw['hidden_act']!r} is not supported; Qwen2 uses silu")
    hidden = int(_key(raw, where, "hidden_size"))
    heads = int(_key(raw, where, "num_attention_heads"))
    if raw.get("head_dim") is not None and int(raw["head_dim"]) * heads != hidden:
        raise UserError(f"{file}: head_dim {raw['head_dim']} x {heads} heads != hidden_size {hidden}; "
                        f"the bundled model needs head_dim = hidden_size / heads")
    return QwenConfig(
        vocab_size=int(_key(raw, where, "vocab_size")),
        hidden_size=hidden,
        num_layers=int(_key(raw, where, "num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=int(_key(raw, where, "num_key_value_heads", default=heads)),
        intermediate_size=int(_key(raw, where, "intermediate_size")),
        rms_norm_eps=float(_key(raw, where, "rms_norm_eps", default=1e-6)),
        rope_base=float(raw.get("rope_theta") or rope.get("rope_theta") or 10000.0),
        rotary_pct=1.0,
        seq_length=int(_key(raw, where, "max_position_embeddings", default=32768)),
        use_dynamic_ntk=False,  # Qwen2 has neither dynamic NTK nor LogN
        use_logn_attn=False,
        tie_word_embeddings=bool(_key(raw, where, "tie_word_embeddings", default=False)),
        qkv_bias=True,  # Qwen2 hard-codes a bias on q/k/v
    )


def declared_eos_ids(directory: Path) -> tuple[int, ...]:
    """The ids a checkpoint folder says end its output: `eos_token_id` (an int or a list) of
    config.json and of generation_config.json, in that order, without repeats."""
    ids: list[int] = []
    for name in ("config.json", "generation_config.json"):
        file = directory / name
        try:
            raw = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {file} ({e}); is it the checkpoint's own?") from None
        value = raw.get("eos_token_id") if isinstance(raw, dict) else None
        for i in (value if isinstance(value, list) else [value]):
            if isinstance(i, int) and not isinstance(i, bool) and i not in ids:
                ids.append(i)
            elif i is not None and not isinstance(i, int):
                raise UserError(f"{file}: eos_token_id {value!r} is not an id or a list of ids")
    return tuple(ids)


# ---------------------------------------------------------------------------------------------
# Tensor names


@dataclass(frozen=True)
class Target:
    """Where a checkpoint tensor goes: our parameter, or a block of its rows (Qwen2's q/k/v
    are the three row blocks of our fused qkv)."""

    param: str
    rows: tuple[int, int] | None = None


def tensor_targets(cfg: QwenConfig, fmt: str) -> dict[str, Target]:
    """Checkpoint tensor name -> Target for every tensor a checkpoint of this config holds."""
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    out: dict[str, Target] = {}
    if fmt == "qwen":
        if cfg.num_kv_heads != cfg.num_heads:
            raise UserError("the Qwen-1 checkpoint format has no grouped-query attention; use format='qwen2'")
        out["transformer.wte.weight"] = Target("embed.weight")
        for i in range(cfg.num_layers):
            src, dst = f"transformer.h.{i}.", f"layers.{i}."
            out[src + "ln_1.weight"] = Target(dst + "attn_norm.weight")
            out[src + "attn.c_attn.weight"] = Target(dst + "attn.qkv.weight")
            out[src + "attn.c_attn.bias"] = Target(dst + "attn.qkv.bias")
            out[src + "attn.c_proj.weight"] = Target(dst + "attn.out.weight")
            out[src + "ln_2.weight"] = Target(dst + "mlp_norm.weight")
            out[src + "mlp.w1.weight"] = Target(dst + "mlp.up.weight")
            out[src + "mlp.w2.weight"] = Target(dst + "mlp.gate.weight")  # w2 is the SiLU gate
            out[src + "mlp.c_proj.weight"] = Target(dst + "mlp.down.weight")
        out["transformer.ln_f.weight"] = Target("norm.weight")
    elif fmt == "qwen2":
        out["model.embed_tokens.weight"] = Target("embed.weight")
        blocks = {"q_proj": (0, q), "k_proj": (q, q + kv), "v_proj": (q + kv, q + 2 * kv)}
        for i in range(cfg.num_layers):
            src, dst = f"model.layers.{i}.", f"layers.{i}."
            out[src + "input_layernorm.weight"] = Target(dst + "attn_norm.weight")
            for name, rows in blocks.items():
                out[src + f"self_attn.{name}.weight"] = Target(dst + "attn.qkv.weight", rows)
                out[src + f"self_attn.{name}.bias"] = Target(dst + "attn.qkv.bias", rows)
            out[src + "self_attn.o_proj.weight"] = Target(dst + "attn.out.weight")
            out[src + "post_attention_layernorm.weight"] = Target(dst + "mlp_norm.weight")
            out[src + "mlp.gate_proj.weight"] = Target(dst + "mlp.gate.weight")
            out[src + "mlp.up_proj.weight"] = Target(dst + "mlp.up.weight")
            out[src + "mlp.down_proj.weight"] = Target(dst + "mlp.down.weight")
        out["model.norm.weight"] = Target("norm.weight")
    else:
        raise UserError(f"checkpoint format {fmt!r} is not one of {', '.join(FORMATS)}")
    if not cfg.qkv_bias:
        raise UserError("both checkpoint formats store a q/k/v bias; this config has qkv_bias=False")
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = Target("lm_head.weight")
    return out


def view_of(params: dict[str, torch.Tensor], target: Target) -> torch.Tensor:
    p = params[target.param]
    return p if target.rows is None else p[target.rows[0]:target.rows[1]]


# ---------------------------------------------------------------------------------------------
# Reading


def weight_files(directory: Path) -> list[Path]:
    """The weight files in load order: the index's shards, or the single file (safetensors first)."""
    for index_name, single in ((SAFETENSORS_INDEX, SAFETENSORS_SINGLE), (BIN_INDEX, BIN_SINGLE)):
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                names = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                raise UserError(f"{index} is not a shard index (a JSON object with a weight_map)") from None
            missing = [n for n in names if not (directory / n).is_file()]
            if missing:
                raise UserError(f"{index} lists {missing[0]}, which is not in {directory}; the download "
                                f"is incomplete")
            return [directory / n for n in names]
        if (directory / single).is_file():
            return [directory / single]
    raise UserError(f"no weights in {directory}: expected {SAFETENSORS_INDEX}, {SAFETENSORS_SINGLE}, "
                    f"{BIN_INDEX} or {BIN_SINGLE}")


def _tensors(file: Path) -> Iterator[tuple[str, tuple[int, ...], Any]]:
    """(name, shape, load) for each tensor of one weight file; `load()` reads only that tensor.
    The file stays open (mapped) until the iteration moves to the next file."""
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in f.keys():
                    yield name, tuple(f.get_slice(name).get_shape()), lambda name=name: f.get_tensor(name)
        except SafetensorError as e:
            raise UserError(f"{file} is not a readable safetensors file ({e})") from None
        return
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a legacy (pre-zip) .bin cannot be mapped: read it whole, one shard
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"{file} is not a readable PyTorch checkpoint ({first})") from None
    if not isinstance(state, dict):
        raise UserError(f"{file} does not hold a state dict of tensors")
    for name in list(state):
        tensor = state.pop(name)
        yield name, tuple(tensor.shape), lambda tensor=tensor: tensor
    del state


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def load_weights(model: Qwen, directory: Path, fmt: str) -> None:
    """Fill every parameter of `model` from the checkpoint, exactly once, streaming tensor by tensor."""
    cfg = model.config
    targets = tensor_targets(cfg, fmt)
    params = dict(model.named_parameters())
    filled: dict[str, Path] = {}
    with torch.no_grad():
        for file in weight_files(directory):
            for name, shape, load in _tensors(file):
                if IGNORED_TENSORS.match(name) or (cfg.tie_word_embeddings and name == "lm_head.weight"):
                    continue  # (a tied model's lm_head is its embedding, as in transformers)
                target = targets.get(name)
                if target is None:
                    raise UserError(f"tensor {name} in {file} is not part of a {fmt!r}-format model with this "
                                    f"config.json; is config.json the checkpoint's own?")
                if name in filled:
                    raise UserError(f"tensor {name} is in both {filled[name]} and {file}")
                dest = view_of(params, target)
                if tuple(dest.shape) != shape:
                    raise UserError(f"tensor {name} in {file} has shape {_shape(shape)} but config.json implies "
                                    f"{_shape(tuple(dest.shape))}; is config.json the checkpoint's own?")
                dest.copy_(load())  # casts to the model's dtype on the model's device
                filled[name] = file
    missing = [name for name in targets if name not in filled]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UserError(f"checkpoint {directory} lacks {len(missing)} tensor(s) its config.json needs: {shown}")


def from_pretrained(path: str | Path, dtype: torch.dtype | str | None = None,
                    device: torch.device | str | None = None) -> Qwen:
    """The model of a checkpoint folder (or cached hub id), in eval mode.

    dtype None/"auto": bf16 on CUDA, fp32 on CPU; device None/"auto": CUDA when available.
    """
    directory = resolve_checkpoint(path)
    target_device = resolve_device(None if device is None else str(device))
    target_dtype = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, target_device)
    cfg, fmt = read_checkpoint_config(directory)
    model = empty_model(cfg, target_dtype, target_device)
    load_weights(model, directory, fmt)
    return model.eval().requires_grad_(False)


def empty_model(cfg: QwenConfig, dtype: torch.dtype, device: torch.device) -> Qwen:
    """The model with uninitialised storage in `dtype` on `device` (built on the meta device, so
    nothing is allocated twice); every parameter must then be filled."""
    with torch.device("meta"):
        model = Qwen(cfg)
    model = model.to(dtype=dtype).to_empty(device=device)
    if cfg.tie_word_embeddings:  # to_empty gives each module its own new tensor: tie again
        model.lm_head.weight = model.embed.weight
    return model


# ---------------------------------------------------------------------------------------------
# Writing (tests and benchmarks build checkpoints with these)


def config_json(cfg: QwenConfig, fmt: str, dtype: torch.dtype) -> dict[str, Any]:
    """config.json in the format's own keys (the qwen2 one loads in transformers' Qwen2ForCausalLM)."""
    dtype_name = str(dtype).removeprefix("torch.")
    if fmt == "qwen":
        if cfg.window_attn:
            raise UserError("window_attn has no config.json key in the Qwen-1 format")
        return {
            "architectures": ["QWenLMHeadModel"], "model_type": "qwen",
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "kv_channels": cfg.head_dim, "intermediate_size": 2 * cfg.intermediate_size,
            "layer_norm_epsilon": cfg.rms_norm_eps, "rotary_emb_base": cfg.rope_base,
            "rotary_pct": cfg.rotary_pct, "seq_length": cfg.seq_length,
            "max_position_embeddings": max(8192, cfg.seq_length),
            "use_dynamic_ntk": cfg.use_dynamic_ntk, "use_logn_attn": cfg.use_logn_attn,
            "no_bias": True, "tie_word_embeddings": cfg.tie_word_embeddings,
            "emb_dropout_prob": 0.0, "attn_dropout_prob": 0.0, "initializer_range": 0.02,
            "scale_attn_weights": True, "use_cache": True, "bf16": False, "fp16": False, "fp32": False,
            "use_flash_attn": "auto", "tokenizer_class": "QWenTokenizer", "torch_dtype": dtype_name,
        }
    if cfg.rotary_dim != cfg.head_dim:
        raise UserError(f"rotary_pct {cfg.rotary_pct} cannot be written in the Qwen2 format (it rotates every channel)")
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "hidden_act": "silu", "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_base,
        "rope_scaling": None, "max_position_embeddings": cfg.seq_length,
        "tie_word_embeddings": cfg.tie_word_embeddings, "use_sliding_window": False, "sliding_window": None,
        "max_window_layers": cfg.num_layers, "attention_dropout": 0.0, "initializer_range": 0.02,
        "use_cache": True, "torch_dtype": dtype_name,
        **({"bos_token_id": EOD_ID, "eos_token_id": EOD_ID} if cfg.vocab_size > EOD_ID else {}),
    }


def save_checkpoint(model: Qwen, directory: str | Path, *, format: str = "qwen", max_shard_bytes: int = 5 << 30,
                    dtype: torch.dtype | None = None, weights: str = "safetensors",
                    tokenizer: bool = False) -> Path:
    """Write config.json and the weights (shards of at most `max_shard_bytes`, plus an index when
    there are several) in `format` ("qwen" or "qwen2"), as `weights` "safetensors" or "bin".

    dtype: the stored dtype (default: the model's). tokenizer: also write the Qwen2-style
    tokenizer.json (qwen2 format; Qwen-1 checkpoints use the packaged qwen.tiktoken).
    """
    if weights not in ("safetensors", "bin"):
        raise ValueError(f"weights must be 'safetensors' or 'bin', not {weights!r}")
    cfg = model.config
    dtype = dtype or model.embed.weight.dtype
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    targets = tensor_targets(cfg, format)
    (directory / "config.json").write_text(json.dumps(config_json(cfg, format, dtype), indent=2) + "\n",
                                           encoding="utf-8")
    params = dict(model.named_parameters())

    shards: list[list[str]] = [[]]
    size = 0
    for name, target in targets.items():
        nbytes = view_of(params, target).numel() * dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes

    stem, suffix = ("model", "safetensors") if weights == "safetensors" else ("pytorch_model", "bin")
    weight_map, total = {}, 0
    for n, names in enumerate(shards, 1):
        file = f"{stem}.{suffix}" if len(shards) == 1 else f"{stem}-{n:05d}-of-{len(shards):05d}.{suffix}"
        # copies: q/k/v are views of one parameter, and safetensors refuses tensors sharing memory
        tensors = {name: view_of(params, targets[name]).detach().to(device="cpu", dtype=dtype, copy=True).contiguous()
                   for name in names}
        if weights == "safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(directory / file), metadata={"format": "pt"})
        else:
            torch.save(tensors, directory / file)
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update(dict.fromkeys(names, file))
        del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        name = SAFETENSORS_INDEX if weights == "safetensors" else BIN_INDEX
        (directory / name).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    if tokenizer:
        if format != "qwen2":
            raise UserError("tokenizer=True writes a Qwen2 tokenizer.json; Qwen-1 checkpoints use qwen.tiktoken")
        from qwen_eval.model.tokenizer_json import write_hf_tokenizer

        write_hf_tokenizer(directory)
    return directory
