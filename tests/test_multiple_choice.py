"""The shared multiple-choice helper: pandas rendering (protocol qwen) against cell text (clean),
one-line errors for bad files, the hub path, scoring, the runner end to end, and the real data."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_eval.backends import Backend, unsupported
from qwen_eval.errors import UserError
from qwen_eval.requests import Choice, ChoiceResult
from qwen_eval.runner import evaluate
from qwen_eval.task import DataSpec
from qwen_eval.tasks import multiple_choice
from qwen_eval.tasks.ceval import CEval
from qwen_eval.tasks.cmmlu import CMMLU
from qwen_eval.tasks.mmlu import MMLU
from qwen_eval.tasks.multiple_choice import CsvLayout, Question, parse_questions, read_questions, softmax

FIXTURES = Path(__file__).parent / "fixtures" / "mc"
MMLU_LAYOUT = MMLU.layout
CEVAL_LAYOUT = CEval.layout


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


# --- rendering -------------------------------------------------------------------------------------

def test_qwen_protocol_renders_cells_as_pandas_parsed_them(tmp_path):
    # Column A is numeric with a missing cell (floats), B numeric (floats), C all "missing"
    # spellings, D text with a leading space and a quoted "None".
    path = write(tmp_path / "t.csv",
                 'q1,1,2.50,None,x,A\n'
                 'q2,3,1e3,NA," lead",B\n'
                 'q3,,007,,"None",C\n')
    qwen = read_questions(path, MMLU_LAYOUT, "qwen")
    clean = read_questions(path, MMLU_LAYOUT, "clean")
    assert [q.choices for q in qwen] == [("1.0", "2.5", "nan", "x"),
                                         ("3.0", "1000.0", "nan", " lead"),
                                         ("nan", "7.0", "nan", "nan")]
    assert [q.choices for q in clean] == [("1", "2.50", "None", "x"),
                                          ("3", "1e3", "NA", " lead"),
                                          ("", "007", "", "None")]
    assert [q.answer for q in qwen] == ["A", "B", "C"]


def test_qwen_rendering_depends_on_the_whole_file(tmp_path):
    # The real CMMLU row college_actuarial_science/0 has choice B "0.80"; in the real file the
    # column also holds text, so it stays "0.80" (see test_cmmlu). Alone in a file, pandas makes
    # the column float and Qwen's prompt would read "0.8".
    header = ",Question,A,B,C,D,Answer\n"
    row = "0,已知,0.66,0.80,0.60,0.82,C\n"
    alone = read_questions(write(tmp_path / "alone.csv", header + row), CMMLU.layout, "qwen")
    with_text = read_questions(write(tmp_path / "mixed.csv", header + row + "1,问,甲,乙,丙,丁,A\n"),
                               CMMLU.layout, "qwen")
    assert alone[0].choices == ("0.66", "0.8", "0.6", "0.82")
    assert with_text[0].choices == ("0.66", "0.80", "0.60", "0.82")


def test_header_files_keep_an_int_index_column_out_of_the_prompt(tmp_path):
    path = write(tmp_path / "v.csv", "id,question,A,B,C,D,answer,explanation\n"
                                     "0,问,1,2,3,4,A,\n1,题,5,6,7,8,B,因为\n")
    assert read_questions(path, CEVAL_LAYOUT, "qwen") == [Question("问", ("1", "2", "3", "4"), "A"),
                                                          Question("题", ("5", "6", "7", "8"), "B")]


def test_utf8_bom_and_crlf_files_read_like_plain_ones(tmp_path):
    plain = read_questions(write(tmp_path / "a.csv", "q,1,2,3,4,A\n"), MMLU_LAYOUT, "qwen")
    path = tmp_path / "b.csv"
    path.write_bytes(b"\xef\xbb\xbfq,1,2,3,4,A\r\n")
    assert read_questions(path, MMLU_LAYOUT, "qwen") == plain == read_questions(path, MMLU_LAYOUT, "clean")


# --- bad data: one line naming the file and row ----------------------------------------------------

def one_line_error(fn, *args) -> str:
    with pytest.raises(UserError) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_row_with_a_missing_column_names_file_row_and_line(tmp_path):
    path = write(tmp_path / "x_test.csv", 'q0,1,2,3,4,A\n"multi\nline",1,2,3,4,B\nq2,1,2,3,D\n')
    message = one_line_error(read_questions, path, MMLU_LAYOUT, "qwen")
    assert str(path) in message and "row 2 (line 4)" in message and "5 columns, expected 6" in message


def test_an_answer_outside_a_to_d_names_file_and_row(tmp_path):
    path = write(tmp_path / "x_val.csv", "id,question,A,B,C,D,answer\n0,q,1,2,3,4,A\n1,q,1,2,3,4,E\n")
    message = one_line_error(read_questions, path, CEVAL_LAYOUT, "clean")
    assert str(path) in message and "row 1 (line 3)" in message and "answer 'E'" in message


def test_a_header_without_the_answer_column_is_named(tmp_path):
    path = write(tmp_path / "x_test.csv", "id,question,A,B,C,D\n0,q,1,2,3,4\n")  # C-Eval's test split
    message = one_line_error(read_questions, path, CEVAL_LAYOUT, "qwen")
    assert str(path) in message and "'answer'" in message


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes("q,1,2,3,4,A\n".encode("utf-16"))
    assert str(path) in one_line_error(read_questions, path, MMLU_LAYOUT, "qwen")


def make_layout(root: Path, dev_rows: int = 5) -> Path:
    write(root / "dev" / "anatomy_dev.csv", "".join(f"d{i},1,2,3,4,A\n" for i in range(dev_rows)))
    write(root / "test" / "anatomy_test.csv", "t0,1,2,3,4,B\nt1,1,2,3,4,C\n")
    return root


def test_a_dev_file_shorter_than_shots_is_named(tmp_path):
    root = make_layout(tmp_path, dev_rows=3)
    message = one_line_error(MMLU(shots=5).load, DataSpec("local", str(root)))
    assert str(root / "dev" / "anatomy_dev.csv") in message and "shots=5" in message
    assert len(MMLU(shots=3).load(DataSpec("local", str(root)))) == 2


def test_an_unknown_subject_file_is_named(tmp_path):
    root = make_layout(tmp_path)
    write(root / "test" / "anatomyy_test.csv", "t0,1,2,3,4,B\n")
    message = one_line_error(MMLU().load, DataSpec("local", str(root)))
    assert str(root / "test" / "anatomyy_test.csv") in message and "'anatomyy'" in message


def test_a_missing_dev_file_and_a_wrong_folder_are_named(tmp_path):
    root = make_layout(tmp_path)
    (root / "dev" / "anatomy_dev.csv").unlink()
    assert "anatomy_dev.csv" in one_line_error(MMLU().load, DataSpec("local", str(root)))
    assert "data.path" in one_line_error(CEval().load, DataSpec("local", str(root)))  # no val/ folder


def test_shots_and_protocol_are_checked():
    with pytest.raises(UserError, match="shots=6"):
        MMLU(shots=6)
    with pytest.raises(UserError, match="protocol='fancy'"):
        CMMLU(protocol="fancy")


# --- the hub path ----------------------------------------------------------------------------------

def csv_rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return [r for r in csv.reader(f) if r]


def fake_hub(monkeypatch, task_class, rows_by_config_split: dict) -> list:
    """Serve `rows_by_config_split` as the hub, for a task narrowed to the subjects given there."""
    calls = []
    subjects = {config for config, _ in rows_by_config_split}
    monkeypatch.setattr(task_class, "subjects", {s: v for s, v in task_class.subjects.items() if s in subjects})

    def load_hub_dataset(task_name, dataset_id, config, split):
        calls.append((dataset_id, config, split))
        return rows_by_config_split[config, split]

    monkeypatch.setattr(multiple_choice, "load_hub_dataset", load_hub_dataset)
    return calls


def test_hub_rows_give_the_same_documents_as_the_files(monkeypatch):
    # cais/mmlu keeps the choices as a list and the answer as an index; the `None` cell of
    # college_mathematics/8 arrives as the string "None" and renders as pandas would read it.
    def mmlu_rows(split):
        return [{"question": r[0], "subject": "college_mathematics", "choices": r[1:5], "answer": "ABCD".index(r[5])}
                for r in csv_rows(FIXTURES / "mmlu" / split / f"college_mathematics_{split}.csv")]
    from_files = {protocol: [d for d in MMLU(protocol=protocol).load(DataSpec("local", str(FIXTURES / "mmlu")))
                             if d.subject == "college_mathematics"] for protocol in ("qwen", "clean")}
    calls = fake_hub(monkeypatch, MMLU, {("college_mathematics", s): mmlu_rows(s) for s in ("dev", "test")})
    for protocol in ("qwen", "clean"):
        assert MMLU(protocol=protocol).load(DataSpec("hub")) == from_files[protocol]
    assert from_files["qwen"][8].question.choices[0] == "nan"
    assert calls == [("cais/mmlu", "college_mathematics", split) for split in ("test", "dev")] * 2


def test_hub_rows_for_header_layouts(monkeypatch):
    def rows(path):
        header, *body = csv_rows(path)
        return [dict(zip(header, r)) for r in body]

    from_files = [d for d in CEval().load(DataSpec("local", str(FIXTURES / "ceval"))) if d.subject == "accountant"]
    fake_hub(monkeypatch, CEval, {("accountant", s): rows(FIXTURES / "ceval" / s / f"accountant_{s}.csv")
                                  for s in ("dev", "val")})
    assert CEval().load(DataSpec("hub")) == from_files and len(from_files) == 49

    from_files = [d for d in CMMLU().load(DataSpec("local", str(FIXTURES / "cmmlu"))) if d.subject == "agronomy"]
    fake_hub(monkeypatch, CMMLU, {("agronomy", s): rows(FIXTURES / "cmmlu" / s / "agronomy.csv") for s in ("dev", "test")})
    assert CMMLU().load(DataSpec("hub")) == from_files and len(from_files) == 169


def test_hub_row_that_is_not_four_choices_is_named(monkeypatch):
    fake_hub(monkeypatch, MMLU, {("anatomy", "test"): [{"question": "q", "choices": ["a", "b"], "answer": 0}],
                                 ("anatomy", "dev"): []})
    message = one_line_error(MMLU().load, DataSpec("hub"))
    assert "cais/mmlu/anatomy split test" in message and "row 0" in message


@pytest.mark.slow
def test_offline_without_cache_says_how_to_use_a_local_copy(tmp_path):
    script = ("from qwen_eval.task import DataSpec\n"
              "from qwen_eval.registry import task_class\n"
              "from qwen_eval.errors import UserError\n"
              "for name in ['mmlu', 'ceval', 'cmmlu']:\n"
              "    try:\n"
              "        task_class(name)().load(DataSpec('hub'))\n"
              "    except UserError as e:\n"
              "        print(e)\n")
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
           "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3, out.stderr
    for line, dataset in zip(lines, ["cais/mmlu", "ceval/ceval-exam", "haonan-li/cmmlu"]):
        assert dataset in line and "data.path=DIR" in line


# --- scoring -----------------------------------------------------------------------------------------

def test_softmax_over_the_four_logprobs_and_first_of_ties_wins():
    assert softmax([0.0, 0.0, 0.0, 0.0]) == [0.25] * 4
    assert softmax([-1000.0, 0.0, -1000.0, -1000.0])[1] == pytest.approx(1.0)
    task = CEval()
    doc = task.load(DataSpec("local", str(FIXTURES / "ceval")))[0]
    sample = task.score(doc, [ChoiceResult(logprobs=(-2.0, -1.0, -1.0, -3.0), is_greedy=(False,) * 4)])
    assert sample.prediction == "B"


class ConstantChoiceBackend(Backend):
    """Answers every Choice with the same log-probabilities: it always prefers one letter."""

    name = "constant"
    fingerprint = "constant-test"
    max_length = 2048
    tokens_processed = 0

    def __init__(self, favourite: int):
        self.logprobs = tuple(-1.0 if i == favourite else -5.0 for i in range(4))
        self.seen: list[Choice] = []

    def describe(self):
        return {"name": self.name}

    def choice(self, requests):
        self.seen += requests
        return [ChoiceResult(self.logprobs, (False,) * 4) for _ in requests]

    def generate(self, requests):
        raise unsupported(self.name, "generate")

    def rolling(self, requests):
        raise unsupported(self.name, "rolling")


@pytest.mark.parametrize("task_class", [MMLU, CEval, CMMLU])
def test_sample_data_end_to_end_through_the_runner(task_class):
    task = task_class()
    docs = task.load(DataSpec("sample"))
    backend = ConstantChoiceBackend(favourite=1)  # always "B"
    result = evaluate(task, docs, backend)
    assert len(result.samples) == len(docs) == len(backend.seen)
    assert all(r.continuations == task.continuations for r in backend.seen)
    by_subject: dict[str, list[float]] = {}
    for doc in docs:
        by_subject.setdefault(doc.subject, []).append(float(doc.question.answer == "B"))
    if task_class is MMLU:
        expected = sum(sum(v) for v in by_subject.values()) / len(docs)
    else:
        expected = sum(sum(v) / len(v) for v in by_subject.values()) / len(by_subject)
    assert result.metrics["acc"] == pytest.approx(expected)
    assert {s.prediction for s in result.samples} == {"B"}
    line = result.samples[0].to_json()
    assert set(line) >= {"doc_id", "prompt", "target", "prediction", "score", "probs", "subject", "protocol"}
    assert task.describe()["protocol"] == "qwen"


# --- the real data ------------------------------------------------------------------------------------

@pytest.mark.parametrize("task_class, n_subjects, n_questions", [(MMLU, 57, 14042), (CEval, 52, 1346), (CMMLU, 67, 11582)])
@pytest.mark.shared_data
def test_real_data_has_every_subject_and_row(shared_data, task_class, n_subjects, n_questions):
    task = task_class()
    root = shared_data / task.name
    docs = task.load(DataSpec("local", str(root)))
    subjects = {d.subject for d in docs}
    assert len(docs) == n_questions
    assert subjects == set(task.subjects) and len(subjects) == n_subjects
    assert task.subjects_in(root) == list(task.subjects)
    assert all(len(d.shots) == 5 for d in docs)
    metrics = task.aggregate([task.score(d, [ChoiceResult((0.0, -1.0, -1.0, -1.0), (False,) * 4)]) for d in docs])
    categories = {k.split("/")[0] for k in metrics if k.endswith("/acc") and not k.startswith("subject/")}
    expected = {MMLU: {"stem", "humanities", "social_sciences", "other"},
                CEval: {"stem", "humanities", "social_sciences", "other", "hard"},
                CMMLU: {"stem", "humanities", "social_sciences", "other", "china_specific"}}[task_class]
    assert categories == expected
    assert sum(k.startswith("subject/") and k.endswith("/acc") for k in metrics) == n_subjects


@pytest.mark.shared_data
def test_real_mmlu_protocols_differ_exactly_on_the_none_cells(shared_data):
    qwen = MMLU(protocol="qwen").load(DataSpec("local", str(shared_data / "mmlu")))
    clean = MMLU(protocol="clean").load(DataSpec("local", str(shared_data / "mmlu")))
    differ = [(a.doc_id, a.question.choices, b.question.choices) for a, b in zip(qwen, clean) if a != b]
    assert [d[0] for d in differ] == ["college_computer_science/10", "college_computer_science/94",
                                      "college_mathematics/8", "college_mathematics/21", "college_mathematics/60",
                                      "college_physics/60", "electrical_engineering/41", "electrical_engineering/68",
                                      "electrical_engineering/107", "electrical_engineering/117"]
    for _, ours, theirs in differ:
        assert [i for i in range(4) if ours[i] != theirs[i]] == [i for i in range(4) if theirs[i] == "None"]
        assert all(c == "nan" for c, t in zip(ours, theirs) if t == "None")


@pytest.mark.shared_data
def test_golden_fixtures_and_samples_are_real_rows(shared_data):
    # Fixtures are whole upstream files (so pandas infers the same column types as on the real
    # data); samples are a header and the first rows of upstream files, byte for byte.
    fixtures = sorted(FIXTURES.rglob("*.csv"))
    data = Path(multiple_choice.__file__).parent / "data"
    samples = sorted(p for task in ("mmlu", "ceval", "cmmlu") for p in (data / task).rglob("*.csv"))
    assert len(fixtures) == 12 and len(samples) == 26
    for path in fixtures:
        assert path.read_bytes() == (shared_data / path.relative_to(FIXTURES)).read_bytes(), path
    for path in samples:
        real = (shared_data / path.relative_to(path.parents[2])).read_bytes()
        assert real.startswith(path.read_bytes()), path
