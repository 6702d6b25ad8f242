"""GSM8K: Qwen's prompt byte for byte, stops, both extractors, data sources, bad data, and the oracle
replay over the full real test set."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cli_helpers import read_results, read_samples, run_cli
from qwen_eval.backends.replay import ReplayBackend
from qwen_eval.data import sample_dir
from qwen_eval.errors import UserError
from qwen_eval.requests import Generate, GenerateResult
from qwen_eval.runner import evaluate
from qwen_eval.task import DataSpec
from qwen_eval.tasks import gsm8k
from qwen_eval.tasks.gsm8k import GSM8K

FIXTURES = Path(__file__).parent / "fixtures" / "reasoning"


@pytest.mark.shared_data
def test_prompt_is_qwens_file_then_the_question(shared_data):
    task = GSM8K()
    doc = task.load(DataSpec("local", str(shared_data / "gsm8k")), limit=1)[0]
    prompt = task.prompt(doc)
    assert prompt == (FIXTURES / "gsm8k_prompt_0.txt").read_text(encoding="utf-8")
    # Qwen's doc_to_text: fewshot_prompt + "\nQuestion: " + question + "\nLet's think step by step\n"
    fewshot = (shared_data / "prompts" / "gsm8k_qwen_8shot.txt").read_text(encoding="utf-8")
    assert prompt == fewshot + "\nQuestion: " + doc.question + "\nLet's think step by step\n"
    assert (sample_dir("gsm8k") / "qwen_8shot_prompt.txt").read_bytes() == (shared_data / "prompts" / "gsm8k_qwen_8shot.txt").read_bytes()


def test_fewer_shots_keep_the_first_examples():
    one = GSM8K(shots=1).prompt(gsm8k.GSM8KDoc("0", "Q?", "#### 1", "1"))
    assert one.startswith("Question: In 2004, there were 60 kids at a cookout.") and one.count("Question:") == 2
    assert "The answer is 20\n\nQuestion: Q?\nLet's think step by step\n" in one
    assert GSM8K(shots=0).prompt(gsm8k.GSM8KDoc("0", "Q?", "#### 1", "1")) == "Question: Q?\nLet's think step by step\n"


def test_one_greedy_generate_request_with_qwens_stops():
    (request,) = GSM8K().requests(gsm8k.GSM8KDoc("0", "Q?", "#### 1", "1"))
    assert isinstance(request, Generate)
    assert request.stop == ("<|endoftext|>", "\n\n\n", "\n\n", "Question:")
    assert request.temperature == 0.0 and request.max_new_tokens == 512 and request.n == 1
    assert GSM8K({"max_new_tokens": 64}).requests(gsm8k.GSM8KDoc("0", "Q?", "#### 1", "1"))[0].max_new_tokens == 64


def test_headline_follows_task_extract_and_both_are_reported():
    doc = gsm8k.GSM8KDoc("0", "Q?", "#### -3", "-3")
    for extract, headline in (("qwen", 0.0), ("strict", 1.0)):
        task = GSM8K({"extract": extract})
        sample = task.score(doc, [GenerateResult(("It drops to -3.\nThe answer is -3",))])
        assert sample.score == headline and sample.target == "-3"
        metrics = task.aggregate([sample])
        assert metrics["acc"] == headline and metrics["acc_qwen"] == 0.0 and metrics["acc_strict"] == 1.0
        assert {"acc_stderr", "acc_qwen_stderr", "acc_strict_stderr"} <= set(metrics)
    with pytest.raises(UserError, match="task.extract='loose'"):
        GSM8K({"extract": "loose"})


def test_gold_is_the_number_after_hashes_without_commas(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "1,000 + 200\n#### 1,200"}) + "\n", encoding="utf-8")
    (doc,) = GSM8K().load(DataSpec("local", str(path)))
    assert doc.gold == "1200" and doc.doc_id == "0"


@pytest.mark.parametrize("row,message", [
    ({"question": "q", "answer": "no final line"}, "no '#### N' line"),
    ({"question": "q"}, 'string fields "question" and "answer"'),
    ({"question": "q", "answer": "#### 1.2.3"}, "is not a number"),
])
def test_bad_rows_are_one_line_errors(tmp_path, row, message):
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"question": "fine", "answer": "#### 1"}) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=message) as err:
        GSM8K().load(DataSpec("local", str(tmp_path)))
    assert "row 1" in str(err.value) and "\n" not in str(err.value)


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(UserError, match="test.jsonl"):
        GSM8K().load(DataSpec("local", str(tmp_path)))


@pytest.mark.shared_data
def test_sample_is_the_first_real_lines(shared_data):
    sample = (sample_dir("gsm8k") / "test.jsonl").read_bytes()
    assert (shared_data / "gsm8k" / "test.jsonl").read_bytes().startswith(sample)
    docs = GSM8K().load(DataSpec("sample"))
    assert [d.doc_id for d in docs] == [str(i) for i in range(8)] and docs[0].gold == "18"
    assert len(GSM8K().load(DataSpec("sample"), limit=3)) == 3


@pytest.mark.shared_data
def test_hub_rows_give_the_same_documents(monkeypatch, shared_data):
    rows = [json.loads(line) for line in (shared_data / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()[:20]]
    calls = []
    monkeypatch.setattr(gsm8k, "load_hub_dataset", lambda *args: calls.append(args) or rows)
    assert GSM8K().load(DataSpec("hub")) == GSM8K().load(DataSpec("local", str(shared_data / "gsm8k")), limit=20)
    assert calls == [("gsm8k", "openai/gsm8k", "main", "test")]


@pytest.mark.shared_data
def test_oracle_replay_of_the_real_test_set(shared_data):
    """The references' own answers as completions: strict scores all 1319; Qwen's rule drops the sign
    of the two negative golds (lines 489 and 1113) and scores 1317."""
    start = time.perf_counter()
    task = GSM8K()
    docs = task.load(DataSpec("local", str(shared_data / "gsm8k")))
    assert len(docs) == 1319
    backend = ReplayBackend({d.doc_id: f"Working from the reference.\nThe answer is {d.gold}\n\nQuestion: next" for d in docs})
    result = evaluate(task, docs, backend)
    assert result.metrics["acc_strict"] == 1.0
    assert round(result.metrics["acc_qwen"] * 1319) == 1317 and result.metrics["acc"] == result.metrics["acc_qwen"]
    assert sorted((s.doc_id, s.target, s.prediction) for s in result.samples if s.score == 0) == [
        ("1113", "-3", "3"), ("489", "-10", "10")]
    assert all(s.response.endswith(f"The answer is {s.target}") for s in result.samples)  # cut at "\n\n"
    print(f"gsm8k oracle: {time.perf_counter() - start:.2f}s")


@pytest.mark.slow
@pytest.mark.shared_data
def test_cli_end_to_end_on_real_data(tmp_path, shared_data):
    out = tmp_path / "run"
    proc = run_cli("task=gsm8k", "model=tiny", f"data.path={shared_data / 'gsm8k'}", "limit=2", "task.max_new_tokens=8",
                   "task.extract=strict", f"output_dir={out}", "progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = read_results(out)
    assert results["headline"]["metric"] == "acc" and results["n_samples"] == 2
    assert {"acc_qwen", "acc_strict"} <= set(results["metrics"])
    samples = read_samples(out)
    assert [s["doc_id"] for s in samples] == ["0", "1"]
    assert samples[0]["prompt"].endswith("Let's think step by step\n") and "prediction_qwen" in samples[0]
