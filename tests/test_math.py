"""MATH: the Minerva prompt byte for byte, the three data layouts, answer extraction and Minerva
normalisation, the time bound on equivalence, metrics by subject and level, and the oracle replay
over the full real test set."""

from __future__ import annotations

import collections
import json
import re
import threading
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
from qwen_eval.tasks import hendrycks_math
from qwen_eval.tasks.hendrycks_math import MATH, SUBJECTS, MathDoc
from qwen_eval.tasks.math_grading import EquivalenceChecker, last_boxed

FIXTURES = Path(__file__).parent / "fixtures" / "reasoning"
MINERVA_CLOSE = "\nFinal Answer: The final answer is ${answer}$. I hope it is correct."


@pytest.fixture
def task():
    t = MATH()
    yield t
    t.checker.close()


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.shared_data
def test_prompt_is_the_minerva_four_shot(shared_data, task):
    doc = task.load(DataSpec("local", str(shared_data / "math")))[0]
    prompt = task.prompt(doc)
    assert prompt == (FIXTURES / "math_prompt_0.txt").read_text(encoding="utf-8")
    assert prompt.startswith("Problem:\nFind the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.}\n\nSolution:\n")
    assert prompt.count("Problem:\n") == 5 and prompt.count("I hope it is correct.\n\nProblem:\n") == 4
    assert prompt.endswith("\n\nProblem:\n" + doc.problem + "\n\nSolution:")
    assert MATH(shots=0).prompt(doc) == "Problem:\n" + doc.problem + "\n\nSolution:"
    MATH(shots=0).checker.close()


def test_one_greedy_request_stopping_at_problem(task):
    (request,) = task.requests(MathDoc("0", "p", "\\boxed{1}", "algebra", 1, "1"))
    assert isinstance(request, Generate) and request.stop == ("Problem:",)
    assert request.temperature == 0.0 and request.max_new_tokens == 1024


def test_last_boxed_balances_braces():
    assert last_boxed("a $\\boxed{1}$ then $\\boxed{\\frac{1}{\\sqrt{2}}}$.") == "\\frac{1}{\\sqrt{2}}"
    assert last_boxed("so $\\boxed 5$ apples") == "5"
    assert last_boxed("\\fbox{7}") == "7"
    assert last_boxed("unclosed \\boxed{1") is None and last_boxed("none") is None


# --- data layouts ------------------------------------------------------------------------------------


def write_tree(root: Path, rows: list[tuple[str, str, dict]]) -> None:
    for subject, stem, row in rows:
        (root / "test" / subject).mkdir(parents=True, exist_ok=True)
        (root / "test" / subject / f"{stem}.json").write_text(json.dumps(row), encoding="utf-8")


@pytest.mark.shared_data
def test_json_tree_layout_gives_subject_and_stem_ids(tmp_path, shared_data, task):
    rows = read_rows(shared_data / "math" / "test.jsonl")
    algebra = [r for r in rows if r["type"] == "Algebra"][:2]
    geometry = [r for r in rows if r["type"] == "Geometry"][:1]
    write_tree(tmp_path, [("algebra", "10", algebra[0]), ("algebra", "9", algebra[1]), ("geometry", "3", geometry[0])])
    docs = task.load(DataSpec("local", str(tmp_path)))
    assert [d.doc_id for d in docs] == ["algebra/9", "algebra/10", "geometry/3"]  # numeric order of stems
    assert docs[0].problem == algebra[1]["problem"] and docs[2].subject == "geometry"
    assert [d.doc_id for d in task.load(DataSpec("local", str(tmp_path / "test")))] == [d.doc_id for d in docs]


@pytest.mark.shared_data
def test_jsonl_layout_gives_line_ids(shared_data, task):
    docs = task.load(DataSpec("local", str(shared_data / "math" / "test.jsonl")))[:3]
    assert [d.doc_id for d in docs] == ["0", "1", "2"]
    assert docs[0].level == 3 and docs[0].subject == "algebra" and docs[0].answer == last_boxed(docs[0].solution)


@pytest.mark.shared_data
def test_sample_lines_are_real_lines(shared_data, task):
    real = set((shared_data / "math" / "test.jsonl").read_text(encoding="utf-8").splitlines())
    sample = (sample_dir("math") / "test.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(sample) == 14 and all(line in real for line in sample)
    docs = task.load(DataSpec("sample"))
    assert sorted({d.subject for d in docs}) == sorted(SUBJECTS.values())


@pytest.mark.shared_data
def test_hub_configs_are_the_subjects(monkeypatch, shared_data, task):
    rows = read_rows(shared_data / "math" / "test.jsonl")
    calls = []

    def fake_hub(name, dataset_id, config, split):
        calls.append((dataset_id, config, split))
        return [r for r in rows if SUBJECTS[r["type"]] == config][:2]

    monkeypatch.setattr(hendrycks_math, "load_hub_dataset", fake_hub)
    docs = task.load(DataSpec("hub"))[:5]
    assert calls == [("EleutherAI/hendrycks_math", s, "test") for s in SUBJECTS.values()]
    assert [d.doc_id for d in docs] == ["algebra/0", "algebra/1", "counting_and_probability/0",
                                        "counting_and_probability/1", "geometry/0"]


@pytest.mark.parametrize("row,message", [
    ({"problem": "p", "level": "Level 1", "type": "Algebra", "solution": "no box"}, "no \\\\boxed"),
    ({"problem": "p", "level": "Level 1", "type": "Calculus", "solution": "\\boxed{1}"}, "not a MATH subject"),
    ({"problem": "p", "type": "Algebra", "solution": "\\boxed{1}"}, "expected string fields"),
])
def test_bad_rows_are_one_line_errors(tmp_path, task, row, message):
    (tmp_path / "test.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=message) as err:
        task.load(DataSpec("local", str(tmp_path)))
    assert "row 0" in str(err.value)


def test_empty_folder_and_bad_options(tmp_path, task):
    with pytest.raises(UserError, match="neither test.jsonl nor test/<subject>/<n>.json"):
        task.load(DataSpec("local", str(tmp_path)))
    with pytest.raises(UserError, match="task.subset='math5000'"):
        MATH({"subset": "math5000"})


# --- equivalence under a time bound ----------------------------------------------------------------


def test_a_pathological_answer_times_out_instead_of_hanging():
    checker = EquivalenceChecker(timeout=1.0)
    try:
        start = time.perf_counter()
        verdict = checker("10^{10^{10^{10}}}", "1")
        assert verdict.timed_out and not verdict.equivalent
        assert time.perf_counter() - start < 30  # the worker was killed, not waited for
        assert checker("\\frac{1}{2}", "0.5").equivalent  # a fresh worker takes over
    finally:
        checker.close()


def test_the_bound_works_off_the_main_thread():
    checker = EquivalenceChecker(timeout=1.0)
    verdicts = []
    thread = threading.Thread(target=lambda: verdicts.extend([checker("10^{10^{10^{10}}}", "2"), checker("2\\sqrt{3}", "\\sqrt{12}")]))
    thread.start()
    thread.join(120)
    checker.close()
    assert [(v.equivalent, v.timed_out) for v in verdicts] == [(False, True), (True, False)]


def test_timeouts_are_recorded_in_samples_and_metrics():
    task = MATH({"equiv_timeout": 1.0})
    try:
        doc = MathDoc("0", "p", "\\boxed{1}", "algebra", 2, "1")
        sample = task.score(doc, [GenerateResult(("Final Answer: The final answer is $10^{10^{10^{10}}}$. I hope it is correct.",))])
    finally:
        task.checker.close()
    assert sample.extra["equiv_timed_out"] and sample.extra["equiv"] == 0.0 and sample.score == 0.0
    assert task.aggregate([sample])["equiv_timed_out"] == 1.0


def test_metrics_by_subject_and_level(task):
    docs = [MathDoc("0", "p", "", "algebra", 1, "1"), MathDoc("1", "p", "", "algebra", 5, "2"),
            MathDoc("2", "p", "", "geometry", 5, "\\frac{1}{2}")]
    answers = ["$1$", "$3$", "$0.5$"]
    samples = [task.score(d, [GenerateResult((f"Final Answer: The final answer is {a}. I hope it is correct.",))])
               for d, a in zip(docs, answers)]
    metrics = task.aggregate(samples)
    assert metrics["exact_match"] == pytest.approx(1 / 3) and metrics["equiv"] == pytest.approx(2 / 3)
    assert metrics["algebra/exact_match"] == 0.5 and metrics["geometry/exact_match"] == 0.0 and metrics["geometry/equiv"] == 1.0
    assert metrics["level_1/exact_match"] == 1.0 and metrics["level_5/equiv"] == 0.5
    assert all(f"{name}_stderr" in metrics for name in metrics if not name.endswith("_stderr"))
    assert not any(k.startswith(("precalculus/", "level_3/")) for k in metrics)


# --- the real test set -----------------------------------------------------------------------------


@pytest.mark.shared_data
def test_oracle_replay_of_the_real_test_set(shared_data, task):
    """Each reference solution followed by Minerva's closing sentence with its own boxed answer.

    exact_match 4999/5000: line 2269's box ends in a period (`\\frac{7}{5} + \\frac{1}{5} i.`), which
    Minerva's `.$` -> `$` substitution strips from the answer written in math mode but not from the
    bare gold. equiv (math_verify) scores all 5000."""
    start = time.perf_counter()
    docs = task.load(DataSpec("local", str(shared_data / "math")))
    assert len(docs) == 5000
    backend = ReplayBackend({d.doc_id: d.solution + MINERVA_CLOSE.format(answer=d.answer) for d in docs})
    result = evaluate(task, docs, backend)
    assert [s.doc_id for s in result.samples if s.score < 1] == ["2269"]
    assert result.metrics["exact_match"] == pytest.approx(4999 / 5000) and result.metrics["equiv"] == 1.0
    assert result.metrics["equiv_timed_out"] == 0.0
    assert {f"{s}/exact_match" for s in SUBJECTS.values()} | {f"level_{n}/equiv" for n in range(1, 6)} <= set(result.metrics)
    print(f"math oracle: {time.perf_counter() - start:.2f}s")


# --- MATH-500 ---------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_math500_from_the_jsonl_is_its_500_problems_in_its_order(shared_data):
    task = MATH({"subset": "math500"})
    docs = task.load(DataSpec("local", str(shared_data / "math")))
    task.checker.close()
    assert len(docs) == 500 == len({d.doc_id for d in docs})
    assert [(d.unique_id, d.doc_id) for d in docs[:3]] == [
        ("test/precalculus/807.json", "4914"), ("test/intermediate_algebra/1994.json", "2611"),
        ("test/algebra/2584.json", "757")]
    assert docs[0].problem.startswith("Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.")
    assert collections.Counter(d.subject for d in docs) == {
        "algebra": 124, "intermediate_algebra": 97, "prealgebra": 82, "number_theory": 62, "precalculus": 56,
        "geometry": 41, "counting_and_probability": 38}
    assert collections.Counter(d.level for d in docs) == {1: 43, 2: 90, 3: 105, 4: 128, 5: 134}
    assert all(d.unique_id.split("/")[1] == d.subject for d in docs)


@pytest.mark.shared_data
def test_math500_from_the_json_tree_selects_by_file_id(tmp_path, shared_data):
    rows = read_rows(shared_data / "math" / "test.jsonl")
    from_jsonl = MATH({"subset": "math500"}).load(DataSpec("local", str(shared_data / "math")))
    # The tree holds the 500 problems under their ids plus one more; its problems are found by id.
    write_tree(tmp_path, [(d.subject, d.unique_id.split("/")[2][:-5], rows[int(d.doc_id)]) for d in from_jsonl]
               + [("algebra", "999999", rows[0])])
    task = MATH({"subset": "math500"})
    docs = task.load(DataSpec("local", str(tmp_path)))[:5]
    task.checker.close()
    assert [d.unique_id for d in docs] == [d.unique_id for d in from_jsonl[:5]]
    assert [d.doc_id for d in docs] == ["precalculus/807", "intermediate_algebra/1994", "algebra/2584",
                                        "number_theory/572", "algebra/1349"]
    assert [d.problem for d in docs] == [d.problem for d in from_jsonl[:5]]


def test_math500_needs_the_full_test_set():
    task = MATH({"subset": "math500"})
    with pytest.raises(UserError, match="499 of its 500 problems are not in the loaded data"):
        task.load(DataSpec("sample"))
    task.checker.close()


@pytest.mark.slow
@pytest.mark.shared_data
def test_cli_end_to_end_on_real_data(tmp_path, shared_data):
    out = tmp_path / "run"
    proc = run_cli("task=math", "model=tiny", f"data.path={shared_data / 'math'}", "limit=2", "task.max_new_tokens=8",
                   f"output_dir={out}", "progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = read_results(out)
    assert results["headline"]["metric"] == "exact_match" and results["n_samples"] == 2
    assert "equiv" in results["metrics"]
    assert any(re.fullmatch(r"level_\d/equiv", k) for k in results["metrics"])
    assert any(k.endswith("/exact_match") and not k.startswith("level_") for k in results["metrics"])
    selection = results["data"]["selection"]
    assert results["data"]["n_documents"] == 5000 and selection["limit"] == 2
    assert [s["doc_id"] for s in read_samples(out)] == selection["doc_ids"]


@pytest.mark.shared_data
def test_limit_draws_a_seeded_subset_across_subjects_and_levels(shared_data):
    """`limit=32` on MATH is not the first 32 problems (all algebra): 32 drawn across subject x
    level in proportion to their sizes, the same for the same seed."""
    def load(seed: int = 1234, limit: int | None = 32) -> list[MathDoc]:
        task = MATH(seed=seed)
        try:
            return task.load(DataSpec("local", str(shared_data / "math")), limit=limit)
        finally:
            task.checker.close()

    every, picked = load(limit=None), load()
    assert len(picked) == 32 and len({d.subject for d in picked}) == 7
    assert {d.level for d in picked} >= {1, 2, 3, 4, 5}
    algebra = sum(d.subject == "algebra" for d in picked)
    assert algebra in (7, 8)  # 1187 of 5000 problems: 7.6 of 32
    order = {d.doc_id: i for i, d in enumerate(every)}
    assert [order[d.doc_id] for d in picked] == sorted(order[d.doc_id] for d in picked)  # in the data's order
    assert [d.doc_id for d in load()] == [d.doc_id for d in picked]
    assert [d.doc_id for d in load(seed=7)] != [d.doc_id for d in picked]
