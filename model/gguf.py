"""GGUF checkpoints (llama.cpp's single-file format) in the bundled engine.

    ckpt = open_gguf("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
    ckpt.config          # our QwenConfig, from the `<arch>.*` metadata
    ckpt.stop_token_ids  # the file's eos id (its end of turn, for an instruct model)
    ckpt.chat_template   # tokenizer.chat_template, or None
    load_gguf_weights(model, ckpt)   # every tensor dequantized to the model's dtype
    tokenizer = GGUFTokenizer.from_checkpoint(ckpt)

Two architectures are read: llama.cpp's `qwen2` (Qwen1.5/2/2.5: separate q/k/v with biases,
grouped-query attention) and `qwen` (Qwen-1: fused qkv). llama.cpp's converter permutes no q/k
rows for either (both use NeoX-style, rotate-half RoPE, as our model does); tests check this
against transformers' own GGUF loader on a real file.

What a GGUF does not say, and what we assume:
  * Qwen-1 files (`qwen`): the converter writes `max_position_embeddings` as the context length
    and drops `seq_length`, `use_dynamic_ntk` and `use_logn_attn`. We turn dynamic NTK and LogN on,
    as every Qwen-1 config.json does, from the context length; `model.seq_length=2048` restores
    Qwen-14B's real threshold.
  * `qwen2` files: neither NTK nor LogN, as transformers runs those models.

Weights are dequantized tensor by tensor and, for big matrices, in blocks of rows, straight into
the model's parameters, so loading never holds a second copy of the model (the file itself is
memory-mapped and read once). Every tensor type the `gguf` package can dequantize is accepted.
The file's layout is read by model/gguf_file.py, not by gguf's own reader (see there why).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qwen_eval.errors import UserError
from qwen_eval.model.gguf_file import GGUFFile, GGUFFormatError, TensorInfo, read_gguf
from qwen_eval.model.loading import Target, view_of
from qwen_eval.model.model import Qwen, QwenConfig

ARCHITECTURES = ("qwen2", "qwen")
ROWS_PER_BLOCK = 8192  # rows dequantized at once: bounds the fp32 scratch to ~30 MB at width 896
# the tokenizer's arrays: kept apart from the other metadata, and dropped with the checkpoint once
# the tokenizer is built
_BIG_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
               "tokenizer.ggml.scores")


@dataclass
class GGUFCheckpoint:
    """A GGUF file opened for reading: its metadata, its tokenizer arrays and its (memory-mapped)
    tensors."""

    path: Path
    arch: str
    config: QwenConfig
    metadata: dict[str, Any]
    vocab: dict[str, list]  # tokenizer.ggml.tokens / merges / token_type, where present
    file: GGUFFile = field(repr=False)

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        eos = self.metadata.get("tokenizer.ggml.eos_token_id")
        return () if eos is None else (int(eos),)

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")


def find_gguf(path: str | Path) -> Path | None:
    """The .gguf file `path` names: the file itself, or the one .gguf in a folder without config.json."""
    p = Path(str(path)).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return p
    if p.is_dir() and not (p / "config.json").is_file():
        found = sorted(p.glob("*.gguf"))
        if len(found) > 1:
            raise UserError(f"model.path {p} holds {len(found)} .gguf files ({', '.join(f.name for f in found[:3])}"
                            f"{', ...' if len(found) > 3 else ''}); point model.path at one of them")
        if found:
            return found[0]
    return None


def open_gguf(path: str | Path) -> GGUFCheckpoint:
    """Read a GGUF file's header; a file that is not GGUF, is truncated, or holds another
    architecture is a UserError naming the file."""
    path = Path(path)
    try:
        file = read_gguf(path)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; check model.path") from None
    except (GGUFFormatError, OSError) as e:  # bad magic, short header, malformed metadata, a folder
        raise UserError(f"{path} is not a readable GGUF file ({e}); is the download complete?") from None
    _check_complete(file, path)
    vocab = {k.removeprefix("tokenizer.ggml."): _as_list(file.metadata.pop(k)) for k in _BIG_ARRAYS
             if k in file.metadata}
    metadata = {k: _as_list(v) for k, v in file.metadata.items()}
    arch = metadata.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise UserError(f"{path}: GGUF architecture {arch!r} is not supported by the bundled model, which reads "
                        f"{' and '.join(map(repr, ARCHITECTURES))} (Qwen1.5/2/2.5 and Qwen-1); use another runner "
                        f"for this model")
    shapes = {t.name: t.shape for t in file.tensors}
    if "token_embd.weight" not in shapes:
        raise UserError(f"{path} has no token_embd.weight tensor; it is not a complete {arch} model")
    config = gguf_config(metadata, arch, path, vocab_size=shapes["token_embd.weight"][0],
                         tied="output.weight" not in shapes)
    return GGUFCheckpoint(path, arch, config, metadata, vocab, file)


def _as_list(value: Any) -> Any:
    """Metadata as plain Python: a numeric array (numpy, from the file reader) as a list."""
    return value.tolist() if isinstance(value, np.ndarray) else value


def _check_complete(file: GGUFFile, path: Path) -> None:
    size = path.stat().st_size
    for t in file.tensors:
        end = t.offset + t.n_bytes
        if end > size:
            raise UserError(f"{path} is truncated: tensor {t.name} ends at byte {end:,} but the file has "
                            f"{size:,} bytes; download it again")


def gguf_config(meta: dict[str, Any], arch: str, path: Path, *, vocab_size: int, tied: bool) -> QwenConfig:
    """Our config from `<arch>.*` keys (llama.cpp's names); the vocabulary is the embedding's rows,
    and a file without `output.weight` ties lm_head to the embedding (as llama.cpp does)."""

    def key(name: str, default: Any = KeyError) -> Any:
        value = meta.get(f"{arch}.{name}")
        if value is None:
            if default is KeyError:
                raise UserError(f"{path}: GGUF metadata lacks {arch}.{name}; the file is not a complete "
                                f"llama.cpp {arch} model")
            return default
        return value

    hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
    rope_dim = key("rope.dimension_count", None)
    if rope_dim is not None and heads and int(rope_dim) != hidden // heads:
        raise UserError(f"{path}: {arch}.rope.dimension_count {rope_dim} rotates part of each head; the bundled "
                        f"model rotates all {hidden // heads} channels")
    if meta.get(f"{arch}.rope.scaling.type") not in (None, "none"):
        raise UserError(f"{path}: RoPE scaling {meta[f'{arch}.rope.scaling.type']!r} is not implemented by the "
                        f"bundled model")
    ffn = int(key("feed_forward_length"))
    context = int(key("context_length"))
    try:
        return QwenConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_layers=int(key("block_count")),
            num_heads=heads,
            num_kv_heads=int(key("attention.head_count_kv", heads)),
            intermediate_size=ffn // 2 if arch == "qwen" else ffn,  # Qwen-1's converter writes 2F
            rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-6)),
            rope_base=float(key("rope.freq_base", 10000.0)),
            seq_length=context,
            use_dynamic_ntk=arch == "qwen",
            use_logn_attn=arch == "qwen",
            tie_word_embeddings=tied,
            qkv_bias=True,
        )
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None



def tensor_targets(cfg: QwenConfig, arch: str) -> dict[str, Target]:
    """GGUF tensor name -> where it goes in our model."""
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    out: dict[str, Target] = {"token_embd.weight": Target("embed.weight"),
                              "output_norm.weight": Target("norm.weight")}
    if not cfg.tie_word_embeddings:
        out["output.weight"] = Target("lm_head.weight")
    for i in range(cfg.num_layers):
        src, dst = f"blk.{i}.", f"layers.{i}."
        out[src + "attn_norm.weight"] = Target(dst + "attn_norm.weight")
        if arch == "qwen":
            out[src + "attn_qkv.weight"] = Target(dst + "attn.qkv.weight")
            out[src + "attn_qkv.bias"] = Target(dst + "attn.qkv.bias")
        else:
            for name, rows in (("attn_q", (0, q)), ("attn_k", (q, q + kv)), ("attn_v", (q + kv, q + 2 * kv))):
                out[src + name + ".weight"] = Target(dst + "attn.qkv.weight", rows)
                out[src + name + ".bias"] = Target(dst + "attn.qkv.bias", rows)
        out[src + "attn_output.weight"] = Target(dst + "attn.out.weight")
        out[src + "ffn_norm.weight"] = Target(dst + "mlp_norm.weight")
        out[src + "ffn_gate.weight"] = Target(dst + "mlp.gate.weight")
        out[src + "ffn_up.weight"] = Target(dst + "mlp.up.weight")
        out[src + "ffn_down.weight"] = Target(dst + "mlp.down.weight")
    return out


IGNORED = re.compile(r"rope_freqs\.weight$")  # llama.cpp's precomputed RoPE factors; we recompute


def dequantized_rows(file: GGUFFile, tensor: TensorInfo, start: int, stop: int) -> np.ndarray:
    """fp32 rows [start, stop) of a GGUF tensor in torch's [out, in] layout."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    data = file.tensor_data(tensor)
    block = data[start:stop] if data.ndim > 1 else data
    if tensor.type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        return np.array(block, dtype=np.float32)  # a copy: the mapped file is read-only
    return dequantize(np.ascontiguousarray(block), GGMLQuantizationType(tensor.type))


def load_gguf_weights(model: Qwen, ckpt: GGUFCheckpoint) -> None:
    """Fill every parameter of `model` from the file, exactly once."""
    from gguf.quants import _type_traits  # noqa: PLC2701 (the set of types it can dequantize)
    from gguf import GGMLQuantizationType

    readable = set(_type_traits) | {GGMLQuantizationType.F32, GGMLQuantizationType.F16}
    targets = tensor_targets(model.config, ckpt.arch)
    params = dict(model.named_parameters())
    filled: set[str] = set()
    with torch.no_grad():
        for t in ckpt.file.tensors:
            if IGNORED.search(t.name):
                continue
            target = targets.get(t.name)
            if target is None:
                raise UserError(f"{ckpt.path}: tensor {t.name} is not part of a {ckpt.arch!r} model with this "
                                f"file's metadata")
            if t.type not in readable:
                raise UserError(f"{ckpt.path}: tensor {t.name} has type {GGMLQuantizationType(t.type).name}, which "
                                f"the gguf package cannot dequantize; requantize the file (e.g. Q8_0 or Q4_K_M)")
            dest = view_of(params, target)
            shape = t.shape
            if tuple(dest.shape) != shape:
                raise UserError(f"{ckpt.path}: tensor {t.name} has shape {list(shape)} but the metadata implies "
                                f"{list(dest.shape)}")
            rows = shape[0] if len(shape) > 1 else 1
            for start in range(0, rows, ROWS_PER_BLOCK):
                stop = min(rows, start + ROWS_PER_BLOCK)
                block = torch.from_numpy(dequantized_rows(ckpt.file, t, start, stop).reshape((-1, *shape[1:])))
                (dest[start:stop] if len(shape) > 1 else dest).copy_(block)
            filled.add(t.name)
            ckpt.file.release(t)
    missing = [name for name in targets if name not in filled]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise UserError(f"{ckpt.path} lacks {len(missing)} tensor(s) its metadata needs: {shown}")


def from_gguf(path: str | Path | GGUFCheckpoint, dtype: torch.dtype = torch.float32,
              device: torch.device | str = "cpu", *, seq_length: int | None = None) -> Qwen:
    """The model of a GGUF file, dequantized to `dtype`, in eval mode. `seq_length` overrides the
    file's context length as the point where dynamic NTK and LogN begin (see the module docstring)."""
    from qwen_eval.model.loading import empty_model

    ckpt = path if isinstance(path, GGUFCheckpoint) else open_gguf(path)
    cfg = ckpt.config
    if seq_length:
        cfg.seq_length = int(seq_length)
    model = empty_model(cfg, dtype, torch.device(device))
    load_gguf_weights(model, ckpt)
    return model.eval().requires_grad_(False)


def gguf_tokenizer(ckpt: GGUFCheckpoint):
    """The tokenizer the file's metadata describes (see tokenizer.BPETokenizer)."""
    from qwen_eval.model.tokenizer import BPETokenizer

    if "tokens" not in ckpt.vocab or "merges" not in ckpt.vocab:
        raise UserError(f"{ckpt.path}: the GGUF metadata carries no tokenizer (tokenizer.ggml.tokens/merges); "
                        f"set model.tokenizer_path to a folder with the model's tokenizer.json")
    meta = ckpt.metadata
    tokenizer = BPETokenizer.from_gguf_vocab(ckpt.vocab["tokens"], ckpt.vocab["merges"], ckpt.vocab.get("token_type", []),
                                             model=meta.get("tokenizer.ggml.model"), pre=meta.get("tokenizer.ggml.pre"),
                                             where=str(ckpt.path))
    for name in ("bos", "eos"):  # the strings a chat template sees as bos_token / eos_token
        token_id = meta.get(f"tokenizer.ggml.{name}_token_id")
        if token_id is not None and 0 <= int(token_id) < len(ckpt.vocab["tokens"]):
            setattr(tokenizer, f"{name}_token", ckpt.vocab["tokens"][int(token_id)])
    return tokenizer

