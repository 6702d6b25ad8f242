"""MATH (Hendrycks et al., 2021): 4-shot with the Minerva prompt, accuracy on the 5,000 test
problems (the Qwen-14B model card's MATH column), reported by subject and by level.

Data, any of:
  - the upstream per-problem tree: `data.path` holds `test/<subject>/<n>.json` (or is that `test/`
    folder); doc_id `<subject>/<n>` (the file stem);
  - one `test.jsonl` with the upstream fields problem, level, type, solution (`data.path` is the
    file or a folder holding it); doc_id the 0-based line index;
  - hub `EleutherAI/hendrycks_math`, one config per subject, split test; doc_id `<subject>/<row>`.
`task.subset=math500` keeps the 500 problems of MATH-500 (Lightman et al. 2023), in its order:
their unique_ids (`test/<subject>/<n>.json`) and problem-text keys are package data
(data/math/math500.jsonl), so any of the three sources can be filtered.

Prompt (Minerva, Lewkowycz et al. 2022; lm-evaluation-harness `minerva_math`): the four worked
examples of data/math/minerva_4shot.json, each `Problem:\\n{problem}\\n\\nSolution:\\n{solution}`
with the solution ending `Final Answer: The final answer is ${answer}$. I hope it is correct.`,
joined by blank lines, then `\\n\\nProblem:\\n{problem}\\n\\nSolution:`. Greedy; stop at `Problem:`.
At most 1024 new tokens: 8% of the reference solutions (with the closing sentence) are longer
than 512 Qwen tokens, 0.8% longer than 1024.

Answers and metrics (see math_grading.py): the prediction is the text of Minerva's closing
sentence, else the last `\\boxed{}`; the gold is the last `\\boxed{}` of the reference solution.
  exact_match  the Minerva-normalised strings are equal (the headline: Minerva's own metric, and
               the one lm-evaluation-harness reports; Qwen's repository has no MATH script);
  equiv        exact_match, or math_verify finds the two answers mathematically equivalent
               (each comparison bounded by `task.equiv_timeout` seconds in a worker process);
  equiv_timed_out  the fraction of comparisons that ran out of time (they count as wrong);
plus `<subject>/<metric>` and `level_<n>/<metric>` for exact_match and equiv.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from qwen_eval.data import load_hub_dataset, local_dir, read_jsonl, require_file, sample_dir
from qwen_eval.errors import UserError
from qwen_eval.requests import Generate, GenerateResult, Response
from qwen_eval.task import DataSpec, FewShot, Sample, Task, stratified_subset
from qwen_eval.tasks.math_grading import EquivalenceChecker, extract_answer, gold_answer, normalize_final_answer
from qwen_eval.tasks.scoring.metrics import add_metric, group_by, mean_stderr

# The `type` field -> the upstream folder name (also the hub config name).
SUBJECTS: dict[str, str] = {
    "Algebra": "algebra",
    "Counting & Probability": "counting_and_probability",
    "Geometry": "geometry",
    "Intermediate Algebra": "intermediate_algebra",
    "Number Theory": "number_theory",
    "Prealgebra": "prealgebra",
    "Precalculus": "precalculus",
}
HUB_ID = "EleutherAI/hendrycks_math"
STOP = ("Problem:",)
SUBSETS = ("full", "math500")
FIELDS = ("problem", "level", "type", "solution")


@dataclass(frozen=True)
class MathDoc:
    doc_id: str
    problem: str
    solution: str
    subject: str  # the folder name, e.g. "counting_and_probability"
    level: int | None  # 1-5; None for the few problems labelled "Level ?"
    answer: str  # the last \boxed{} of the solution
    unique_id: str | None = None  # "test/<subject>/<n>.json" where known (the JSON tree, MATH-500)


def minerva_examples() -> list[dict[str, str]]:
    return json.loads((sample_dir("math") / "minerva_4shot.json").read_text(encoding="utf-8"))


def problem_key(problem: str) -> str:
    """sha256 of the problem text with whitespace runs collapsed: how MATH-500 finds its problems
    in a test.jsonl (or hub split) that carries no problem ids."""
    return hashlib.sha256(" ".join(problem.split()).encode("utf-8")).hexdigest()


def math500_entries() -> list[dict[str, str]]:
    """MATH-500 (Lightman et al. 2023, openai/prm800k math_splits/test.jsonl) in its own order:
    each problem's unique_id and problem_key."""
    return read_jsonl(sample_dir("math") / "math500.jsonl")


def format_example(problem: str) -> str:
    """A problem as the prompt asks it; a shot's solution follows on the next line."""
    return f"Problem:\n{problem}\n\nSolution:"


def make_doc(doc_id: str, row: Any, origin: str) -> MathDoc:
    if not isinstance(row, dict) or any(not isinstance(row.get(f), str) for f in FIELDS):
        raise UserError(f"{origin}: expected string fields {', '.join(FIELDS)} (the upstream MATH layout)")
    subject = SUBJECTS.get(row["type"])
    if subject is None:
        raise UserError(f"{origin}: type {row['type']!r} is not a MATH subject; valid: {', '.join(SUBJECTS)}")
    level = re.fullmatch(r"Level (\d)", row["level"])
    answer = gold_answer(row["solution"])
    if answer is None:
        raise UserError(f"{origin}: the solution has no \\boxed{{}} final answer; fix or remove the problem")
    return MathDoc(doc_id, row["problem"], row["solution"], subject, int(level.group(1)) if level else None, answer)


class MATH(Task):
    name = "math"
    default_shots = 4
    max_shots = 4
    headline = "exact_match"
    model_card_column = "MATH"
    version = "1"
    limit_rule = "N problems drawn across subject x level in proportion to their sizes, a seeded sample of each"

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        return {"subset": "full", "max_new_tokens": 1024, "equiv_timeout": 5.0}

    def __init__(self, options: Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__(options, **kwargs)
        if self.options["subset"] not in SUBSETS:
            raise UserError(f"task.subset={self.options['subset']!r} is not a subset; valid: {', '.join(SUBSETS)}")
        self.max_new_tokens = int(self.options["max_new_tokens"])
        self.shot_pairs = tuple((format_example(e["problem"]), e["solution"]) for e in minerva_examples()[:self.shots])
        self.checker = EquivalenceChecker(timeout=float(self.options["equiv_timeout"]))

    # --- data ---

    def load(self, data: DataSpec, limit: int | None = None) -> list[MathDoc]:
        docs = self.read_source(data)
        if self.options["subset"] == "math500":
            docs = self._math500(docs)
        return stratified_subset(docs, lambda d: (d.subject, d.level), limit, self.seed) if limit else docs

    def read_sample(self) -> list[MathDoc]:
        return self._jsonl_docs(sample_dir(self.name) / "test.jsonl")

    def read_local(self, path: str | None) -> list[MathDoc]:
        return self._local_docs(local_dir(path, self.name))

    def _local_docs(self, path: Path) -> list[MathDoc]:
        if path.is_file():
            return self._jsonl_docs(path)
        if (path / "test.jsonl").is_file():
            return self._jsonl_docs(path / "test.jsonl")
        tree = path / "test" if (path / "test").is_dir() else path
        files = sorted((p for subject in SUBJECTS.values() for p in (tree / subject).glob("*.json")),
                       key=lambda p: (p.parent.name, int(p.stem) if p.stem.isdigit() else 0, p.stem))
        if not files:
            raise UserError(f"task math: {path} has neither test.jsonl nor test/<subject>/<n>.json files; "
                            f"point data.path at a MATH copy in one of those layouts")
        docs = []
        for p in files:
            try:
                row = json.loads(p.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise UserError(f"{p}: not a JSON object ({e}); fix or remove the file") from None
            doc = replace(make_doc(f"{p.parent.name}/{p.stem}", row, str(p)),
                          unique_id=f"test/{p.parent.name}/{p.name}")
            if doc.subject != p.parent.name:
                raise UserError(f"{p}: type {row['type']!r} does not belong in folder {p.parent.name}/")
            docs.append(doc)
        return docs

    def _jsonl_docs(self, path: Path) -> list[MathDoc]:
        path = require_file(path, "MATH test file")
        return [make_doc(str(i), row, f"{path}: row {i}") for i, row in enumerate(read_jsonl(path))]

    def read_hub(self) -> list[MathDoc]:
        docs = []
        for subject in SUBJECTS.values():
            rows = load_hub_dataset(self.name, HUB_ID, subject, "test")
            docs += [make_doc(f"{subject}/{i}", row, f"hub {HUB_ID}/{subject} test: row {i}") for i, row in enumerate(rows)]
        return docs

    def _math500(self, docs: list[MathDoc]) -> list[MathDoc]:
        """The MATH-500 problems, in MATH-500's order: by unique_id where the data has file ids
        (the JSON tree), else by problem text."""
        by_id = {d.unique_id: d for d in docs if d.unique_id}
        by_key = {problem_key(d.problem): d for d in docs}
        selected, missing = [], []
        for entry in math500_entries():
            doc = by_id.get(entry["unique_id"]) or by_key.get(entry["problem_key"])
            if doc is None:
                missing.append(entry["unique_id"])
            else:
                selected.append(replace(doc, unique_id=entry["unique_id"]))
        if missing:
            raise UserError(f"task.subset=math500: {len(missing)} of its 500 problems are not in the loaded data "
                            f"(first: {missing[0]}); load the full MATH test set (data.path=DIR with "
                            f"test.jsonl or test/<subject>/<n>.json)")
        return selected

    # --- prompt ---

    def fewshot(self, doc: MathDoc) -> FewShot:
        return FewShot("", self.shot_pairs, format_example(doc.problem), target_delimiter="\n")

    def requests(self, doc: MathDoc) -> list[Generate]:
        return [Generate(self.prompt(doc), stop=STOP, max_new_tokens=self.max_new_tokens, temperature=0.0)]

    # --- scoring ---

    def score(self, doc: MathDoc, responses: Sequence[Response]) -> Sample:
        completion = self.response(doc, responses, GenerateResult).texts[0]
        prediction = extract_answer(completion)
        target = normalize_final_answer(doc.answer)
        normalized = normalize_final_answer(prediction) if prediction is not None else None
        exact = normalized == target
        timed_out = False
        equivalent = exact
        if not exact and prediction is not None:
            verdict = self.checker(prediction, doc.answer)
            equivalent, timed_out = verdict.equivalent, verdict.timed_out
        return Sample(doc_id=doc.doc_id, prompt=self.prompt(doc), target=doc.answer, response=completion,
                      prediction=prediction, score=float(exact),
                      extra={"subject": doc.subject, "level": doc.level, "unique_id": doc.unique_id,
                             "normalized_prediction": normalized,
                             "normalized_target": target, "exact_match": float(exact),
                             "equiv": float(equivalent), "equiv_timed_out": timed_out})

    def aggregate(self, samples: Sequence[Sample]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        add_metric(metrics, "exact_match", mean_stderr([s.extra["exact_match"] for s in samples]))
        add_metric(metrics, "equiv", mean_stderr([s.extra["equiv"] for s in samples]))
        add_metric(metrics, "equiv_timed_out", mean_stderr([float(s.extra["equiv_timed_out"]) for s in samples]))
        by_subject = group_by(samples, lambda s: s.extra["subject"])
        by_level = group_by(samples, lambda s: s.extra["level"])
        groups = [(subject, by_subject[subject]) for subject in SUBJECTS.values() if subject in by_subject]
        groups += [(f"level_{level}", by_level[level]) for level in sorted(k for k in by_level if k is not None)]
        if None in by_level:
            groups.append(("level_unknown", by_level[None]))
        for group, members in groups:
            for metric in ("exact_match", "equiv"):
                add_metric(metrics, f"{group}/{metric}", mean_stderr([s.extra[metric] for s in members]))
        return metrics
