"""MBPP (Austin et al., 2021): 3-shot, pass@1 (greedy) on test tasks 11-510, as in the Qwen-14B model card.

Data: `mbpp.jsonl` (the full file, task_ids 1-974; rows {"task_id", "text", "code", "test_list",
"test_setup_code", "challenge_test_list"}); `data.path` is that file or a folder holding it. Hub
`google-research-datasets/mbpp`, config `full`, splits `prompt` (the shots) and `test`. The package
ships a sample: tasks 2, 3, 4 (the shots) and 11-18. doc_id: the task_id ("11").

Prompt: the shots are tasks 2, 3, 4 (the first `shots` of them), each
    "You are an expert Python programmer, and here is your task: {text} Your code should pass these
    tests:\\n\\n{test1}\\n{test2}\\n{test3}\\n[BEGIN]\\n{code}\\n[DONE]"
(one line, wrapped here), separated by a blank line ("\\n\\n"), then the question in the same form
ending at "[BEGIN]\\n". `code` is as in the data: MBPP's solutions use CRLF line endings and the
prompt keeps them. Greedy, at most 512 new tokens, stop at `[DONE]`.

Check: program = test_setup_code + "\\n" + completion + "\\n" + the three asserts (and the challenge
asserts with `task.challenge_tests=true`), one per line, run in tasks/scoring/sandbox.py. As the protocol
says (docs/protocols.md), the setup code comes first: task 367's setup builds a tree with the `Node` class its
solution defines, so no completion can pass 367 under this order. pass@k as in tasks/code_eval.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from qwen_eval.data import jsonl_rows, load_hub_dataset, local_file, sample_dir
from qwen_eval.errors import UserError
from qwen_eval.task import DataSpec, FewShot
from qwen_eval.tasks.code_eval import CodeTask, require_fields

STOP = ("[DONE]",)
SHOT_IDS = (2, 3, 4)
TEST_IDS = range(11, 511)
HUB_ID, HUB_CONFIG = "google-research-datasets/mbpp", "full"
LAYOUT = "MBPP rows have task_id, text, code, test_list, test_setup_code, challenge_test_list"


@dataclass(frozen=True)
class MBPPDoc:
    doc_id: str
    task_id: int
    text: str
    code: str
    test_list: tuple[str, ...]
    test_setup_code: str = ""
    challenge_test_list: tuple[str, ...] = ()


def format_example(doc: MBPPDoc) -> str:
    """A task as the prompt asks it, up to the code: "...[BEGIN]\\n"."""
    return (f"You are an expert Python programmer, and here is your task: {doc.text} "
            f"Your code should pass these tests:\n\n" + "\n".join(doc.test_list) + "\n[BEGIN]\n")


def _doc(row: Any, where: str) -> MBPPDoc:
    require_fields(row, {"task_id": int, "text": str, "code": str, "test_list": list}, where, LAYOUT)
    tests = row["test_list"]
    setup = row.get("test_setup_code") or ""
    challenge = row.get("challenge_test_list") or []
    if not all(isinstance(t, str) for t in tests) or not tests:
        raise UserError(f"{where}: field 'test_list' must be a non-empty list of assert strings ({LAYOUT})")
    if not isinstance(setup, str) or not isinstance(challenge, list) or not all(isinstance(t, str) for t in challenge):
        raise UserError(f"{where}: test_setup_code must be a string and challenge_test_list a list of strings")
    return MBPPDoc(str(row["task_id"]), row["task_id"], row["text"], row["code"], tuple(tests), setup, tuple(challenge))


class MBPP(CodeTask):
    name = "mbpp"
    default_shots = 3
    max_shots = 3
    model_card_column = "MBPP"
    version = "1"
    stop = STOP

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        return {"challenge_tests": False, **super().default_options()}

    def __init__(self, options: Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__(options, **kwargs)
        if not isinstance(self.options["challenge_tests"], bool):
            raise UserError(f"task.challenge_tests={self.options['challenge_tests']!r} must be true or false")
        self.shot_docs: list[MBPPDoc] | None = None

    # --- data ---

    def load(self, data: DataSpec, limit: int | None = None) -> list[MBPPDoc]:
        rows, origin = self.read_source(data)
        by_id: dict[int, MBPPDoc] = {}
        for i, row in enumerate(rows):
            doc = _doc(row, f"{origin}: row {i}")
            by_id[doc.task_id] = doc
        missing = [i for i in SHOT_IDS if i not in by_id]
        if missing:
            raise UserError(f"{origin}: the 3-shot prompt needs tasks {', '.join(map(str, SHOT_IDS))}; "
                            f"missing task_id {', '.join(map(str, missing))} (use the full mbpp.jsonl)")
        self.shot_docs = [by_id[i] for i in SHOT_IDS]
        docs = [by_id[i] for i in sorted(by_id) if i in TEST_IDS]
        return docs[:limit] if limit else docs

    def read_hub(self) -> tuple[list, str]:
        rows = (load_hub_dataset(self.name, HUB_ID, HUB_CONFIG, "prompt")
                + load_hub_dataset(self.name, HUB_ID, HUB_CONFIG, "test"))
        return rows, f"hub {HUB_ID}/{HUB_CONFIG}"

    def read_sample(self) -> tuple[list, str]:
        return jsonl_rows(sample_dir(self.name) / "mbpp.jsonl")

    def read_local(self, path: str | None) -> tuple[list, str]:
        return jsonl_rows(local_file(path, self.name, "mbpp.jsonl", "MBPP file (mbpp.jsonl)"))

    # --- prompt, program ---

    def fewshot(self, doc: MBPPDoc) -> FewShot:
        """Each shot: its task up to "[BEGIN]\\n", then its code and "\\n[DONE]"; then the question's task."""
        if self.shot_docs is None:
            raise RuntimeError("MBPP's prompt needs the shots: call load() first")
        return FewShot("", tuple((format_example(d), d.code + "\n[DONE]") for d in self.shot_docs[:self.shots]),
                       format_example(doc), target_delimiter="")

    def tests(self, doc: MBPPDoc) -> list[str]:
        return list(doc.test_list) + (list(doc.challenge_test_list) if self.options["challenge_tests"] else [])

    def program(self, doc: MBPPDoc, completion: str) -> str:
        return doc.test_setup_code + "\n" + completion + "\n" + "\n".join(self.tests(doc)) + "\n"

    def target(self, doc: MBPPDoc) -> list[str]:
        return self.tests(doc)
