"""Tiny random Qwen models and checkpoints for the model, loading and engine tests."""

from __future__ import annotations

from pathlib import Path

import torch

from qwen_eval.model.loading import save_checkpoint
from qwen_eval.model.model import Qwen, QwenConfig, random_qwen

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
    model = random_qwen(cfg, seed)
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


def write_gguf(model: Qwen, path: Path, *, arch: str = "qwen2", tensor_type: str = "F32",
               context_length: int | None = None, vocab: dict | None = None) -> Path:
    """A llama.cpp-style GGUF of `model` (tests only): metadata under llama.cpp's key names (a
    Qwen-1 file stores 2F as feed_forward_length and max_position_embeddings as context length, as
    llama.cpp's converter writes them), matrices in `tensor_type` (F32, F16, BF16, Q8_0, ...; norms
    and biases stay F32, as llama.cpp keeps them). `vocab`: tokens/merges/token_type/pre to write."""
    import gguf
    import numpy as np

    from qwen_eval.model.gguf import tensor_targets
    from qwen_eval.model.loading import view_of

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(context_length or cfg.seq_length)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_layers)
    writer.add_feed_forward_length(2 * cfg.intermediate_size if arch == "qwen" else cfg.intermediate_size)
    writer.add_head_count(cfg.num_heads)
    if arch != "qwen":
        writer.add_head_count_kv(cfg.num_kv_heads)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(cfg.rope_base)
    if vocab:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(vocab.get("pre", "qwen2"))
        writer.add_token_list(vocab["tokens"])
        writer.add_token_merges(vocab["merges"])
        writer.add_token_types(vocab["token_type"])
        if "eos" in vocab:
            writer.add_eos_token_id(vocab["eos"])
    params = dict(model.named_parameters())
    qtype = gguf.GGMLQuantizationType[tensor_type]
    for name, target in tensor_targets(cfg, arch).items():
        data = view_of(params, target).detach().float().numpy().copy()
        if data.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, data.astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, data.astype(np.float16))
        elif qtype == gguf.GGMLQuantizationType.F64:
            writer.add_tensor(name, data.astype(np.float64))
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_bpe_vocab(text: str, size: int = 512) -> dict:
    """A small byte-level BPE vocabulary (GGUF metadata form) learned greedily from `text`: the
    256 byte symbols, merges of the most frequent adjacent pairs within Qwen2 pre-tokens, then
    control tokens up to `size`: <|extra_N|> fillers and <|endoftext|>, <|im_start|>, <|im_end|>."""
    import collections

    import regex

    from qwen_eval.model.tokenizer import BYTE_TO_UNICODE, PRETOKENIZE_REGEX

    tokens = [BYTE_TO_UNICODE[b] for b in range(256)]
    words = collections.Counter("".join(BYTE_TO_UNICODE[b] for b in w.encode()) for w in
                                regex.findall(PRETOKENIZE_REGEX, text))
    split = {w: list(w) for w in words}
    merges: list[str] = []
    while len(tokens) < size - 3:
        pairs: collections.Counter = collections.Counter()
        for w, n in words.items():
            parts = split[w]
            for a, b in zip(parts, parts[1:]):
                pairs[a, b] += n
        if not pairs:
            break
        (a, b), _ = pairs.most_common(1)[0]
        merges.append(f"{a} {b}")
        tokens.append(a + b)
        for w in words:
            parts, out, i = split[w], [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            split[w] = out
    learned = len(tokens)
    tokens += [f"<|extra_{i}|>" for i in range(size - 3 - learned)]  # when the text runs out of pairs
    tokens += ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [1] * learned + [3] * (len(tokens) - learned)
    return {"tokens": tokens, "merges": merges, "token_type": types, "eos": len(tokens) - 1}


def assert_gguf_file_equals_gguf_reader(path: Path) -> None:
    """qwen-eval's GGUF header reader (model/gguf_file.py) against the gguf package's GGUFReader on
    one file: every metadata value, every tensor's name, type, place, shape and bytes."""
    import gguf
    import numpy as np

    from qwen_eval.model.gguf_file import read_gguf

    ours, theirs = read_gguf(path), gguf.GGUFReader(str(path))
    fields = {k: f for k, f in theirs.fields.items() if not k.startswith("GGUF.")}  # GGUF.*: the header itself
    assert list(ours.metadata) == list(fields)
    for key, field in fields.items():
        got = ours.metadata[key]
        got = got.tolist() if isinstance(got, np.ndarray) else got
        assert got == field.contents(), key
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors):
        assert (a.type, a.offset, a.n_bytes) == (int(b.tensor_type), int(b.data_offset), int(b.n_bytes)), a.name
        assert a.shape == tuple(reversed(b.shape.tolist())), a.name
        x, y = ours.tensor_data(a), b.data
        assert (x.dtype, x.shape) == (y.dtype, y.shape) and np.array_equal(x, y), a.name
