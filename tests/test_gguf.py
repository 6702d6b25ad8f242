"""GGUF checkpoints: files written here from tiny models, read by the bundled engine and by
transformers' own GGUF loader (the reference for the q/k layout and the tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers_checkpoints import (PROMPTS, assert_gguf_file_equals_gguf_reader, max_abs_diff, random_model, tiny_bpe_vocab,
                                tiny_config, write_gguf)
from qwen_eval.errors import UserError
from qwen_eval.model.gguf import find_gguf, from_gguf, gguf_tokenizer, open_gguf
from qwen_eval.model.loading import from_pretrained

pytest.importorskip("gguf")

TEXT = " ".join(PROMPTS) * 3 + " The quick brown fox jumps over the lazy dog. 12345 + 678 = 13023.\n\n"


@pytest.fixture(scope="module")
def vocab() -> dict:
    return tiny_bpe_vocab(TEXT, size=512)


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(vocab_size=512, num_kv_heads=2, seq_length=256))


def _ids(n: int, vocab_size: int = 509, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tensor_type, tolerance", [("F32", 0.0), ("F16", 2e-3), ("BF16", 1e-2), ("Q8_0", 2e-2)])
def test_gguf_logits_equal_the_model_it_was_written_from(tmp_path, model, vocab, tensor_type, tolerance):
    path = write_gguf(model, tmp_path / "m.gguf", tensor_type=tensor_type, vocab=vocab)
    loaded = from_gguf(path)
    assert loaded.config.num_kv_heads == 2 and loaded.config.vocab_size == 512
    ids = _ids(40)
    with torch.no_grad():
        assert max_abs_diff(model(ids), loaded(ids)) <= tolerance


def test_the_public_loader_reads_gguf_as_model_path_does(tmp_path, model, vocab):
    """`qwen_eval.model.from_pretrained` takes every format the CLI's model.path takes."""
    import qwen_eval.model

    path = write_gguf(model, tmp_path / "m.gguf", tensor_type="F32", vocab=vocab)
    ids = _ids(24)
    with torch.no_grad():
        want = from_gguf(path)(ids)
        assert torch.equal(qwen_eval.model.from_pretrained(path)(ids), want)
        assert torch.equal(qwen_eval.model.from_pretrained(tmp_path)(ids), want)  # a folder holding one .gguf
    with pytest.raises(UserError, match=r"is a file; point it at the checkpoint folder .* for a \.gguf file use "
                                        r"qwen_eval\.model\.from_pretrained"):
        from_pretrained(path)  # the folder loader names the one that reads GGUF


@pytest.mark.parametrize("tensor_type", ["Q4_0", "Q5_0", "Q5_1"])
def test_block_quants_dequantize(tmp_path, model, tensor_type):
    """4- and 5-bit block quants: close to the weights they came from. (The gguf package cannot
    write K-quants; the real model's Q4_K and Q6_K tensors are checked in test_real_model.py.)"""
    ids = _ids(24)
    with torch.no_grad():
        want = model(ids)
        got = from_gguf(write_gguf(model, tmp_path / "q.gguf", tensor_type=tensor_type))(ids)
    assert float((got - want).norm() / want.norm()) < (0.2 if tensor_type == "Q4_0" else 0.1)


def test_qwen2_gguf_matches_transformers_gguf_loader(tmp_path, model, vocab):
    """transformers reads the same file its own way: same logits, so no q/k permutation was missed."""
    from transformers import AutoModelForCausalLM

    write_gguf(model, tmp_path / "m.gguf", vocab=vocab)
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="m.gguf", dtype=torch.float32).eval()
    ours = from_gguf(tmp_path / "m.gguf")
    for n in (17, 200):
        ids = _ids(n, seed=n)
        with torch.no_grad():
            assert max_abs_diff(hf(ids).logits, ours(ids)) <= 1e-4


def test_tokenizer_from_gguf_metadata_matches_transformers(tmp_path, model, vocab):
    from transformers import AutoTokenizer

    write_gguf(model, tmp_path / "m.gguf", vocab=vocab)
    ours = gguf_tokenizer(open_gguf(tmp_path / "m.gguf"))
    theirs = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="m.gguf")
    texts = [*PROMPTS, TEXT, "  leading spaces\tand\r\ntabs", "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
             "Ünïcödé naïve café 東京 🤖", "e\u0301 (not NFC)", ""]
    for text in texts:
        ids = ours.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == theirs.decode(ids, clean_up_tokenization_spaces=False)
    assert ours.encode("<|im_end|>") == [vocab["eos"]]
    assert ours.encode_batch(texts) == [ours.encode(t) for t in texts]
    assert ours.decode_bytes(ours.encode("café")) == "café".encode()


@pytest.mark.parametrize("tensor_type", ["F32", "F16", "BF16", "Q8_0", "Q4_0"])
def test_header_reader_equals_gguf_reader(tmp_path, model, vocab, tensor_type):
    """The lean header reader gives what gguf's GGUFReader gives: metadata (the tokenizer's arrays
    included), tensor table, tensor bytes."""
    assert_gguf_file_equals_gguf_reader(write_gguf(model, tmp_path / "m.gguf", tensor_type=tensor_type, vocab=vocab))
    qwen1 = write_gguf(random_model(tiny_config(vocab_size=512, num_kv_heads=4)), tmp_path / "q1.gguf", arch="qwen")
    assert_gguf_file_equals_gguf_reader(qwen1)


def test_header_errors_say_what_is_wrong(tmp_path, model):
    import struct

    data = bytearray(write_gguf(model, tmp_path / "m.gguf").read_bytes())
    cases = {
        "big-endian": (data[:4] + struct.pack(">I", 3) + data[8:], r"GGUF version 50331648 \(a big-endian file\)"),
        "v1": (data[:4] + struct.pack("<I", 1) + data[8:], r"GGUF version 1; this reader reads little-endian versions 2 and 3"),
        "empty": (b"", r"the file is empty"),
    }
    # the first key's value type (after magic, version, two counts, the key's length and bytes)
    key_len = struct.unpack_from("<Q", data, 24)[0]
    cases["value type"] = (data[:32 + key_len] + struct.pack("<I", 99) + data[36 + key_len:],
                           r"metadata value type 99 at byte .* is not a GGUF type")
    for name, (raw, message) in cases.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(bytes(raw))
        with pytest.raises(UserError, match=rf"{name}\.gguf is not a readable GGUF file \({message}"):
            open_gguf(path)


def test_find_gguf_file_or_folder(tmp_path, model):
    path = write_gguf(model, tmp_path / "only.gguf")
    assert find_gguf(path) == path
    assert find_gguf(tmp_path) == path
    write_gguf(model, tmp_path / "second.gguf")
    with pytest.raises(UserError, match="holds 2 .gguf files"):
        find_gguf(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert find_gguf(tmp_path) is None  # a checkpoint folder: config.json wins


def test_truncated_file_is_one_clear_error(tmp_path, model):
    path = write_gguf(model, tmp_path / "m.gguf")
    data = path.read_bytes()
    short = tmp_path / "short.gguf"
    short.write_bytes(data[: len(data) - 1000])
    with pytest.raises(UserError, match=r"short\.gguf is truncated: .* download it again"):
        open_gguf(short)
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(data[:200])
    with pytest.raises(UserError, match=r"header\.gguf is not a readable GGUF file"):
        open_gguf(header_only)
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(UserError, match=r"x\.gguf is not a readable GGUF file"):
        open_gguf(not_gguf)


def test_unknown_architecture_and_unsupported_tensor_type(tmp_path, model):
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "llama.gguf"), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(UserError, match=r"llama\.gguf: GGUF architecture 'llama' is not supported"):
        open_gguf(tmp_path / "llama.gguf")
    path = write_gguf(model, tmp_path / "f64.gguf", tensor_type="F64")
    with pytest.raises(UserError, match=r"f64\.gguf: tensor token_embd\.weight has type F64, which the gguf package "
                                        r"cannot dequantize"):
        from_gguf(path)


def test_missing_tensor_is_named(tmp_path, model):
    import gguf

    path = write_gguf(model, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(path))
    writer = gguf.GGUFWriter(str(tmp_path / "less.gguf"), "qwen2")
    for field in reader.fields.values():
        if field.name.startswith("qwen2."):
            value = field.contents()
            writer.add_key_value(field.name, value, field.types[0])
    for t in reader.tensors:
        if t.name != "blk.1.ffn_up.weight":
            writer.add_tensor(t.name, torch.from_numpy(t.data.copy()).reshape(tuple(reversed(t.shape.tolist()))).numpy())
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(UserError, match=r"less\.gguf lacks 1 tensor\(s\) its metadata needs: blk\.1\.ffn_up\.weight"):
        from_gguf(tmp_path / "less.gguf")


# ---------------------------------------------------------------------------------------------
# Qwen-1 (llama.cpp's `qwen` architecture), anchored to Qwen's original code


def _reference(shared_data: Path) -> tuple[Path, dict]:
    folder = shared_data / "qwen1-reference"
    return folder, json.loads((folder / "reference_logits.json").read_text())["cases"]


@pytest.mark.shared_data
def test_qwen1_gguf_equals_original_code(tmp_path, shared_data):
    """The reference checkpoint written as llama.cpp writes Qwen-1 (context length =
    max_position_embeddings 512, seq_length dropped): with model.seq_length=32 restored, logits equal
    Qwen's remote code at every length, NTK and LogN included."""
    folder, cases = _reference(shared_data)
    original = from_pretrained(folder)
    raw = json.loads((folder / "config.json").read_text())
    path = write_gguf(original, tmp_path / "qwen1.gguf", arch="qwen", context_length=raw["max_position_embeddings"])
    ckpt = open_gguf(path)
    assert ckpt.arch == "qwen" and ckpt.config.seq_length == 512 and ckpt.config.use_dynamic_ntk
    restored = from_gguf(path, seq_length=raw["seq_length"])
    as_written = from_gguf(path)
    for name, case in cases.items():
        ids = torch.tensor([case["input_ids"]])
        want = torch.tensor(case["last4_logits"])
        with torch.no_grad():
            assert max_abs_diff(restored(ids)[0, -4:], want) <= 1e-4, name
            drift = max_abs_diff(as_written(ids)[0, -4:], want)
        # below seq_length 32 the dropped key changes nothing; past it NTK and LogN start at 512
        assert drift <= 1e-4 if len(case["input_ids"]) <= 32 else drift > 1e-3, (name, drift)
