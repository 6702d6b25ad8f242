"""Generation ends where the checkpoint says its turn ends: the eos ids of config.json,
generation_config.json and the GGUF header, besides each task's own stop strings."""

from __future__ import annotations

import json

import pytest
import torch

from helpers_checkpoints import PROMPTS, random_model, tiny_bpe_vocab, tiny_config, write_checkpoint, write_gguf
from qwen_eval.backends.qwen import QwenBackend
from qwen_eval.errors import UserError
from qwen_eval.model.loading import declared_eos_ids
from qwen_eval.requests import Generate

transformers = pytest.importorskip("transformers")

EOD = 151643


def _backend(path, **options) -> QwenBackend:
    return QwenBackend.from_config({"name": "qwen", "path": str(path), "device": "cpu", "dtype": "float32",
                                    "max_length": 96, **options})


def test_declared_eos_ids_read_both_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 151643}))
    assert declared_eos_ids(tmp_path) == (151643,)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [151645, 151643]}))
    assert declared_eos_ids(tmp_path) == (151643, 151645)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": "<|im_end|>"}))
    with pytest.raises(UserError, match=r"generation_config\.json: eos_token_id '<\|im_end\|>' is not an id"):
        declared_eos_ids(tmp_path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = random_model(tiny_config(num_heads=8, num_kv_heads=2, use_dynamic_ntk=False, use_logn_attn=False),
                         seed=3)
    return write_checkpoint(model, tmp_path_factory.mktemp("stops"), format="qwen2", tokenizer=True)


@torch.inference_mode()
def test_greedy_texts_stop_at_generation_config_eos_like_transformers(checkpoint):
    """An id the model emits mid-answer is declared as eos in generation_config.json: our texts
    end before it, and equal transformers' generate, which reads the same file."""
    free = _backend(checkpoint)
    assert free.describe()["stop_token_ids"] == [EOD]
    tokenizer = free.engine.tokenizer
    first = free.generate([Generate(PROMPTS[1], max_new_tokens=24)])[0].texts[0]
    emitted = tokenizer.encode(first)
    eos = next(t for i, t in enumerate(emitted) if i >= 4 and t not in emitted[:i])
    (checkpoint / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, EOD]}))
    try:
        stopped = _backend(checkpoint)
        assert stopped.describe()["stop_token_ids"] == sorted({eos, EOD})
        assert stopped.fingerprint != free.fingerprint  # cached answers of the other stops are not reused
        hf = transformers.Qwen2ForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
        answers = stopped.generate([Generate(p, max_new_tokens=24) for p in PROMPTS])
        cut = 0
        for prompt, answer in zip(PROMPTS, answers):
            ids = torch.tensor([tokenizer.encode(prompt)])
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
                              pad_token_id=EOD,
                              suppress_tokens=list(range(tokenizer.vocab_size, hf.config.vocab_size)))
            new = out[0, ids.shape[1]:].tolist()
            if new and new[-1] in (eos, EOD):
                new, cut = new[:-1], cut + 1
            assert answer.texts == (tokenizer.decode(new),)
        assert cut >= 1  # the declared id did end at least one answer early
        assert answers[1].texts[0] == tokenizer.decode(emitted[:emitted.index(eos)])
        override = _backend(checkpoint, stop_token_ids=[EOD])
        assert override.generate([Generate(PROMPTS[1], max_new_tokens=24)])[0].texts[0] == first
    finally:
        (checkpoint / "generation_config.json").unlink()


def test_bad_stop_token_ids_option(checkpoint):
    with pytest.raises(UserError, match=r"model\.stop_token_ids: 999999 is not a token id"):
        _backend(checkpoint, stop_token_ids=[999999])
    with pytest.raises(UserError, match=r"model\.stop_token_ids=.*give null or a list of token ids"):
        _backend(checkpoint, stop_token_ids=["x"])


def test_gguf_eos_is_a_stop(tmp_path):
    """A GGUF's tokenizer.ggml.eos_token_id (an instruct model's <|im_end|>) stops generation."""
    vocab = tiny_bpe_vocab(" ".join(PROMPTS) * 4, size=512)
    model = random_model(tiny_config(vocab_size=512, num_kv_heads=2), seed=5)
    path = write_gguf(model, tmp_path / "m.gguf", vocab=vocab)
    backend = _backend(path)
    eod = backend.engine.tokenizer.eod_id
    assert backend.describe()["stop_token_ids"] == sorted({vocab["eos"], eod})
    assert backend.engine.tokenizer.encode("<|im_end|>") == [vocab["eos"]]
