"""What MMLU, C-Eval and CMMLU share: four-choice questions read from the upstream CSVs, the
k-shot prompt built from each benchmark's description, question format and target delimiter, one
single-token `Choice` request per question, subject-grouped accuracy.

Reading follows Qwen's evaluation scripts (QwenLM/Qwen eval/evaluate_{mmlu,ceval,cmmlu}.py): they
load every CSV with `pd.read_csv` and pandas' default type inference, then format each cell with
`str()` (f-strings). Under `protocol: qwen` a cell therefore appears as pandas parsed it: `None`,
`NA`, `null` or an empty cell becomes `nan`; a column of numbers becomes numbers (`1.50` -> `1.5`,
and an int column with one missing cell turns into floats, `1` -> `1.0`). `protocol: clean` uses
the cell text as written. The csv module reads every file first, so a malformed row is one clear
error naming the file and row, whichever protocol renders it.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, NoReturn, Sequence

from qwen_eval.data import load_hub_dataset, local_dir, require_file, sample_dir
from qwen_eval.errors import UserError
from qwen_eval.requests import Choice, ChoiceResult, Generate, GenerateResult, Response
from qwen_eval.task import DataSpec, FewShot, Sample, Task
from qwen_eval.tasks.chat_choice import MAX_NEW_TOKENS as CHAT_MAX_NEW_TOKENS
from qwen_eval.tasks.scoring.metrics import add_metric, group_by, macro_stderr, mean_stderr

LETTERS = ("A", "B", "C", "D")
PROTOCOLS = ("qwen", "clean")
PROMPT_STYLES = ("base", "qwen_chat")  # task.prompt: the model card's k-shot scoring, or Qwen's chat protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Question:
    """One row of a benchmark file, its cells rendered as the protocol says."""

    text: str
    choices: tuple[str, ...]  # the cells of columns A, B, C, D
    answer: str  # the gold letter


@dataclass(frozen=True)
class MCDoc:
    doc_id: str  # "{subject}/{row}": the 0-based row in the subject's test (or val) file
    subject: str
    question: Question
    shots: tuple[Question, ...]  # the first k rows of the subject's dev file, in file order


@dataclass(frozen=True)
class CsvLayout:
    """Where a question's fields are in a benchmark's CSV files.

    names: the column names Qwen's script gives a header-less file (MMLU); None when the file's
    first row is its header (C-Eval, CMMLU).
    """

    question: str
    answer: str
    names: tuple[str, ...] | None = None

    def required(self) -> tuple[str, ...]:
        return (self.question, *LETTERS, self.answer)


# --- reading -------------------------------------------------------------------------------------


def read_questions(path: Path, layout: CsvLayout, protocol: str) -> list[Question]:
    """The questions of one upstream CSV file, in file order."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8") from None
    # pandas reads the file itself, exactly as Qwen's script calls it.
    return parse_questions(text, str(path), layout, protocol, pandas_source=path)


def parse_questions(text: str, origin: str, layout: CsvLayout, protocol: str,
                    pandas_source: Path | None = None) -> list[Question]:
    """Questions from CSV text; `origin` names the file (or hub split) in error messages."""
    records, lines = _csv_records(text, origin)
    if layout.names is None:
        if not records:
            raise UserError(f"{origin}: empty file; expected a header row {','.join(layout.required())}")
        columns, records, lines = records[0], records[1:], lines[1:]
    else:
        columns = list(layout.names)
    missing = [c for c in layout.required() if c not in columns]
    if missing:
        raise UserError(f"{origin}: no column {missing[0]!r} in the header ({','.join(columns)}); "
                        f"expected the upstream layout with columns {','.join(layout.required())}")
    for row, (record, line) in enumerate(zip(records, lines)):
        if len(record) != len(columns):
            raise UserError(f"{origin}: row {row} (line {line}) has {len(record)} columns, expected "
                            f"{len(columns)} ({','.join(columns)}); fix or remove the row")
        answer = record[columns.index(layout.answer)]
        if answer not in LETTERS:
            raise UserError(f"{origin}: row {row} (line {line}): answer {answer!r} is not one of A, B, C, D; "
                            f"fix or remove the row")

    if protocol == "qwen":
        cells = _pandas_cells(pandas_source or io.StringIO(text), layout, origin)
        if len(cells) != len(records):
            raise UserError(f"{origin}: pandas reads {len(cells)} rows where the csv module reads "
                            f"{len(records)}; check the file's quoting")
    else:
        cells = records
    where = {name: columns.index(name) for name in layout.required()}
    return [Question(text=row[where[layout.question]], choices=tuple(row[where[c]] for c in LETTERS),
                     answer=row[where[layout.answer]]) for row in cells]


def _csv_records(text: str, origin: str) -> tuple[list[list[str]], list[int]]:
    """Non-blank CSV records and the line each starts on (pandas skips blank lines too)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    records, lines, start = [], [], 1
    try:
        for record in reader:
            if record:
                records.append(record)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as e:
        raise UserError(f"{origin}: line {start}: not valid CSV ({e}); fix the quoting") from None
    return records, lines


def _pandas_cells(source: Path | io.StringIO, layout: CsvLayout, origin: str) -> list[list[str]]:
    """Every cell as `str()` of what pandas parsed: Qwen's `pd.read_csv(path)` for files with a
    header, `pd.read_csv(path, names=[...])` for MMLU, rows taken with `iterrows` as the scripts do."""
    import pandas as pd

    try:
        frame = pd.read_csv(source) if layout.names is None else pd.read_csv(source, names=list(layout.names))
    except Exception as e:  # pandas' parser errors have no common base class worth naming
        raise UserError(f"{origin}: pandas cannot read the file ({str(e).strip().splitlines()[0]})") from None
    return [[str(value) for value in row] for _, row in frame.iterrows()]


def hub_csv_text(records: Sequence[Mapping[str, Any]], layout: CsvLayout, origin: str) -> str:
    """Hub rows written as the upstream CSV would hold them, so one reader serves every source.

    `records` map the layout's columns to cell values; None becomes an empty cell.
    """
    columns = list(layout.names) if layout.names else list(layout.required())
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if layout.names is None:
        writer.writerow(columns)
    for row, record in enumerate(records):
        missing = [c for c in columns if c not in record]
        if missing:
            raise UserError(f"{origin}: row {row} has no field {missing[0]!r}; the hub dataset changed its "
                            f"schema, use data.path=DIR with the upstream files")
        writer.writerow(["" if record[c] is None else str(record[c]) for c in columns])
    return out.getvalue()


# --- scoring -------------------------------------------------------------------------------------


def softmax(logprobs: Sequence[float]) -> list[float]:
    """Softmax over the four choices. For single-token continuations this equals Qwen's softmax over
    the four next-token logits: the log-partition function cancels."""
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


def per_subject_scores(samples: Sequence[Sample]) -> dict[str, list[float]]:
    groups = group_by(samples, lambda s: s.extra["subject"])
    return {subject: [s.score for s in group] for subject, group in groups.items()}


def add_subject_metrics(metrics: dict[str, float], scores: Mapping[str, Sequence[float]]) -> None:
    for subject in sorted(scores):
        add_metric(metrics, f"subject/{subject}/acc", mean_stderr(scores[subject]))


def add_macro_metric(metrics: dict[str, float], name: str, scores: Mapping[str, Sequence[float]],
                     subjects: Sequence[str]) -> None:
    """Unweighted mean over `subjects` of each subject's accuracy; omitted when none was evaluated."""
    chosen = {s: scores[s] for s in subjects if s in scores}
    if chosen:
        add_metric(metrics, name, macro_stderr(chosen))


# --- the task ------------------------------------------------------------------------------------


class MultipleChoiceTask(Task):
    """A subject-grouped four-choice benchmark in Qwen's protocol; subclasses declare, as data, the
    data facts (subjects, file layout, hub id), the prompt and the metrics' groups.

    file_pattern: where a subject's split lives under the data folder, e.g. "{split}/{subject}.csv".
    description: the prompt's first line(s), `{subject}` the subject with "_" -> " " ("" for none).
    question_format: one question's block up to its answer, with `{question}` and `{A}`..`{D}`.
    target_delimiter: what stands between a question's block and its answer letter, in the shots
      and in the scored continuations (" A" after MMLU's "Answer:", "A" after C-Eval's "答案：").
    average: "micro" (over questions) or "macro" (the mean of the subjects' accuracies), for `acc`
      and for each group; groups: group name -> its subjects (`<group>/acc`).
    """

    default_shots = 5
    max_shots = 5
    limit_rule = "the first N questions of each subject"

    subjects: ClassVar[Mapping[str, Any]]  # subject -> its category facts, in the benchmark's order
    layout: ClassVar[CsvLayout]
    file_pattern: ClassVar[str]
    eval_split: ClassVar[str]  # "test" or "val"
    hub_id: ClassVar[str]
    description: ClassVar[str] = ""
    question_format: ClassVar[str]
    target_delimiter: ClassVar[str]
    average: ClassVar[str]
    groups: ClassVar[Mapping[str, Sequence[str]]]

    def __init__(self, options: Mapping[str, Any] | None = None, *, shots: int | None = None,
                 protocol: str = "qwen", seed: int = 1234):
        super().__init__(options, shots=shots, protocol=protocol, seed=seed)
        if not 0 <= self.shots <= self.max_shots:
            raise UserError(f"task {self.name}: shots={self.shots} is out of range; use 0 to {self.max_shots} "
                            f"(shots come from the {self.max_shots} dev questions of each subject)")
        if protocol not in PROTOCOLS:
            raise UserError(f"protocol={protocol!r} is not a protocol; valid: {', '.join(PROTOCOLS)}")
        self.prompt_style = self.options.get("prompt", "base")
        if self.prompt_style not in PROMPT_STYLES:
            raise UserError(f"task.prompt={self.prompt_style!r} is not a prompt style; valid: {', '.join(PROMPT_STYLES)}")
        if self.prompt_style == "qwen_chat" and type(self).chat_question is MultipleChoiceTask.chat_question:
            self._no_chat_protocol()
        if self.prompt_style == "qwen_chat":
            self.shots = 0  # the chat protocol asks each question alone

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        """`task.prompt` only where Qwen has a chat script for the benchmark (mmlu, ceval)."""
        return {"prompt": "base"} if cls.chat_question is not MultipleChoiceTask.chat_question else {}

    @property
    def uses_chat(self) -> bool:
        return self.prompt_style == "qwen_chat"

    def chat_question(self, doc: MCDoc) -> str:
        """The question asked in a chat turn (task.prompt=qwen_chat; see tasks/chat_choice.py).
        Only benchmarks Qwen has a chat script for (mmlu, ceval) define it."""
        self._no_chat_protocol()

    def chat_letter(self, reply: str, doc: MCDoc) -> str:
        """The letter a chat reply chose, by Qwen's rules (with chat_question)."""
        self._no_chat_protocol()

    def _no_chat_protocol(self) -> NoReturn:
        raise UserError(f"task.prompt=qwen_chat: Qwen's chat protocol exists for mmlu and ceval, not {self.name}; "
                        f"use chat.enabled=true to ask {self.name}'s prompt in a chat turn")

    # the prompt

    @property
    def continuations(self) -> tuple[str, ...]:
        """The scored continuations: each letter as a shot's answer follows its question."""
        return tuple(self.target_delimiter + letter for letter in LETTERS)

    def format_question(self, question: Question) -> str:
        return self.question_format.format(question=question.text, **dict(zip(LETTERS, question.choices)))

    def fewshot(self, doc: MCDoc) -> FewShot | None:
        if self.prompt_style != "base":
            return None
        return FewShot(self.description.format(subject=doc.subject.replace("_", " ")),
                       tuple((self.format_question(shot), shot.answer) for shot in doc.shots),
                       self.format_question(doc.question), target_delimiter=self.target_delimiter)

    # data

    def read_local(self, path: str | None) -> Iterator[tuple[str, list[Question], list[Question]]]:
        return self._read_folder(local_dir(path, self.name), expect_all=True)

    def read_sample(self) -> Iterator[tuple[str, list[Question], list[Question]]]:
        return self._read_folder(sample_dir(self.name), expect_all=False)

    def read_hub(self) -> Iterator[tuple[str, list[Question], list[Question]]]:
        return self._read_hub()

    def load(self, data: DataSpec, limit: int | None = None) -> list[MCDoc]:
        subjects = self.read_source(data)
        docs = []
        for subject, questions, dev in subjects:
            shots = tuple(dev[:self.shots])
            kept = questions if limit is None else questions[:limit]
            docs += [MCDoc(f"{subject}/{row}", subject, q, shots) for row, q in enumerate(kept)]
        return docs

    def _file(self, root: Path, split: str, subject: str) -> Path:
        return root / self.file_pattern.format(split=split, subject=subject)

    def subjects_in(self, root: Path) -> list[str]:
        """The subjects whose eval-split file is under `root`, in the benchmark's order; a file
        that names no known subject is an error."""
        folder = root / self.eval_split
        if not folder.is_dir():
            raise UserError(f"task {self.name}: {folder} not found; data.path must hold the upstream layout "
                            f"(dev/ and {self.eval_split}/ folders of CSV files)")
        suffix = self.file_pattern.split("{subject}")[1].format(split=self.eval_split)
        found = set()
        for path in sorted(folder.iterdir()):
            if not path.name.endswith(suffix):
                continue
            subject = path.name[: -len(suffix)]
            if subject not in self.subjects:
                raise UserError(f"{path}: unknown {self.name} subject {subject!r}; rename the file to one of "
                                f"the {len(self.subjects)} subjects in qwen_eval.tasks.{self.name}.SUBJECTS "
                                f"or move it away")
            found.add(subject)
        if not found:
            raise UserError(f"task {self.name}: no {self.file_pattern.format(split=self.eval_split, subject='*')} "
                            f"files under {root}; point data.path at the upstream layout")
        return [s for s in self.subjects if s in found]

    def _read_folder(self, root: Path, *, expect_all: bool) -> Iterator[tuple[str, list[Question], list[Question]]]:
        subjects = self.subjects_in(root)
        if expect_all and len(subjects) < len(self.subjects):
            absent = [s for s in self.subjects if s not in subjects]
            log.warning("%s: %d of %d subjects have no file under %s (%s%s); metrics cover the %d found",
                        self.name, len(absent), len(self.subjects), root / self.eval_split,
                        ", ".join(absent[:5]), ", ..." if len(absent) > 5 else "", len(subjects))
        for subject in subjects:
            questions = read_questions(self._file(root, self.eval_split, subject), self.layout, self.protocol)
            dev_path = require_file(self._file(root, "dev", subject), f"{self.name} dev file for {subject}")
            yield subject, questions, self._check_dev(read_questions(dev_path, self.layout, self.protocol), str(dev_path))

    def _check_dev(self, dev: list[Question], origin: str) -> list[Question]:
        if len(dev) < self.shots:
            raise UserError(f"{origin}: has {len(dev)} rows, fewer than shots={self.shots}; "
                            f"use shots={len(dev)} or fewer, or restore the dev file")
        return dev

    def hub_records(self, rows: list[dict[str, Any]], origin: str) -> list[Mapping[str, Any]]:
        """Hub rows as {column: value} of the upstream CSV layout (the hub keeps the CSV columns)."""
        return rows

    def _read_hub(self) -> Iterator[tuple[str, list[Question], list[Question]]]:
        for subject in self.subjects:
            splits = []
            for split in (self.eval_split, "dev"):
                origin = f"hub {self.hub_id}/{subject} split {split}"
                rows = load_hub_dataset(self.name, self.hub_id, subject, split)
                text = hub_csv_text(self.hub_records(rows, origin), self.layout, origin)
                splits.append(parse_questions(text, origin, self.layout, self.protocol))
            questions, dev = splits
            yield subject, questions, self._check_dev(dev, f"hub {self.hub_id}/{subject} split dev")

    # requests and scoring

    def requests(self, doc: MCDoc) -> list[Choice | Generate]:
        if self.prompt_style == "qwen_chat":  # zero-shot, answered in free text
            return [Generate("", messages=(("user", self.chat_question(doc)),), max_new_tokens=CHAT_MAX_NEW_TOKENS)]
        return [Choice(context=self.prompt(doc), continuations=self.continuations)]

    def score(self, doc: MCDoc, responses: Sequence[Response]) -> Sample:
        if self.prompt_style == "qwen_chat":
            return self._score_reply(doc, self.response(doc, responses, GenerateResult))
        result = self.response(doc, responses, ChoiceResult)
        if len(result.logprobs) != len(LETTERS):
            raise RuntimeError(f"task {self.name} {doc.doc_id}: expected 4 log-probabilities, got {len(result.logprobs)}")
        probs = softmax(result.logprobs)
        best = max(range(len(LETTERS)), key=lambda i: result.logprobs[i])  # first of equal maxima
        prediction = LETTERS[best]
        return Sample(doc_id=doc.doc_id, prompt=self.prompt(doc), target=doc.question.answer,
                      response=list(result.logprobs), prediction=prediction,
                      score=float(prediction == doc.question.answer),
                      extra={"subject": doc.subject, "probs": probs, "protocol": self.protocol})

    def _score_reply(self, doc: MCDoc, result: GenerateResult) -> Sample:
        reply = result.texts[0]
        prediction = self.chat_letter(reply, doc)
        return Sample(doc_id=doc.doc_id, prompt=self.chat_question(doc), target=doc.question.answer, response=reply,
                      prediction=prediction, score=float(prediction == doc.question.answer),
                      extra={"subject": doc.subject, "protocol": self.protocol, "prompt_style": self.prompt_style})

    def aggregate(self, samples: Sequence[Sample]) -> dict[str, float]:
        scores = per_subject_scores(samples)
        metrics: dict[str, float] = {}
        if self.average == "micro":
            add_metric(metrics, "acc", mean_stderr([s.score for s in samples]))
            for group, subjects in self.groups.items():
                members = set(subjects)
                in_group = [x for subject, xs in scores.items() if subject in members for x in xs]
                if in_group:
                    add_metric(metrics, f"{group}/acc", mean_stderr(in_group))
        else:
            add_macro_metric(metrics, "acc", scores, list(self.subjects))
            for group, subjects in self.groups.items():
                add_macro_metric(metrics, f"{group}/acc", scores, subjects)
        add_subject_metrics(metrics, scores)
        return metrics


class ChineseExamTask(MultipleChoiceTask):
    """C-Eval and CMMLU as Qwen's eval/evaluate_{ceval,cmmlu}.py ask them: no description line, each
    question block ending "答案：" with its letter right after it (no space), and accuracy
    macro-averaged over the subjects."""

    question_format = "问题：{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\n答案："
    target_delimiter = ""
    average = "macro"
