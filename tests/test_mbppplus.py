"""MBPP+: data and its bad rows, the request, EvalPlus's argument shapes and float comparison, the
checks in the sandbox (canonical solutions, wrong ones, hangs, forks, floods, exits), what samples.jsonl
records, the expected-output cache, and the oracle: the same samples scored by `evalplus.evaluate`
give the same base (MBPP) and plus (MBPP+) verdicts, task by task."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_eval.errors import UserError
from qwen_eval.requests import GenerateResult
from qwen_eval.task import DataSpec
from qwen_eval.tasks import evalplus_check, evalplus_oracle
from qwen_eval.tasks.evalplus_oracle import kill_after, py_literal, time_limits
from qwen_eval.tasks.mbppplus import FIELDS, MbppPlus, arguments, data_version
from qwen_eval.tasks.qwen_coder_instruct import INSTRUCT_STOPS, INSTRUCT_SYSTEM

SAMPLE_IDS = ["Mbpp/2", "Mbpp/3", "Mbpp/124", "Mbpp/581", "Mbpp/737", "Mbpp/793"]


def sample_lines() -> list[str]:
    from qwen_eval.data import sample_dir

    return (sample_dir("mbppplus") / "MbppPlus-v0.1.0-sample.jsonl").read_text(encoding="utf-8").splitlines()


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mbppplus_file(shared_data: Path) -> Path:
    path = shared_data / "mbppplus" / "MbppPlus-v0.1.0.jsonl"
    if not path.is_file():
        pytest.skip(f"no MBPP+ file at {path}: set QWEN_EVAL_SHARED_DATA to a shared/data with mbppplus/")
    return path


def same(a, b) -> bool:
    """Equal values of the same types all the way down (NaN equal to NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


# --- data ----------------------------------------------------------------------------------------------

def test_the_sample_is_six_v010_tasks_and_its_version_is_recorded():
    task = MbppPlus()
    docs = task.load(DataSpec("sample"))
    assert [d.doc_id for d in docs] == SAMPLE_IDS
    assert docs[0].entry_point == "similar_elements" and docs[0].plus_input and len(docs[1].plus_input) == 10
    assert docs[-1].plus_input == []  # Mbpp/793's plus_input is {} in v0.1.0: no inputs, as EvalPlus reads it
    info = task.run_info()["data"]
    assert info["version"] == "v0.1.0" and info["tasks"] == 6 and len(info["sha256"]) == 64
    assert task.load(DataSpec("sample"), limit=2) == docs[:2]


def test_a_folder_or_the_file_and_the_version_from_its_name(tmp_path):
    (tmp_path / "MbppPlus-v0.1.0.jsonl").write_text("\n".join(sample_lines()) + "\n", encoding="utf-8")
    by_folder, by_file = MbppPlus(), MbppPlus()
    assert by_folder.load(DataSpec("local", str(tmp_path))) == by_file.load(
        DataSpec("auto", str(tmp_path / "MbppPlus-v0.1.0.jsonl")))
    assert by_folder.data_info["version"] == "v0.1.0"
    assert by_folder.data_info["sha256"] == hashlib.sha256((tmp_path / "MbppPlus-v0.1.0.jsonl").read_bytes()).hexdigest()
    assert data_version("MbppPlus-v0.2.0.jsonl") == "v0.2.0" and data_version("mine.jsonl") is None
    (tmp_path / "MbppPlus-v0.2.0.jsonl").write_text(sample_lines()[0] + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"holds 2 files \(MbppPlus-v0.1.0.jsonl, MbppPlus-v0.2.0.jsonl\); point "
                                        r"data.path at one"):
        MbppPlus().load(DataSpec("local", str(tmp_path)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no MbppPlus-\\*.jsonl"):
        MbppPlus().load(DataSpec("local", str(tmp_path / "empty")))


@pytest.mark.parametrize("field", list(FIELDS))
def test_a_missing_field_is_one_line_naming_file_line_and_field(tmp_path, field):
    rows = [json.loads(line) for line in sample_lines()]
    del rows[2][field]
    path = write_rows(tmp_path / "MbppPlus-v0.1.0.jsonl", rows)
    with pytest.raises(UserError) as error:
        MbppPlus().load(DataSpec("local", str(path)))
    message = str(error.value)
    assert message.startswith(f"{path}:3: missing field {field!r}") and "\n" not in message
    assert "use the EvalPlus release file" in message


@pytest.mark.parametrize("change, message", [
    ({"base_input": [1, 2]}, "field 'base_input' must be a list of argument lists"),
    ({"plus_input": {"a": 1}}, "field 'plus_input' must be a list of argument lists"),
    ({"task_id": "HumanEval/1"}, "task_id 'HumanEval/1' is not of the form 'Mbpp/<number>'"),
    ({"atol": "0"}, "field 'atol' has the wrong type (str)"),
])
def test_bad_rows_are_one_clear_line(tmp_path, change, message):
    rows = [json.loads(line) for line in sample_lines()]
    rows[1].update(change)
    path = write_rows(tmp_path / "MbppPlus-v0.1.0.jsonl", rows)
    with pytest.raises(UserError) as error:
        MbppPlus().load(DataSpec("local", str(path)))
    assert f"{path}:2" in str(error.value) and message in str(error.value) and "\n" not in str(error.value)


def test_bad_json_and_a_repeated_task_name_the_file(tmp_path):
    path = tmp_path / "MbppPlus-v0.1.0.jsonl"
    path.write_text(sample_lines()[0] + "\n{oops\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"MbppPlus-v0.1.0.jsonl:2: not valid JSON"):
        MbppPlus().load(DataSpec("local", str(path)))
    path.write_text(sample_lines()[0] + "\n" + sample_lines()[0] + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="task_id Mbpp/2 occurs twice"):
        MbppPlus().load(DataSpec("local", str(path)))


def test_hub_offline_is_a_clear_error():
    with pytest.raises(UserError, match="could not load hub dataset evalplus/mbppplus") as error:
        MbppPlus().load(DataSpec("hub"))
    assert "data.path" in str(error.value) and "\n" not in str(error.value)


# --- the request ----------------------------------------------------------------------------------------

def test_the_request_is_qwen2_5_coders_instruct_prompt_with_its_budgets():
    task = MbppPlus()
    doc = task.load(DataSpec("sample"))[1]
    (request,) = task.requests(doc)
    assert request.context == "" and request.prefill == "```python\n"
    assert request.messages == (
        ("system", INSTRUCT_SYSTEM),
        ("user", 'Can you complete the following Python function?\n```python\n"""\nWrite a python function to '
                 'identify non-prime numbers.\nassert is_not_prime(2) == False\n"""\n```\n'))
    assert request.stop == INSTRUCT_STOPS == ("<|endoftext|>", "<|endofmask|>", "</s>", "\nif __name__",
                                              "\ndef main(", "\nprint(", "\n#", "\n```")
    assert (request.max_new_tokens, request.max_length, request.temperature, request.n) == (2048, 1536, 0.0, 1)
    assert task.prompt_protocol == "instruct" and task.uses_chat
    uncapped = MbppPlus({"max_length": None, "max_new_tokens": 100}).requests(doc)[0]
    assert (uncapped.max_new_tokens, uncapped.max_length) == (100, None)


def test_class_facts_for_tables():
    assert (MbppPlus.model_card_column, MbppPlus.headline, dict(MbppPlus.extra_columns)) == (
        "MBPP+", "pass@1", {"MBPP": "base_pass@1"})


@pytest.mark.parametrize("options, message", [
    ({"prompt": "base"}, "task.prompt='base' is not an MBPP+ protocol; valid: instruct"),
    ({"max_length": 0}, "task.max_length=0 must be a whole number >= 1 (or null for no cap)"),
    ({"min_time_limit": 0}, "task.min_time_limit=0.0 must be a number > 0.0"),
    ({"gt_time_limit_factor": "x"}, "task.gt_time_limit_factor='x' must be a number > 0.0"),
    ({"expected_cache": 3}, "task.expected_cache=3 must be a folder path"),
])
def test_bad_options_are_one_line(options, message):
    with pytest.raises(UserError) as error:
        MbppPlus(options)
    assert str(error.value).startswith(message)


# --- EvalPlus's rules, without running anything ------------------------------------------------------

def test_time_limits_and_kill_time_are_evalplus_s():
    assert time_limits([0.01, 0.3, 2.0]) == [1.0, 1.2, 8.0]
    assert time_limits([0.3], min_time_limit=0.5, factor=2.0) == [0.6]
    assert kill_after([1.0, 1.0, 1.0]) == 5.0 and kill_after([1.0] * 100) == 62.0 and kill_after([]) == 2.0


def test_the_checker_s_marks_are_the_oracle_s():
    assert (evalplus_check.OUTPUT_MARK, evalplus_check.REASON_MARK) == (evalplus_oracle.OUTPUT_MARK,
                                                                        evalplus_oracle.REASON_MARK)


def test_the_special_oracles_and_lists_are_evalplus_s():
    special = pytest.importorskip("evalplus.eval._special_oracle")
    assert tuple(special.MBPP_OUTPUT_NOT_NONE_TASKS) == evalplus_check.OUTPUT_NOT_NONE
    assert tuple(special.MBPP_OUTPUT_SET_EQ_TASKS) == evalplus_check.OUTPUT_SET_EQUAL
    for args in [(3, 4), (4, 5), (2.5, 1), (0, 0), (10, 0.1)]:
        assert evalplus_check.surface_area_oracle(*args) == special._surface_Area(*args)
    for args in [(1, 2), (23, 56), (123, 256), (1, 1000), (0, 987654321), (5, 5)]:
        assert evalplus_check.digit_distance_oracle(*args) == special._digit_distance_nums(*args)


ALLCLOSE_CASES = [
    (1.0, 1.0), (1.0, 1.00001), (1.0, 1.1), (1, 1.0000001), (True, 1.0), (0, 1e-7),
    (float("nan"), float("nan")), (float("inf"), float("inf")), (float("inf"), float("-inf")), (1.0, float("inf")),
    ([1.0, 2.0], [1.0, 2.00000001]), ([1.0, 2.0], [1.0, 2.1]), ((1.0, 2.0), [1.0, 2.0]), ([], []),
    ([[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0000001]]), ([[1.0], [2.0]], [[1.0, 1.0], [2.0, 2.0]]),
    ([1.0, 2.0, 3.0], [1.0]), (1j, 1j + 1e-9), (complex(1, 2), complex(1, 2.1)), ([1, 2], [1, 2, 3]),
    ([[1.0, 2.0], [3.0]], [[1.0, 2.0], [3.0]]), ("a", "a"), ([1.0, "a"], [1.0, "a"]), (None, None),
    ({"a": 1.0}, {"a": 1.0}), ([1.0, None], [1.0, 2.0]), (2 ** 70, float(2 ** 70)), (1.0, 2 ** 70),
    ([True, False], [1.0, 0.0]), (-0.0, 0.0), ([float("nan"), 1.0], [float("nan"), 1.0]),
    ([1.0], [2 ** 70]), ([1.0, 1.0], [2 ** 70, 1.5]), ([1], [2 ** 63]), ([1], [-2 ** 63 - 1]), ([2 ** 70], [1.0]),
    ([1.0, 2.0], [2 ** 63, -1]),
]


@pytest.mark.parametrize("a, b", ALLCLOSE_CASES)
def test_the_checker_s_own_allclose_is_numpy_s(a, b):
    """For a sandbox Python without numpy: the same answer, or an error where numpy raises."""
    np = pytest.importorskip("numpy")
    for atol in (1e-6, 1e-4):
        try:
            expected = bool(np.allclose(a, b, rtol=1e-07, atol=atol))
        except Exception:
            expected = "error"
        try:
            got = evalplus_check._allclose(a, b, rtol=1e-07, atol=atol)
        except Exception:
            got = "error"
        assert got == expected, (a, b, atol)


@pytest.mark.shared_data
def test_arguments_are_evalplus_s_for_every_task(mbppplus_file):
    """JSON has no tuples, sets or complex numbers: the shapes EvalPlus rebuilds, every input of all
    399 tasks, types included; and each one's Python literal evaluates back to it."""
    mbpp = pytest.importorskip("evalplus.data.mbpp")
    rows = [json.loads(line) for line in mbppplus_file.read_text(encoding="utf-8").splitlines()]
    names = {"__builtins__": {"complex": complex, "set": set, "frozenset": frozenset}, "NAN": math.nan,
             "INF": math.inf, "NEG_INF": -math.inf}
    checked = 0
    for row in rows:
        for split in ("base_input", "plus_input"):
            ours = arguments(row["task_id"], row[split] if row[split] != {} else [])
            theirs = mbpp.mbpp_deserialize_inputs(row["task_id"], row[split])
            assert same(list(ours), list(theirs)), (row["task_id"], split)
            assert same(eval(py_literal(list(ours)), names), list(ours)), (row["task_id"], split)
            checked += len(ours)
    assert len(rows) == 399 and checked == 42082 + sum(len(r["base_input"]) for r in rows)


# --- in the sandbox -----------------------------------------------------------------------------------

def score(task: MbppPlus, docs, completions):
    return task.score_many(docs, [[GenerateResult((c,))] for c in completions])


@pytest.fixture()
def sample_task(tmp_path):
    task = MbppPlus({"expected_cache": str(tmp_path / "cache"), "sandbox": {"workers": 2}})
    return task, task.load(DataSpec("sample"))


@pytest.mark.slow
def test_canonical_solutions_pass_and_the_expected_outputs_are_cached(sample_task, tmp_path):
    task, docs = sample_task
    samples = score(task, docs, [d.canonical_solution for d in docs])
    assert [s.prediction for s in samples] == ["passed"] * 6
    assert all(s.extra["verdict"] == s.extra["raw_verdict"] == {"base": "pass", "plus": "pass"} for s in samples)
    metrics = task.aggregate(samples)
    assert {k: metrics[k] for k in ("pass@1", "base_pass@1", "raw_pass@1", "raw_base_pass@1")} == dict.fromkeys(
        ("pass@1", "base_pass@1", "raw_pass@1", "raw_base_pass@1"), 1.0)
    info = task.run_info()["expected_outputs"]
    assert info["computed"] == 6 and info["failed"] == {} and Path(info["cache"]).is_file()
    again = MbppPlus({"expected_cache": str(tmp_path / "cache")})
    again_docs = again.load(DataSpec("sample"))
    assert [s.prediction for s in score(again, again_docs, [d.canonical_solution for d in again_docs])] == ["passed"] * 6
    assert again.run_info()["expected_outputs"]["computed"] == 0  # every output came from the cache


# Replies for the six sample tasks, in order; each line: the reply, then (base, plus) as EvalPlus labels them.
BAD_REPLIES = [
    ("def similar_elements(a, b):\n    print('x' * 10 ** 6)\n    import os\n    os.write(1, b'y' * 10 ** 6)\n"
     "    return tuple(set(a) & set(b))\n", ("pass", "pass")),  # floods its output, answers right
    ("def is_not_prime(n):\n    while True:\n        pass\n", ("fail", "fail")),  # hangs: the 1 s input limit
    ("import os\n\ndef angle_complex(a, b):\n    os.fork()\n    return 0.0\n", ("fail", "fail")),  # fork is disabled
    ("import os\n\ndef surface_Area(b, h):\n    os._exit(0)\n", ("timeout", "timeout")),  # leaves without a verdict
    ("import sys\n\ndef check_str(s):\n    sys.exit(0)\n", ("fail", "fail")),  # SystemExit is an exception here
    ("while True:\n    pass\n\ndef last(arr, x):\n    return -1\n", ("timeout", "timeout")),  # hangs before any input
]


@pytest.mark.slow
def test_bad_programs_are_recorded_verdicts_never_a_crash(sample_task):
    task, docs = sample_task
    replies = [r for r, _ in BAD_REPLIES]
    samples = score(task, docs, replies)
    assert [tuple(s.extra["raw_verdict"].values()) for s in samples] == [v for _, v in BAD_REPLIES]
    by_id = {s.doc_id: s for s in samples}
    assert by_id["Mbpp/3"].extra["raw_reason"]["base"] == "input 0 of 5: TimeLimit: over the 1 s limit"
    assert "TypeError" in by_id["Mbpp/124"].extra["raw_reason"]["base"]
    assert by_id["Mbpp/793"].extra["raw_reason"]["base"].startswith("timeout: EvalPlus's time for the whole split")
    assert by_id["Mbpp/793"].extra["outcome"]["base"]["seconds"] < 5.0 + 10  # EvalPlus's kill time + the slack
    # the sanitizer drops the module-level loop: the sanitized solution defines `last` and runs
    assert by_id["Mbpp/793"].extra["solution"] == "def last(arr, x):\n    return -1"
    assert by_id["Mbpp/793"].extra["verdict"]["base"] == "fail"
    assert "input 0 of 3: AssertionError: got -1, expected 0" == by_id["Mbpp/793"].extra["reason"]["base"]


@pytest.mark.slow
def test_a_program_cannot_touch_the_host(sample_task, tmp_path):
    """The MBPP+ programs run in the same sandbox as HumanEval's: a write to /tmp lands in a private
    tmpfs (or is refused), never on the host."""
    task, docs = sample_task
    marker = Path("/tmp") / f"qwen-eval-mbppplus-{os.getpid()}"
    reply = (f"import os\n\ndef similar_elements(a, b):\n    fd = os.open({str(marker)!r}, os.O_CREAT | os.O_WRONLY)\n"
             f"    os.write(fd, b'x')\n    return tuple(set(a) & set(b))\n")
    (sample,) = score(task, docs[:1], [reply])
    assert not marker.exists()
    assert sample.extra["raw_verdict"]["base"] in ("pass", "fail")  # a verdict either way
    assert task.run_info()["sandbox"]["timeout_seconds"] == 10 and task.run_info()["sandbox"]["rlimits"][
        "address_space_mb"] == 4096


@pytest.mark.slow
def test_what_a_sample_records(sample_task):
    task, docs = sample_task
    reply = "def similar_elements(a, b):\n\treturn tuple(set(a) & set(b))\n```\nThis returns the shared items."
    (sample,) = score(task, docs[:1], [reply])
    row = sample.to_json()
    assert row["response"] == reply
    assert row["raw_solution"] == "def similar_elements(a, b):\n    return tuple(set(a) & set(b))\n"
    assert row["solution"] == "def similar_elements(a, b):\n    return tuple(set(a) & set(b))"
    assert row["verdict"] == {"base": "pass", "plus": "pass"} and row["reason"] == {"base": None, "plus": None}
    assert row["prediction"] == "passed" and row["score"] == 1.0
    program = row["program"]["plus"]
    assert "check(\n    solution='def similar_elements(a, b):\\n    return tuple(set(a) & set(b))'," in program
    assert "time_limits=[1.0, 1.0" in program and "EXPECTED_OUTPUTS_10_" in program
    assert "def _matches" not in program  # the checker's text is named, not repeated in every sample
    full = task.checks(docs[0], reply)[1].program
    assert hashlib.sha256(full.encode()).hexdigest() == row["program_sha256"]["plus"] and "def _matches" in full
    assert len(json.dumps(row)) < len(json.dumps(docs[0].plus_input)) + 6000


@pytest.mark.slow
def test_a_task_whose_canonical_solution_fails_fails_with_that_reason(tmp_path):
    rows = [json.loads(line) for line in sample_lines()[:2]]
    rows[1]["canonical_solution"] = "\ndef is_not_prime(n):\n    raise RuntimeError('broken')\n"
    path = write_rows(tmp_path / "MbppPlus-v0.1.0.jsonl", rows)
    task = MbppPlus({"expected_cache": str(tmp_path / "cache")})
    docs = task.load(DataSpec("local", str(path)))
    samples = score(task, docs, [d.canonical_solution for d in docs])
    assert [s.prediction for s in samples] == ["passed", "failed"]
    assert "the canonical solution failed in the sandbox: RuntimeError: broken" in samples[1].extra["reason"]["base"]
    assert list(task.run_info()["expected_outputs"]["failed"]) == ["Mbpp/3"]


# --- the oracle: evalplus.evaluate on the same samples ------------------------------------------------

ORACLE_TASKS = ["Mbpp/2", "Mbpp/3", "Mbpp/82", "Mbpp/115", "Mbpp/124", "Mbpp/164", "Mbpp/252", "Mbpp/295",
                "Mbpp/558", "Mbpp/580", "Mbpp/581", "Mbpp/737", "Mbpp/793"]


def oracle_samples(row: dict) -> list[tuple[str, str]]:
    """(kind, solution) pairs for one task: right, wrong, hanging, right only on the base inputs..."""
    ep, canonical = row["entry_point"], row["canonical_solution"]
    samples = [("canonical", canonical),
               ("none", f"def {ep}(*args):\n    return None\n"),
               ("raises", f"def {ep}(*args):\n    raise ValueError('no')\n")]
    if row["task_id"] in ("Mbpp/2", "Mbpp/3", "Mbpp/124", "Mbpp/737"):  # each costs a second per split
        samples.append(("hangs", f"def {ep}(*args):\n    while True:\n        pass\n"))
    plus = arguments(row["task_id"], row["plus_input"] if row["plus_input"] != {} else [])
    base = arguments(row["task_id"], row["base_input"])
    outside = [a for a in plus if repr(tuple(a)) not in {repr(tuple(b)) for b in base}]
    wrapper = f"\n_canonical = {ep}\n\ndef {ep}(*args):\n"
    if outside:  # right on every base input, wrong on one plus input
        samples.append(("base_only", canonical + wrapper + f"    if repr(args) == {repr(tuple(outside[0]))!r}:\n"
                                                           f"        return None\n    return _canonical(*args)\n"))
    if row["atol"]:
        samples.append(("nearly", canonical + wrapper + "    r = _canonical(*args)\n"
                                                        "    return r * (1 + 1e-9) if isinstance(r, float) else r\n"))
        samples.append(("off", canonical + wrapper + "    r = _canonical(*args)\n"
                                                     "    return r + 1e-3 if isinstance(r, float) else r\n"))
    if row["task_id"] == "Mbpp/3":
        samples += [("exit", f"import sys\n\ndef {ep}(n):\n    sys.exit(0)\n"),
                    ("os_exit", f"import os\n\ndef {ep}(n):\n    os._exit(0)\n"),
                    ("opens", f"def {ep}(n):\n    open('x', 'w')\n    return False\n"),
                    ("slow_but_right", canonical + wrapper + "    import time\n    time.sleep(0.3)\n"
                                                             "    return _canonical(*args)\n")]
    if row["task_id"] == "Mbpp/2":
        samples.append(("floods", canonical + wrapper + "    print('x' * 100000)\n    return _canonical(*args)\n"))
    if row["task_id"] == "Mbpp/793":
        samples.append(("hangs_at_import", f"import time\nwhile True:\n    time.sleep(1)\n\ndef {ep}(arr, x):\n"
                                           "    return 0\n"))
    return samples


@pytest.mark.slow
@pytest.mark.shared_data
def test_verdicts_equal_evalplus_evaluate_task_by_task(mbppplus_file, tmp_path):
    pytest.importorskip("evalplus")
    rows = {json.loads(line)["task_id"]: json.loads(line) for line in mbppplus_file.read_text("utf-8").splitlines()}
    subset = write_rows(tmp_path / "MbppPlus-v0.1.0.jsonl", [rows[t] for t in ORACLE_TASKS])
    task = MbppPlus({"expected_cache": str(tmp_path / "cache"), "sandbox": {"workers": 2}})
    docs = {d.doc_id: d for d in task.load(DataSpec("local", str(subset)))}
    cases = [(t, kind, solution) for t in ORACLE_TASKS for kind, solution in oracle_samples(rows[t])]
    samples = score(task, [docs[t] for t, _, _ in cases], [solution for _, _, solution in cases])

    # evalplus on every distinct text we checked: the raw solution and the sanitized one
    texts = sorted({(t, s.extra[key]) for (t, _, _), s in zip(cases, samples) for key in ("raw_solution", "solution")})
    sample_file = write_rows(tmp_path / "samples.jsonl", [{"task_id": t, "solution": text} for t, text in texts])
    env = {**os.environ, "MBPP_OVERRIDE_PATH": str(subset), "XDG_CACHE_HOME": str(tmp_path / "evalplus-cache")}
    proc = subprocess.run([sys.executable, "-m", "evalplus.evaluate", "--dataset", "mbpp", "--samples",
                           str(sample_file), "--parallel", "2"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "samples_eval_results.json").read_text())["eval"]
    theirs = {}
    for t in ORACLE_TASKS:
        solutions = [text for task_id, text in texts if task_id == t]
        for text, r in zip(solutions, results[t]):
            assert r["solution"] == text
            theirs[(t, text)] = {"base": r["base_status"], "plus": r["plus_status"]}

    differ = []
    for (t, kind, _), s in zip(cases, samples):
        for text_key, verdict_key in (("raw_solution", "raw_verdict"), ("solution", "verdict")):
            if s.extra[verdict_key] != theirs[(t, s.extra[text_key])]:
                differ.append((t, kind, verdict_key, s.extra[verdict_key], theirs[(t, s.extra[text_key])]))
    assert differ == []
    labels = [v for s in samples for v in s.extra["raw_verdict"].values()]
    assert {"pass", "fail", "timeout"} <= set(labels)  # the samples reach all three of EvalPlus's labels
    by_kind = {(t, kind): s for (t, kind, _), s in zip(cases, samples)}
    assert all(by_kind[(t, "canonical")].extra["verdict"] == {"base": "pass", "plus": "pass"} for t in ORACLE_TASKS)
    assert by_kind[("Mbpp/3", "base_only")].extra["raw_verdict"] == {"base": "pass", "plus": "fail"}
    assert by_kind[("Mbpp/164", "none")].extra["raw_verdict"] == {"base": "pass", "plus": "pass"}  # its oracle


# --- the command ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_end_to_end_on_the_sample(tmp_path):
    from cli_helpers import read_results, read_samples, run_cli

    out = tmp_path / "run"
    proc = run_cli("task=mbppplus", "model=tiny", "data.source=sample", "limit=2", "progress=false",
                   f"task.expected_cache={tmp_path / 'expected'}", f"output_dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = read_results(out)
    assert results["headline"]["metric"] == "pass@1" and results["model_card_column"] == "MBPP+"
    assert {"pass@1", "base_pass@1", "raw_pass@1", "raw_base_pass@1", "pass@1_stderr"} <= set(results["metrics"])
    extra = results["extra"]
    assert extra["data"]["version"] == "v0.1.0" and extra["expected_outputs"]["computed"] == 2
    assert extra["sandbox"]["rlimits"]["address_space_mb"] == 4096
    samples = read_samples(out)
    assert [s["doc_id"] for s in samples] == ["Mbpp/2", "Mbpp/3"]
    assert set(samples[0]["verdict"]) == {"base", "plus"} and "program" in samples[0] and "raw_solution" in samples[0]
    assert samples[0]["verdict"]["base"] in ("pass", "fail", "timeout")
