"""BBH: the official CoT prompts (shipped byte for byte), the prompt join, per-task limits, data
sources, errors, and the oracle over all 27 real tasks."""

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
from qwen_eval.tasks import bbh
from qwen_eval.tasks.bbh import BBH, TASKS

FIXTURES = Path(__file__).parent / "fixtures" / "reasoning"


@pytest.mark.shared_data
def test_package_prompts_are_the_official_files(shared_data):
    shipped = sorted(p.name for p in (sample_dir("bbh") / "cot-prompts").glob("*.txt"))
    assert shipped == sorted(f"{t}.txt" for t in TASKS) and len(shipped) == 27
    for name in shipped:
        assert (sample_dir("bbh") / "cot-prompts" / name).read_bytes() == (shared_data / "bbh" / "cot-prompts" / name).read_bytes()
    assert sorted(p.stem for p in (shared_data / "bbh" / "bbh").glob("*.json")) == sorted(TASKS)


@pytest.mark.shared_data
def test_prompt_is_the_text_after_the_dashes_then_the_question(shared_data):
    task = BBH({"subtasks": ["date_understanding"]})
    doc = task.load(DataSpec("local", str(shared_data / "bbh")), limit=1)[0]
    prompt = task.prompt(doc)
    assert prompt == (FIXTURES / "bbh_prompt_date_understanding_0.txt").read_text(encoding="utf-8")
    raw = (shared_data / "bbh" / "cot-prompts" / "date_understanding.txt").read_text(encoding="utf-8")
    after_dashes = raw.split("\n", 2)[2]
    assert raw.split("\n")[1] == "-----" and prompt == after_dashes + f"\n\nQ: {doc.input}\nA: Let's think step by step."
    assert prompt.startswith("Infer the date from context.\n\nQ: ") and prompt.count("\nA: Let's think step by step.") == 4


def test_one_greedy_request_stopping_at_the_next_question():
    task = BBH()
    (request,) = task.requests(bbh.BBHDoc("navigate/0", "navigate", "Go?", "Yes"))
    assert isinstance(request, Generate) and request.stop == ("\n\nQ:",)
    assert request.temperature == 0.0 and request.max_new_tokens == 1024


@pytest.mark.shared_data
def test_limit_is_per_task_and_ids_are_task_index(shared_data):
    docs = BBH().load(DataSpec("local", str(shared_data / "bbh")), limit=2)
    assert len(docs) == 54
    assert [d.doc_id for d in docs[:4]] == ["boolean_expressions/0", "boolean_expressions/1",
                                            "causal_judgement/0", "causal_judgement/1"]


def test_sample_runs_all_27_tasks():
    docs = BBH().load(DataSpec("sample"))
    assert len(docs) == 54 and {d.task for d in docs} == set(TASKS)


@pytest.mark.shared_data
def test_hub_uses_package_prompts(monkeypatch, shared_data):
    examples = json.loads((shared_data / "bbh" / "bbh" / "navigate.json").read_text(encoding="utf-8"))["examples"]
    calls = []
    monkeypatch.setattr(bbh, "load_hub_dataset", lambda *args: calls.append(args) or examples[:3])
    task = BBH({"subtasks": "navigate"})
    docs = task.load(DataSpec("hub"))
    assert calls == [("bbh", "lukaemon/bbh", "navigate", "test")]
    local = BBH({"subtasks": "navigate"})
    assert [task.prompt(d) for d in docs] == [local.prompt(d) for d in local.load(DataSpec("local", str(shared_data / "bbh")), limit=3)]


@pytest.mark.shared_data
def test_local_copy_without_prompts_uses_package_prompts(tmp_path, shared_data):
    (tmp_path / "bbh").mkdir()
    (tmp_path / "bbh" / "snarks.json").write_bytes((shared_data / "bbh" / "bbh" / "snarks.json").read_bytes())
    task = BBH({"subtasks": ["snarks"]})
    (doc,) = task.load(DataSpec("local", str(tmp_path)), limit=1)
    assert task.prompt(doc).startswith("Determine which of two sentences is sarcastic.")


@pytest.mark.parametrize("content,message", [
    ("not json", "not a BBH task file"),
    ('{"canary": "x"}', 'no "examples" list'),
    ('{"examples": [{"input": "q"}]}', 'example 0 needs string fields'),
])
def test_bad_task_files_are_one_line_errors(tmp_path, content, message):
    (tmp_path / "bbh").mkdir()
    (tmp_path / "bbh" / "navigate.json").write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        BBH({"subtasks": ["navigate"]}).load(DataSpec("local", str(tmp_path)))


def test_bad_layout_and_options(tmp_path):
    with pytest.raises(UserError, match="no bbh/ folder"):
        BBH().load(DataSpec("local", str(tmp_path)))
    with pytest.raises(UserError, match="'navigation' is not a BBH task"):
        BBH({"subtasks": ["navigation"]})
    with pytest.raises(UserError, match="use shots=3"):
        BBH(shots=5)


def test_metric_is_the_plain_mean_of_task_accuracies():
    task = BBH()
    def sample(t, correct):
        return task.score(bbh.BBHDoc(f"{t}/0", t, "q", "Yes"), [GenerateResult((f"So the answer is {'Yes' if correct else 'No'}.",))])
    samples = [sample("navigate", True)] + [sample("web_of_lies", c) for c in (True, False, False, False)]
    metrics = task.aggregate(samples)
    assert metrics["navigate/acc"] == 1.0 and metrics["web_of_lies/acc"] == 0.25
    assert metrics["acc"] == pytest.approx(0.625)  # not the 2/5 micro average
    assert all(f"{name}_stderr" in metrics for name in metrics if not name.endswith("_stderr"))


def oracle(doc) -> str:
    return f"Reasoning about the question.\nSo the answer is {doc.target}.\n\nQ: another question"


@pytest.mark.shared_data
def test_oracle_scores_every_real_example(shared_data):
    """Scoring each target as `So the answer is X.` directly: all 6511 correct, all 27 tasks."""
    start = time.perf_counter()
    task = BBH()
    docs = task.load(DataSpec("local", str(shared_data / "bbh")))
    assert len(docs) == 6511
    wrong = [d.doc_id for d in docs if task.score(d, [GenerateResult((oracle(d).split("\n\nQ:")[0],))]).score != 1]
    assert wrong == []
    print(f"bbh direct oracle: {time.perf_counter() - start:.2f}s")


@pytest.mark.shared_data
def test_oracle_replay_through_the_runner(shared_data):
    """Through model=replay every task scores 100% but causal_judgement: its examples 32 and 119 (and
    36 and 104) are the same question with opposite targets, so one prompt gets one answer and any
    deterministic model scores at most 185/187 there."""
    start = time.perf_counter()
    task = BBH()
    docs = task.load(DataSpec("local", str(shared_data / "bbh")))
    result = evaluate(task, docs, ReplayBackend({d.doc_id: oracle(d) for d in docs}))
    assert sorted(s.doc_id for s in result.samples if s.score != 1) == ["causal_judgement/104", "causal_judgement/119"]
    assert {t: result.metrics[f"{t}/acc"] for t in TASKS if result.metrics[f"{t}/acc"] != 1} == {
        "causal_judgement": pytest.approx(185 / 187)}
    assert result.metrics["acc"] == pytest.approx((26 + 185 / 187) / 27)
    print(f"bbh replay oracle: {time.perf_counter() - start:.2f}s")


@pytest.mark.slow
@pytest.mark.shared_data
def test_cli_end_to_end_on_real_data(tmp_path, shared_data):
    out = tmp_path / "run"
    proc = run_cli("task=bbh", "model=tiny", f"data.path={shared_data / 'bbh'}", "limit=1", "task.max_new_tokens=4",
                   f"output_dir={out}", "progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = read_results(out)
    assert results["headline"]["metric"] == "acc" and results["n_samples"] == 27
    assert sum(k.endswith("/acc") for k in results["metrics"]) == 27
    assert read_samples(out)[0]["doc_id"] == "boolean_expressions/0"
