"""BIG-Bench Hard (Suzgun et al., 2022): 27 tasks, 3-shot chain of thought, accuracy averaged over
the tasks (the Qwen-14B model card's BBH column).

Data: the BIG-Bench-Hard repository layout, `data.path` holding `bbh/<task>.json`
({"examples": [{"input", "target"}]}) and `cot-prompts/<task>.txt`; hub `lukaemon/bbh` (one config
per task, split test). The 27 official CoT prompts ship in the package (data/bbh/cot-prompts, MIT),
used for hub data and for a local copy without a cot-prompts/ folder. doc_id `{task}/{index}`;
`limit` is per task.

Prompt: the task's CoT prompt file holds a canary line, a `-----` line, then the task description
and three worked examples; the prompt is everything after the `-----` line (from the description
on; the files end without a newline), then `\\n\\nQ: {input}\\nA: Let's think step by step.`
Greedy, stop at `\\n\\nQ:`, at most 1024 new tokens (the longest worked answer in the prompts is
736 Qwen tokens, so a model that imitates them is not cut off).

Answer: the text after the last `So the answer is ` up to the end of its sentence (its line,
without the final period). It is compared with the target after normalisation by answer type:
option letters `(A)` (also written `A`, `(A) text`), True/False, Yes/No, valid/invalid, numbers,
sorted word lists and Dyck closing sequences (spacing ignored). A target that is not of its
task's type (movie_recommendation has one `Monsters, Inc`) is compared as plain text.

Metric: `acc`, the plain mean of the task accuracies, and `<task>/acc` for each task.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping, Sequence

from qwen_eval.data import load_hub_dataset, local_dir, require_file, sample_dir
from qwen_eval.errors import UserError
from qwen_eval.requests import Generate, GenerateResult, Response
from qwen_eval.task import DataSpec, FewShot, Sample, Task
from qwen_eval.tasks.scoring.metrics import add_metric, group_by, macro_stderr, mean_stderr

# task -> answer type
TASKS: dict[str, str] = {
    "boolean_expressions": "true_false",
    "causal_judgement": "yes_no",
    "date_understanding": "choice",
    "disambiguation_qa": "choice",
    "dyck_languages": "dyck",
    "formal_fallacies": "valid_invalid",
    "geometric_shapes": "choice",
    "hyperbaton": "choice",
    "logical_deduction_five_objects": "choice",
    "logical_deduction_seven_objects": "choice",
    "logical_deduction_three_objects": "choice",
    "movie_recommendation": "choice",
    "multistep_arithmetic_two": "number",
    "navigate": "yes_no",
    "object_counting": "number",
    "penguins_in_a_table": "choice",
    "reasoning_about_colored_objects": "choice",
    "ruin_names": "choice",
    "salient_translation_error_detection": "choice",
    "snarks": "choice",
    "sports_understanding": "yes_no",
    "temporal_sequences": "choice",
    "tracking_shuffled_objects_five_objects": "choice",
    "tracking_shuffled_objects_seven_objects": "choice",
    "tracking_shuffled_objects_three_objects": "choice",
    "web_of_lies": "yes_no",
    "word_sorting": "words",
}
HUB_ID = "lukaemon/bbh"
STOP = ("\n\nQ:",)
ANSWER_MARKER = "So the answer is "


@dataclass(frozen=True)
class BBHDoc:
    doc_id: str
    task: str
    input: str
    target: str


# --- prompts ------------------------------------------------------------------------------------------


COT_ANSWER = "\nA: Let's think step by step."  # ends every question of the CoT prompts


def read_cot_prompt(path: Path) -> FewShot:
    """A CoT prompt file (everything after its `-----` line) split at its questions: the task
    description, then each worked example as "Q: ...\\nA: Let's think step by step." and its
    reasoning; the question is left empty (`BBH.fewshot` fills it in)."""
    text = require_file(path, "BBH chain-of-thought prompt").read_text(encoding="utf-8")
    head, sep, rest = text.partition("\n-----\n")
    if not sep:
        raise UserError(f"{path}: no '-----' line after the canary; expected the BIG-Bench-Hard cot-prompts layout")
    description, *examples = rest.split("\n\nQ: ")
    pairs = [e.partition(COT_ANSWER)[::2] for e in examples]
    delimiters = {a[:1] for _, a in pairs}  # "\n", or " " in sports_understanding
    if len(delimiters) != 1 or not delimiters <= {"\n", " "}:
        raise UserError(f"{path}: its examples do not each read 'Q: ...{COT_ANSWER!r} <reasoning>'; "
                        f"restore the cot-prompts file")
    shots = tuple(("Q: " + q + COT_ANSWER, a[1:]) for q, a in pairs)
    return FewShot(description + "\n\n", shots, "", target_delimiter=delimiters.pop())


# --- answers ------------------------------------------------------------------------------------------


def extract_answer(completion: str) -> str | None:
    """The text after the last "So the answer is ", to the end of its line, without a final period."""
    at = completion.rfind(ANSWER_MARKER)
    if at < 0:
        return None
    answer = completion[at + len(ANSWER_MARKER):].split("\n")[0].strip()
    if answer.endswith("."):
        answer = answer[:-1].rstrip()
    return answer


def _plain(text: str) -> str:
    return " ".join(text.casefold().split()).rstrip(".")


def _first_word(text: str, words: tuple[str, ...]) -> str | None:
    match = re.match(r"\W*(\w+)", text.casefold())
    return match.group(1) if match and match.group(1) in words else None


def normalize_answer(answer: str, kind: str) -> str:
    """A canonical form of an answer of the given type (the plain text when it is not of the type)."""
    if kind == "choice":
        match = re.search(r"\(([A-Z])\)", answer) or re.match(r"\s*([A-Z])(?:$|[\s.,:;)])", answer)
        if match:
            return f"({match.group(1)})"
    elif kind in ("true_false", "yes_no", "valid_invalid"):
        words = {"true_false": ("true", "false"), "yes_no": ("yes", "no"), "valid_invalid": ("valid", "invalid")}[kind]
        word = _first_word(answer, words)
        if word:
            return word
    elif kind == "number":
        match = re.search(r"[-\u2212]?\d[\d,]*(?:\.\d+)?", answer)
        if match:
            value = Fraction(match.group(0).replace(",", "").replace("\u2212", "-"))
            return str(value.numerator) if value.denominator == 1 else str(value)
    elif kind == "words":
        return " ".join(w for w in re.split(r"[\s,]+", answer.casefold()) if w).rstrip(".")
    elif kind == "dyck":
        return "".join(answer.split()).rstrip(".")
    return _plain(answer)


def is_correct(prediction: str | None, target: str, kind: str) -> bool:
    if prediction is None:
        return False
    if kind == "choice" and not re.fullmatch(r"\([A-Z]\)", target):
        kind = "text"  # a free-text target in a multiple-choice task: compare as text
    return normalize_answer(prediction, kind) == normalize_answer(target, kind)


class BBH(Task):
    name = "bbh"
    default_shots = 3
    max_shots = 3
    headline = "acc"
    model_card_column = "BBH"
    version = "1"
    limit_rule = "the first N examples of each of the 27 tasks"

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        return {"subtasks": None, "max_new_tokens": 1024}

    def __init__(self, options: Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__(options, **kwargs)
        if self.shots != 3:
            raise UserError(f"task bbh: the official chain-of-thought prompts have 3 worked examples; use shots=3, not {self.shots}")
        subtasks = self.options["subtasks"]
        self.tasks = list(TASKS) if subtasks is None else [subtasks] if isinstance(subtasks, str) else list(subtasks)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise UserError(f"task.subtasks: {unknown[0] if unknown else '(empty)'!r} is not a BBH task; valid: {', '.join(TASKS)}")
        self.max_new_tokens = int(self.options["max_new_tokens"])
        self.cot_prompts: dict[str, FewShot] = {}

    # --- data ---

    def load(self, data: DataSpec, limit: int | None = None) -> list[BBHDoc]:
        root = self.read_source(data)  # the BIG-Bench-Hard folder; None: the hub
        if root is not None and not (root / "bbh").is_dir():
            raise UserError(f"task bbh: {root} has no bbh/ folder; point data.path at a BIG-Bench-Hard copy "
                            f"(bbh/<task>.json and cot-prompts/<task>.txt)")
        prompts_dir = root / "cot-prompts" if root is not None and (root / "cot-prompts").is_dir() else sample_dir(self.name) / "cot-prompts"
        docs: list[BBHDoc] = []
        for task in self.tasks:
            self.cot_prompts[task] = read_cot_prompt(prompts_dir / f"{task}.txt")
            if root is None:
                examples, origin = load_hub_dataset(self.name, HUB_ID, task, "test"), f"hub {HUB_ID}/{task} test"
            else:
                path = require_file(root / "bbh" / f"{task}.json", f"BBH task file for {task}")
                examples, origin = self._read_examples(path), str(path)
            for i, example in enumerate(examples[:limit] if limit else examples):
                if not isinstance(example, dict) or not all(isinstance(example.get(k), str) for k in ("input", "target")):
                    raise UserError(f"{origin}: example {i} needs string fields \"input\" and \"target\"")
                docs.append(BBHDoc(f"{task}/{i}", task, example["input"], example["target"]))
        return docs

    def read_local(self, path: str | None) -> Path:
        return local_dir(path, self.name)

    def read_sample(self) -> Path:
        return sample_dir(self.name)

    def read_hub(self) -> None:
        return None

    @staticmethod
    def _read_examples(path: Path) -> list[Any]:
        try:
            examples = json.loads(path.read_text(encoding="utf-8")).get("examples")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise UserError(f"{path}: not a BBH task file ({e}); expected {{\"examples\": [{{\"input\", \"target\"}}]}}") from None
        if not isinstance(examples, list):
            raise UserError(f"{path}: no \"examples\" list; expected {{\"examples\": [{{\"input\", \"target\"}}]}}")
        return examples

    # --- prompt ---

    def cot_prompt(self, task: str) -> FewShot:
        """`task`'s CoT prompt in its parts (read by `load`, else from the package)."""
        if task not in self.cot_prompts:  # documents made without `load`: the package's prompts
            self.cot_prompts[task] = read_cot_prompt(sample_dir(self.name) / "cot-prompts" / f"{task}.txt")
        return self.cot_prompts[task]

    def fewshot(self, doc: BBHDoc) -> FewShot:
        """The task's CoT prompt, then `Q: {input}\\nA: Let's think step by step.`"""
        return replace(self.cot_prompt(doc.task), question=f"Q: {doc.input}{COT_ANSWER}")

    def requests(self, doc: BBHDoc) -> list[Generate]:
        return [Generate(self.prompt(doc), stop=STOP, max_new_tokens=self.max_new_tokens, temperature=0.0)]

    # --- scoring ---

    def score(self, doc: BBHDoc, responses: Sequence[Response]) -> Sample:
        completion = self.response(doc, responses, GenerateResult).texts[0]
        prediction = extract_answer(completion)
        correct = is_correct(prediction, doc.target, TASKS[doc.task])
        return Sample(doc_id=doc.doc_id, prompt=self.prompt(doc), target=doc.target, response=completion,
                      prediction=prediction, score=float(correct), extra={"task": doc.task})

    def aggregate(self, samples: Sequence[Sample]) -> dict[str, float]:
        by_task = group_by(samples, lambda s: s.extra["task"])
        scores = {task: [s.score for s in by_task[task]] for task in TASKS if task in by_task}
        metrics: dict[str, float] = {}
        add_metric(metrics, "acc", macro_stderr(scores))
        for task, values in scores.items():
            add_metric(metrics, f"{task}/acc", mean_stderr(values))
        return metrics
