"""MBPP: the 3-shot prompt written out in full, shots 0..3, the [DONE] stop, the program, data sources and
bad rows, the oracle replay of the reference code on test tasks 11-510, and the CLI on the real file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import read_results, read_samples, run_cli
from qwen_eval.backends.replay import ReplayBackend
from qwen_eval.data import sample_dir
from qwen_eval.errors import UserError
from qwen_eval.evaluation import make_task
from qwen_eval.runner import evaluate
from qwen_eval.task import DataSpec
from qwen_eval.tasks import mbpp
from qwen_eval.tasks.mbpp import MBPP

# The prompt for test task 11 (docs/protocols.md: three shots, tasks 2, 3, 4, the query ending at "[BEGIN]\n").
# MBPP's reference code has CRLF line endings; the prompt keeps them.
GOLDEN_PROMPT_11 = (
    "You are an expert Python programmer, and here is your task: Write a function to find the similar elements "
    "from the given two tuple lists. Your code should pass these tests:\n"
    "\n"
    "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n"
    "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\n"
    "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n"
    "[BEGIN]\n"
    "def similar_elements(test_tup1, test_tup2):\r\n"
    "  res = tuple(set(test_tup1) & set(test_tup2))\r\n"
    "  return (res) \n"
    "[DONE]\n"
    "\n"
    "You are an expert Python programmer, and here is your task: Write a python function to identify non-prime "
    "numbers. Your code should pass these tests:\n"
    "\n"
    "assert is_not_prime(2) == False\n"
    "assert is_not_prime(10) == True\n"
    "assert is_not_prime(35) == True\n"
    "[BEGIN]\n"
    "import math\r\n"
    "def is_not_prime(n):\r\n"
    "    result = False\r\n"
    "    for i in range(2,int(math.sqrt(n)) + 1):\r\n"
    "        if n % i == 0:\r\n"
    "            result = True\r\n"
    "    return result\n"
    "[DONE]\n"
    "\n"
    "You are an expert Python programmer, and here is your task: Write a function to find the largest integers "
    "from a given list of numbers using heap queue algorithm. Your code should pass these tests:\n"
    "\n"
    "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] \n"
    "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] \n"
    "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]\n"
    "[BEGIN]\n"
    "import heapq as hq\r\n"
    "def heap_queue_largest(nums,n):\r\n"
    "  largest_nums = hq.nlargest(n, nums)\r\n"
    "  return largest_nums\n"
    "[DONE]\n"
    "\n"
    "You are an expert Python programmer, and here is your task: Write a python function to remove first and "
    "last occurrence of a given character from the string. Your code should pass these tests:\n"
    "\n"
    "assert remove_Occ(\"hello\",\"l\") == \"heo\"\n"
    "assert remove_Occ(\"abcda\",\"a\") == \"bcd\"\n"
    "assert remove_Occ(\"PHP\",\"P\") == \"H\"\n"
    "[BEGIN]\n"
)
QUERY_11 = GOLDEN_PROMPT_11[GOLDEN_PROMPT_11.rindex("You are an expert"):]


def loaded(shots: int = 3, **options) -> tuple[MBPP, list]:
    task = MBPP(options, shots=shots)
    return task, task.load(DataSpec("sample"))


def real_rows(shared_data: Path) -> list[dict]:
    return [json.loads(line) for line in (shared_data / "mbpp" / "mbpp.jsonl").read_text(encoding="utf-8").splitlines()]


# --- prompt, stop, program -----------------------------------------------------------------------------

@pytest.mark.shared_data
def test_golden_three_shot_prompt(shared_data):
    task, docs = loaded()
    assert task.prompt(docs[0]) == GOLDEN_PROMPT_11
    real = MBPP()
    real_docs = real.load(DataSpec("local", str(shared_data / "mbpp")))
    assert real.prompt(real_docs[0]) == GOLDEN_PROMPT_11  # the same from the full real file


def test_fewer_shots_keep_the_first_tasks():
    blocks = GOLDEN_PROMPT_11.split("\n\nYou are an expert")
    assert len(blocks) == 4
    for shots in range(4):
        task, docs = loaded(shots)
        prompt = task.prompt(docs[0])
        assert prompt.count("You are an expert Python programmer") == shots + 1 and prompt.endswith(QUERY_11)
        assert prompt.count("[DONE]") == shots
    assert loaded(0)[0].prompt(loaded(0)[1][0]) == QUERY_11
    assert loaded(1)[0].prompt(loaded(1)[1][0]) == blocks[0] + "\n\nYou are an expert" + blocks[3]


def test_shots_above_three_are_refused():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"shots": 4, "protocol": "qwen", "seed": 1})
    with pytest.raises(UserError, match="task mbpp supports shots from 0 to 3, not 4"):
        make_task({"name": "mbpp"}, cfg)


def test_request_stops_at_done():
    task, docs = loaded()
    (request,) = task.requests(docs[0])
    assert request.stop == ("[DONE]",) and request.context == GOLDEN_PROMPT_11
    assert (request.n, request.temperature, request.max_new_tokens) == (1, 0.0, 512)


def test_program_is_setup_completion_and_asserts():
    task, docs = loaded()
    doc = docs[0]
    assert task.program(doc, "def remove_Occ(s, ch):\n    return s") == (
        "\ndef remove_Occ(s, ch):\n    return s\n"
        'assert remove_Occ("hello","l") == "heo"\nassert remove_Occ("abcda","a") == "bcd"\n'
        'assert remove_Occ("PHP","P") == "H"\n')
    setup = mbpp.MBPPDoc("9", 9, "t", "c", ("assert f() == 1",), "X = 1", ("assert f() != 2",))
    assert task.program(setup, "def f():\n    return X") == "X = 1\ndef f():\n    return X\nassert f() == 1\n"
    challenged = MBPP({"challenge_tests": True})
    assert challenged.program(setup, "pass").endswith("assert f() == 1\nassert f() != 2\n")
    with pytest.raises(UserError, match="task.challenge_tests='yes' must be true or false"):
        MBPP({"challenge_tests": "yes"})


def test_scoring_runs_the_completion_in_the_sandbox():
    task, docs = loaded()
    from qwen_eval.requests import GenerateResult

    good = "def remove_Occ(s,ch): \r\n    s = s.replace(ch, '', 1)\r\n    i = s.rfind(ch)\r\n    return s if i < 0 else s[:i] + s[i+1:]\r\n"
    samples = task.score_many([docs[0], docs[0]], [[GenerateResult((good,))], [GenerateResult(("def remove_Occ(s, ch):\n    return s",))]])
    assert [s.score for s in samples] == [1.0, 0.0] and samples[1].extra["outcome"]["status"] == "failed"
    assert "AssertionError" in samples[1].extra["outcome"]["stderr_tail"]
    assert samples[0].target == list(docs[0].test_list)


# --- data ----------------------------------------------------------------------------------------------

@pytest.mark.shared_data
def test_sample_is_real_lines_of_tasks_2_3_4_and_11_to_18(shared_data):
    real = {json.loads(line)["task_id"]: line for line in (shared_data / "mbpp" / "mbpp.jsonl").read_text(encoding="utf-8").splitlines()}
    sample = (sample_dir("mbpp") / "mbpp.jsonl").read_text(encoding="utf-8").splitlines()
    assert sample == [real[i] for i in (2, 3, 4, *range(11, 19))]
    task, docs = loaded()
    assert [d.doc_id for d in docs] == [str(i) for i in range(11, 19)]
    assert [d.task_id for d in task.shot_docs] == [2, 3, 4]
    assert len(MBPP().load(DataSpec("sample"), limit=3)) == 3


@pytest.mark.shared_data
def test_local_file_or_folder_selects_tasks_11_to_510(shared_data, tmp_path):
    docs = MBPP().load(DataSpec("local", str(shared_data / "mbpp")))
    assert len(docs) == 500 and docs[0].doc_id == "11" and docs[-1].doc_id == "510"
    assert MBPP().load(DataSpec("auto", str(shared_data / "mbpp" / "mbpp.jsonl")), limit=5) == docs[:5]
    with pytest.raises(UserError, match="missing MBPP file"):
        MBPP().load(DataSpec("local", str(tmp_path)))


@pytest.mark.shared_data
def test_hub_prompt_and_test_splits(monkeypatch, shared_data):
    rows = real_rows(shared_data)
    splits = {"prompt": [r for r in rows if r["task_id"] <= 10], "test": [r for r in rows if 11 <= r["task_id"] <= 510]}
    calls = []
    monkeypatch.setattr(mbpp, "load_hub_dataset", lambda *args: calls.append(args) or splits[args[3]])
    task = MBPP()
    docs = task.load(DataSpec("hub"))
    assert docs == MBPP().load(DataSpec("local", str(shared_data / "mbpp")))
    assert calls == [("mbpp", "google-research-datasets/mbpp", "full", "prompt"),
                     ("mbpp", "google-research-datasets/mbpp", "full", "test")]
    assert task.prompt(docs[0]) == GOLDEN_PROMPT_11


@pytest.mark.shared_data
def test_missing_shot_tasks_are_named(tmp_path, shared_data):
    rows = [r for r in real_rows(shared_data) if r["task_id"] != 3]
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(UserError, match="needs tasks 2, 3, 4; missing task_id 3"):
        MBPP().load(DataSpec("local", str(path)))


@pytest.mark.parametrize("change,message", [
    (lambda r: r.pop("test_list"), "missing field 'test_list'"),
    (lambda r: r.pop("code"), "missing field 'code'"),
    (lambda r: r.update(task_id="12"), "field 'task_id' has the wrong type (str)"),
    (lambda r: r.update(test_list=[]), "'test_list' must be a non-empty list"),
])
@pytest.mark.shared_data
def test_bad_rows_are_one_line_naming_file_and_row(tmp_path, shared_data, change, message):
    rows = real_rows(shared_data)[:15]
    change(rows[11])
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        MBPP().load(DataSpec("local", str(path)))
    assert f"{path}: row 11" in str(err.value) and "\n" not in str(err.value)


# --- oracle replay -------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.shared_data
def test_oracle_reference_code_on_tasks_11_to_510(shared_data, tmp_path):
    """The references pass 499 of 500. Task 367 cannot pass under the protocol's order (setup code first):
    its setup builds trees with the Node class that its solution defines, so the setup raises NameError."""
    task = MBPP()
    docs = task.load(DataSpec("local", str(shared_data / "mbpp")))
    path = tmp_path / "reference.jsonl"
    path.write_text("".join(json.dumps({"doc_id": d.doc_id, "completion": d.code}) + "\n" for d in docs), encoding="utf-8")
    result = evaluate(task, docs, ReplayBackend.from_jsonl(path))
    failed = {s.doc_id: s.extra["outcome"] for s in result.samples if s.score != 1.0}
    assert sorted(failed) == ["367"]
    assert failed["367"]["status"] == "failed" and "NameError: name 'Node' is not defined" in failed["367"]["stderr_tail"]
    assert result.metrics["pass@1"] == pytest.approx(499 / 500)


# --- CLI -----------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.shared_data
def test_cli_end_to_end_on_real_data(tmp_path, shared_data):
    out = tmp_path / "run"
    proc = run_cli("task=mbpp", "model=tiny", f"data.path={shared_data / 'mbpp'}", "limit=2", "task.max_new_tokens=16",
                   f"output_dir={out}", "progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = read_results(out)
    assert results["headline"] == {"metric": "pass@1", "value": 0.0, "stderr": 0.0} and results["n_samples"] == 2
    assert results["task_config"]["shots"] == 3 and results["extra"]["sandbox"]["workers"] >= 1
    samples = read_samples(out)
    assert [s["doc_id"] for s in samples] == ["11", "12"] and samples[0]["prompt"] == GOLDEN_PROMPT_11
    assert samples[0]["outcome"]["status"] in ("failed", "timeout")
