"""HumanEval under Qwen2.5-Coder's instruct protocol (`task.prompt=instruct`): the request and its
budgets, the raw and the sanitized solution, the programs that run, what a sample records, the 164
restated canonical solutions, and the counterpart of MBPP+'s oracle test: on HumanEval tasks whose
tests are plain `assert candidate(...) == ...` lines, the verdicts equal `evalplus.evaluate`'s."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

from qwen_eval.errors import UserError
from qwen_eval.requests import GenerateResult
from qwen_eval.task import DataSpec
from qwen_eval.tasks.evalplus_sanitize import sanitize
from qwen_eval.tasks.humaneval import HumanEval, helpers_the_test_calls
from qwen_eval.tasks.qwen_coder_instruct import INSTRUCT_STOPS, raw_solution


@pytest.fixture(scope="module")
def docs():
    return HumanEval().load(DataSpec())


def instruct(**options) -> HumanEval:
    return HumanEval({"prompt": "instruct", **options})


def test_the_request_and_its_budgets(docs):
    (request,) = instruct().requests(docs[0])
    assert request.context == "" and request.prefill == "```python\n" and request.stop == INSTRUCT_STOPS
    assert request.messages[1] == ("user", "Can you complete the following Python function?\n```python\n"
                                           + docs[0].prompt.strip() + "\n```\n")
    assert (request.max_new_tokens, request.max_length) == (2048, 1536)
    changed = instruct(instruct_max_new_tokens=300, instruct_max_length=None).requests(docs[0])[0]
    assert (changed.max_new_tokens, changed.max_length) == (300, None)
    base = HumanEval().requests(docs[0])[0]  # the other protocols keep their budget and have no cap
    assert (base.max_new_tokens, base.max_length, base.context) == (512, None, docs[0].prompt)
    assert HumanEval.version == "2"
    with pytest.raises(UserError, match="task.instruct_max_length=0 must be a whole number >= 1"):
        instruct(instruct_max_length=0)


def test_raw_solution_is_generate_py_s_post_processing():
    assert raw_solution("def f():\n\treturn 1\n```\nExplanation: ```x```") == "def f():\n    return 1\n"
    assert raw_solution("def f():\n    return 1") == "def f():\n    return 1"
    assert raw_solution("```") == "" and raw_solution("") == ""


def test_the_programs_that_run(docs):
    doc = docs[2]  # truncate_number
    reply = ("def truncate_number(number: float) -> float:\n\treturn number % 1.0\n\nprint(truncate_number(3.5))\n"
             "```\nThis works.")
    task = instruct()
    sanitized, raw = task.checks(doc, reply)
    tests = "\n" + doc.test + "\n" + "check(truncate_number)"
    assert sanitized.name == "sanitized" and sanitized.program == (
        "def truncate_number(number: float) -> float:\n    return number % 1.0" + tests)
    assert raw.name == "raw" and raw.program == (
        "def truncate_number(number: float) -> float:\n    return number % 1.0\n\nprint(truncate_number(3.5))\n" + tests)
    assert task.program(doc, reply) == sanitized.program
    assert task.metric_stems == ("pass", "raw_pass") and HumanEval().metric_stems == ("pass",)


@pytest.mark.slow
def test_a_sample_records_both_solutions_and_the_program_that_ran(docs):
    doc = docs[2]
    task = instruct()
    # the module-level call raises: the raw program fails, the sanitizer drops the call
    reply = "def truncate_number(number):\n    return number % 1.0\n\ntruncate_number(None)\n"
    (sample,) = task.score_many([doc], [[GenerateResult((reply,))]])
    row = sample.to_json()
    assert row["raw_solution"] == reply and row["solution"] == sanitize(reply, "truncate_number")
    assert row["program"] == row["solution"] + "\n" + doc.test + "\n" + "check(truncate_number)"
    assert row["outcome"]["status"] == "passed" and row["reason"] is None and row["prediction"] == "passed"
    assert row["raw_outcome"]["status"] == "failed" and "TypeError" in row["raw_reason"]
    metrics = task.aggregate([sample])
    assert (metrics["pass@1"], metrics["raw_pass@1"]) == (1.0, 0.0) and "raw_pass@1_stderr" in metrics


@pytest.mark.slow
def test_every_restated_canonical_solution_passes_raw_and_sanitized(docs):
    """HumanEval/50's test calls encode_shift, a helper of the prompt that decode_shift does not use,
    so the sanitizer drops it: the program puts back the prompt's helpers the test calls (EvalPlus
    itself tests decode_shift alone, on stored inputs, and passes it)."""
    task = instruct(sandbox={"workers": 2})
    replies = [d.prompt + d.canonical_solution for d in docs]
    samples = task.score_many(docs, [[GenerateResult((r,))] for r in replies])
    assert [s.doc_id for s in samples if s.extra["raw_outcome"]["status"] != "passed"] == []
    assert [(s.doc_id, s.extra["reason"]) for s in samples if s.extra["outcome"]["status"] != "passed"] == []
    [fifty] = [s for s in samples if s.doc_id == "HumanEval/50"]
    assert "def encode_shift" not in fifty.extra["solution"] and "def encode_shift" in fifty.extra["program"]
    metrics = task.aggregate(samples)
    assert len(samples) == 164 and metrics["raw_pass@1"] == 1.0 and metrics["pass@1"] == 1.0


def test_the_tests_helpers_come_from_the_prompt_only_where_the_solution_lacks_them():
    prompt = "def helper(x):\n    return x + 1\n\n\ndef f(x):\n    \"\"\"doc\"\"\"\n"
    test = "def check(candidate):\n    assert candidate(helper(1)) == 2\n"
    assert helpers_the_test_calls(prompt, test, "def f(x):\n    return x\n") == "def helper(x):\n    return x + 1"
    assert helpers_the_test_calls(prompt, test, "def helper(x):\n    return 0\ndef f(x):\n    return x\n") == ""
    assert helpers_the_test_calls(prompt, test, "def f(:\n") == ""  # a solution that does not parse: nothing guessed


# --- the counterpart of the MBPP+ oracle: evalplus.evaluate --dataset humaneval ---------------------

def assert_inputs(test: str) -> list[list] | None:
    """The arguments of `check`'s asserts when every statement is `assert candidate(...) == literal`."""
    tree = ast.parse(test)
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        return None
    inputs = []
    for stmt in check.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # a docstring or a bare string
        if not (isinstance(stmt, ast.Assert) and isinstance(stmt.test, ast.Compare) and len(stmt.test.ops) == 1
                and isinstance(stmt.test.ops[0], ast.Eq) and isinstance(stmt.test.left, ast.Call)
                and isinstance(stmt.test.left.func, ast.Name) and stmt.test.left.func.id == "candidate"
                and not stmt.test.left.keywords):
            return None
        try:
            inputs.append([ast.literal_eval(a) for a in stmt.test.left.args])
            ast.literal_eval(stmt.test.comparators[0])
        except ValueError:
            return None
    return inputs or None


def counterpart_problems(docs, count: int) -> list[dict]:
    """HumanEval+ rows (EvalPlus's layout) for the first `count` tasks whose tests are plain asserts:
    their base inputs are the asserts' arguments, no plus inputs."""
    rows = []
    for d in docs:
        inputs = assert_inputs(d.test)
        if inputs and d.entry_point != "find_zero":
            rows.append({"task_id": d.doc_id, "prompt": d.prompt, "entry_point": d.entry_point,
                         "canonical_solution": d.canonical_solution, "base_input": inputs, "plus_input": [],
                         "atol": 0, "contract": ""})
        if len(rows) == count:
            break
    return rows


def counterpart_replies(row: dict) -> list[tuple[str, str]]:
    ep, full = row["entry_point"], row["prompt"] + row["canonical_solution"]
    last = tuple(row["base_input"][-1])
    return [("canonical", full),
            ("none", f"def {ep}(*args):\n    return None\n"),
            ("raises", f"def {ep}(*args):\n    raise ValueError('no')\n"),
            ("hangs", f"def {ep}(*args):\n    while True:\n        pass\n"),
            ("wrong_on_the_last", full + f"\n_canonical = {ep}\n\ndef {ep}(*args):\n    if args == {last!r}:\n"
                                         f"        return None\n    return _canonical(*args)\n")]


@pytest.mark.slow
def test_verdicts_equal_evalplus_evaluate_on_plain_assert_tasks(docs, tmp_path):
    pytest.importorskip("evalplus")
    rows = counterpart_problems(docs, 8)
    assert len(rows) == 8
    plus_file = tmp_path / "HumanEvalPlus-subset.jsonl"
    plus_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    by_id = {d.doc_id: d for d in docs}
    cases = [(r["task_id"], kind, reply) for r in rows for kind, reply in counterpart_replies(r)]
    task = instruct(sandbox={"workers": 2, "timeout": 3})
    samples = task.score_many([by_id[t] for t, _, _ in cases], [[GenerateResult((reply,))] for _, _, reply in cases])

    texts = sorted({(t, s.extra[key]) for (t, _, _), s in zip(cases, samples) for key in ("raw_solution", "solution")})
    sample_file = tmp_path / "samples.jsonl"
    sample_file.write_text("".join(json.dumps({"task_id": t, "solution": x}) + "\n" for t, x in texts), encoding="utf-8")
    env = {**os.environ, "HUMANEVAL_OVERRIDE_PATH": str(plus_file), "XDG_CACHE_HOME": str(tmp_path / "evalplus-cache")}
    proc = subprocess.run([sys.executable, "-m", "evalplus.evaluate", "--dataset", "humaneval", "--samples",
                           str(sample_file), "--parallel", "2", "--base_only"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "samples_eval_results.json").read_text())["eval"]
    theirs = {}
    for r in rows:
        solutions = [x for t, x in texts if t == r["task_id"]]
        for text, result in zip(solutions, results[r["task_id"]]):
            assert result["solution"] == text
            theirs[(r["task_id"], text)] = result["base_status"] == "pass"

    differ = []
    for (t, kind, _), s in zip(cases, samples):
        for text_key, outcome_key in (("raw_solution", "raw_outcome"), ("solution", "outcome")):
            ours = s.extra[outcome_key]["status"] == "passed"
            if ours != theirs[(t, s.extra[text_key])]:
                differ.append((t, kind, outcome_key, ours))
    assert differ == []
    raw = {(t, kind): s.extra["raw_outcome"]["status"] for (t, kind, _), s in zip(cases, samples)}
    assert all(raw[(r["task_id"], "canonical")] == "passed" for r in rows)
    assert all(raw[(r["task_id"], "wrong_on_the_last")] == "failed" for r in rows)  # its second def: only raw
    assert {raw[(r["task_id"], "hangs")] for r in rows} == {"timeout"}
