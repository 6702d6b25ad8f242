"""MBPP+ (EvalPlus; Liu et al., 2023) as Qwen2.5-Coder's instruct evaluation runs it: 0-shot, greedy,
pass@1 on the base inputs (MBPP) and on base + plus inputs (MBPP+), sanitized (qwencoder-eval/instruct/
eval_plus: generate.py, then `evalplus.sanitize` and `evalplus.evaluate --dataset mbpp`).

Data: EvalPlus's MbppPlus jsonl, one task a line {"task_id" ("Mbpp/2"), "prompt" (a docstring: the task
and one example assert), "entry_point", "canonical_solution", "base_input" (the original MBPP tests'
arguments), "plus_input" (EvalPlus's), "atol", "contract", "assertion"}; v0.1.0 (399 tasks) is what
Qwen's evaluation reads. `data.path` is the file or a folder holding one MbppPlus-*.jsonl; data.source=
sample reads tasks/data/mbppplus/ (six tasks of v0.1.0, plus inputs cut to ten); hub `evalplus/mbppplus`.
The version (v0.1.0) is taken from the file name and recorded in results.json (`extra.data`). The
arguments are rebuilt as EvalPlus's `mbpp_deserialize_inputs` does (JSON has no tuples, sets or
complex numbers: INPUT_SHAPES). doc_id: the task_id.

Prompt (tasks/qwen_coder_instruct.py, `task.prompt=instruct`, the one protocol): system "You are an
intelligent programming assistant to produce Python algorithmic solutions", user "Can you complete the
following Python function?\\n```python\\n" + prompt.strip() + "\\n```\\n", the reply pre-filled with
"```python\\n"; greedy, stops INSTRUCT_STOPS and the end of turn, at most `max_new_tokens` (2048) new
tokens and `max_length` (1536) tokens of prompt and reply together (null: no cap).

Answer: raw_solution = the reply with tabs as 4 spaces, cut before its first "```"; solution =
evalplus.sanitize(raw_solution, entry_point) (tasks/evalplus_sanitize.py).

Check (EvalPlus's differential testing, tasks/evalplus_oracle.py and tasks/evalplus_check.py): the
canonical solution (prompt + canonical_solution) runs in the sandbox on every input, once per data
file and task, giving the expected outputs and its times (cached under `expected_cache`, keyed by the
file's sha256 and the sandbox's Python version). A solution is checked on the
base inputs and, separately, on the plus inputs, each by one sandboxed program: EvalPlus's memory limits
and disabled functions, each input under max(min_time_limit, gt_time_limit_factor * canonical time)
seconds, outputs compared as EvalPlus does (exact, its special oracles for Mbpp/164, 295, 558, 581 and
the set- and not-None tasks, floats with atol), stopping at the first failing input, the process ended
at min(60, sum of the limits) + 2 s. Labels as EvalPlus's: pass, fail, timeout.

Metrics (pass@k as tasks/code_eval.py): pass@1 = base and plus both pass (MBPP+, the headline),
base_pass@1 = base passes (MBPP), for the sanitized solution; raw_pass@1 and raw_base_pass@1 for the
raw one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from qwen_eval.data import load_hub_dataset, local_dir, sample_dir
from qwen_eval.errors import UserError
from qwen_eval.requests import Generate
from qwen_eval.tasks.scoring.sandbox import Outcome, SandboxOptions
from qwen_eval.task import DataSpec
from qwen_eval.tasks.code_eval import Check, CodeTask, _float_option, require_fields
from qwen_eval.tasks.evalplus_oracle import (MIN_TIME_LIMIT, SPLITS, TIME_LIMIT_FACTOR, ExpectedOutputs, Problem,
                                             check_program, evalplus_reason, evalplus_status, expected_outputs,
                                             failure_check)
from qwen_eval.tasks.evalplus_sanitize import sanitize
from qwen_eval.tasks.qwen_coder_instruct import (INSTRUCT_MAX_LENGTH, INSTRUCT_MAX_NEW_TOKENS, INSTRUCT_PREFILL,
                                                 INSTRUCT_STOPS, INSTRUCT_USER, instruct_messages, raw_solution)

HUB_ID = "evalplus/mbppplus"
FILE_PATTERN = "MbppPlus*.jsonl*"
SAMPLE_FILE = "MbppPlus-v0.1.0-sample.jsonl"
FIELDS = {"task_id": str, "prompt": str, "entry_point": str, "canonical_solution": str, "base_input": list,
          "plus_input": (list, dict), "atol": (int, float)}  # v0.1.0's Mbpp/793 has plus_input {}: no inputs
LAYOUT = ("MBPP+ rows are EvalPlus's MbppPlus jsonl: task_id, prompt, entry_point, canonical_solution, "
          "base_input, plus_input, atol; use the EvalPlus release file, e.g. MbppPlus-v0.1.0.jsonl")
PROMPTS = ("instruct",)
# evalplus/eval/_special_oracle.py: the outputs of these tasks are compared as "not None"
OUTPUT_NOT_NONE = ("check_str", "text_match_three", "text_starta_endb")
DEFAULT_MEMORY_MB = 4096  # EvalPlus's EVALPLUS_MAX_MEMORY_BYTES default (4 GiB address space)
DEFAULT_SLACK = 10  # sandbox seconds beyond EvalPlus's own kill time (task.sandbox.timeout)


# --- the arguments, as EvalPlus's mbpp_deserialize_inputs rebuilds them from JSON -------------------

def _all_tuples(value: Any) -> Any:
    return tuple(_all_tuples(v) for v in value) if isinstance(value, list) else value


Shape = Callable[[list], Any]
_SHAPES: list[tuple[tuple[int, ...], Shape]] = [
    # every argument a tuple
    ((2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630, 726, 740, 744, 809),
     lambda a: [tuple(x) for x in a]),
    # every argument a list of tuples
    ((63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780),
     lambda a: [[tuple(y) for y in x] for x in a]),
    # the first argument a list of tuples, the second as it is (no others)
    ((75, 413, 444, 753), lambda a: [[tuple(y) for y in a[0]], a[1]]),
    # the first as it is, the second a tuple (no others)
    ((106, 750), lambda a: [a[0], tuple(a[1])]),
    # a list of sets (an empty one becomes {}, a dict, as in EvalPlus)
    ((115,), lambda a: [[set(x) if isinstance(x, list) and len(x) else {} for x in a[0]]]),
    ((124,), lambda a: (float(a[0]), complex(a[1]))),
    # the first argument a tuple, the second as it is (no others)
    ((250, 405, 446, 617, 720, 763, 808), lambda a: [tuple(a[0]), a[1]]),
    # every argument a tuple of tuples
    ((259, 401, 445), lambda a: [tuple(tuple(y) for y in x) for x in a]),
    # one argument: a tuple whose list items are tuples
    ((278,), lambda a: [tuple(tuple(y) if isinstance(y, list) else y for y in a[0])]),
    ((307,), lambda a: [tuple(a[0]), a[1], a[2]]),
    ((722,), lambda a: [{k: tuple(v) for k, v in a[0].items()}] + a[1:]),
    ((252,), lambda a: [complex(a[0])]),
    # every list, at any depth, a tuple
    ((580, 615, 791), _all_tuples),
]
INPUT_SHAPES: dict[int, Shape] = {number: shape for numbers, shape in _SHAPES for number in numbers}


def task_number(task_id: str) -> int:
    return int(task_id.split("/")[-1])


def arguments(task_id: str, inputs: Sequence[list]) -> list:
    """The call arguments of each input of a task (EvalPlus's mbpp_deserialize_inputs)."""
    shape = INPUT_SHAPES.get(task_number(task_id))
    return list(inputs) if shape is None else [shape(a) for a in inputs]


# --- data ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MbppPlusDoc:
    doc_id: str  # the task_id, "Mbpp/2"
    prompt: str
    entry_point: str
    canonical_solution: str
    base_input: list  # as in the file (JSON); `arguments` rebuilds the call arguments
    plus_input: list
    atol: float
    assertion: str = ""


def data_version(name: str) -> str | None:
    """"v0.1.0" from a file name like MbppPlus-v0.1.0.jsonl."""
    found = re.search(r"MbppPlus[-_](v\d+(?:\.\d+)*)", name)
    return found.group(1) if found else None


def read_rows(path: Path, data: bytes) -> list[tuple[str, Any]]:
    """(where, row) for each line of a jsonl file's bytes; where = "file:line"."""
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 ({e})") from None
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append((f"{path}:{lineno}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove the line") from None
    return rows


def _doc(where: str, row: Any) -> MbppPlusDoc:
    require_fields(row, FIELDS, where, LAYOUT)
    task_id = row["task_id"]
    if not re.fullmatch(r"Mbpp/\d+", task_id):
        raise UserError(f"{where}: task_id {task_id!r} is not of the form 'Mbpp/<number>' ({LAYOUT})")
    inputs = {}
    for split in SPLITS:
        given = row[f"{split}_input"]
        inputs[split] = [] if given == {} else given  # EvalPlus iterates {} as no inputs
        if not isinstance(inputs[split], list) or not all(isinstance(a, list) for a in inputs[split]):
            raise UserError(f"{where} ({task_id}): field '{split}_input' must be a list of argument lists ({LAYOUT})")
        try:
            arguments(task_id, inputs[split])
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
            raise UserError(f"{where} ({task_id}): field '{split}_input' does not have the shape EvalPlus gives "
                            f"this task's arguments ({type(e).__name__}: {e}) ({LAYOUT})") from None
    assertion = row.get("assertion") if isinstance(row.get("assertion"), str) else ""
    return MbppPlusDoc(task_id, row["prompt"], row["entry_point"], row["canonical_solution"], inputs["base"],
                       inputs["plus"], row["atol"], assertion)


def problem(doc: MbppPlusDoc) -> Problem:
    return Problem(doc.doc_id, doc.entry_point, doc.prompt + doc.canonical_solution,
                   {s: arguments(doc.doc_id, getattr(doc, f"{s}_input")) for s in SPLITS}, doc.atol,
                   output_not_none=doc.entry_point in OUTPUT_NOT_NONE)


class MbppPlus(CodeTask):
    name = "mbppplus"
    default_shots = 0
    max_shots = 0
    model_card_column = "MBPP+"
    extra_columns = {"MBPP": "base_pass@1"}
    headline = "pass@1"
    version = "1"
    stop = INSTRUCT_STOPS
    metric_stems = ("pass", "base_pass", "raw_pass", "raw_base_pass")

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        base = super().default_options()
        sandbox = {**SandboxOptions().as_dict(), "timeout": DEFAULT_SLACK, "memory_mb": DEFAULT_MEMORY_MB}
        return {"prompt": "instruct", **base, "max_new_tokens": INSTRUCT_MAX_NEW_TOKENS,
                "max_length": INSTRUCT_MAX_LENGTH, "min_time_limit": MIN_TIME_LIMIT,
                "gt_time_limit_factor": TIME_LIMIT_FACTOR, "expected_cache": None, "sandbox": sandbox}

    def __init__(self, options: Mapping[str, Any] | None = None, **kwargs: Any):
        given = dict(options or {})
        if isinstance(given.get("sandbox"), Mapping):  # a partial block keeps MBPP+'s memory and slack defaults
            given["sandbox"] = {**self.default_options()["sandbox"], **given["sandbox"]}
        super().__init__(given, **kwargs)
        o = self.options
        if o["prompt"] not in PROMPTS:
            raise UserError(f"task.prompt={o['prompt']!r} is not an MBPP+ protocol; valid: {', '.join(PROMPTS)}")
        cap = o["max_length"]
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise UserError(f"task.max_length={cap!r} must be a whole number >= 1 (or null for no cap)")
        self.max_length = cap
        self.min_time_limit = _float_option("min_time_limit", o["min_time_limit"], 0.0, low_open=True)
        self.time_limit_factor = _float_option("gt_time_limit_factor", o["gt_time_limit_factor"], 0.0, low_open=True)
        cache = o["expected_cache"]
        if cache is not None and not isinstance(cache, str):
            raise UserError(f"task.expected_cache={cache!r} must be a folder path (or null for the default)")
        self.data_info: dict[str, Any] = {}
        self.expected: ExpectedOutputs | None = None

    @property
    def uses_chat(self) -> bool:
        return True

    # --- data ---

    def read_local(self, path: str | None) -> tuple[list, str]:
        return self._read_file(self._local_file(path), "local")

    def read_sample(self) -> tuple[list, str]:
        return self._read_file(sample_dir(self.name) / SAMPLE_FILE, "sample")

    def read_hub(self) -> tuple[list, str]:
        rows = load_hub_dataset(self.name, HUB_ID, None, "test")
        origin = f"hub {HUB_ID} test"
        digest = hashlib.sha256(json.dumps(rows, sort_keys=True).encode("utf-8")).hexdigest()
        self.data_info = {"source": "hub", "file": HUB_ID, "version": None, "sha256": digest}
        return [(f"{origin}: row {i}", row) for i, row in enumerate(rows)], origin

    def _read_file(self, path: Path, source: str) -> tuple[list, str]:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UserError(f"{path}: cannot read ({e})") from None
        self.data_info = {"source": source, "file": str(path), "version": data_version(path.name),
                          "sha256": hashlib.sha256(data).hexdigest()}
        return read_rows(path, data), str(path)

    def _local_file(self, path: str | None) -> Path:
        p = local_dir(path, self.name)
        if p.is_file():
            return p
        found = sorted(p.glob(FILE_PATTERN))
        if len(found) != 1:
            what = "no MbppPlus-*.jsonl" if not found else f"{len(found)} files ({', '.join(f.name for f in found)})"
            raise UserError(f"task mbppplus: {p} holds {what}; point data.path at one MbppPlus jsonl file "
                            f"(e.g. MbppPlus-v0.1.0.jsonl)")
        return found[0]

    def load(self, data: DataSpec, limit: int | None = None) -> list[MbppPlusDoc]:
        rows, origin = self.read_source(data)
        docs = [_doc(where, row) for where, row in rows]
        seen: set[str] = set()
        for doc in docs:
            if doc.doc_id in seen:
                raise UserError(f"{origin}: task_id {doc.doc_id} occurs twice; each task once, please")
            seen.add(doc.doc_id)
        self.data_info["tasks"] = len(docs)
        return docs[:limit] if limit else docs

    # --- prompt ---

    def prompt(self, doc: MbppPlusDoc) -> str:
        """The user turn."""
        return INSTRUCT_USER.format(prompt=doc.prompt.strip())

    def requests(self, doc: MbppPlusDoc) -> list[Generate]:
        return [Generate("", stop=self.stop, max_new_tokens=self.max_new_tokens, max_length=self.max_length,
                         temperature=self.temperature, top_p=self.top_p, n=self.n, seed=self.seed,
                         messages=instruct_messages(doc.prompt), prefill=INSTRUCT_PREFILL)]

    def target(self, doc: MbppPlusDoc) -> str:
        return doc.assertion

    def program(self, doc: MbppPlusDoc, completion: str) -> str:
        """The plus program of the sanitized solution (the checks need the expected outputs)."""
        return next(c.program for c in self.checks(doc, completion) if c.name == "sanitized/plus")

    # --- checks: the sanitized and the raw solution, each on base and on plus ---

    def score_many(self, docs: Sequence[MbppPlusDoc], responses_per_doc: Sequence) -> list:
        self._prepare(docs)  # every document's expected outputs at once: the sandbox runs them in parallel
        return super().score_many(docs, responses_per_doc)

    def _prepare(self, docs: Sequence[MbppPlusDoc]) -> None:
        """The expected outputs of `docs` (from the cache, or computed in the sandbox)."""
        have = self.expected.oracles.keys() | self.expected.failures.keys() if self.expected else set()
        todo = [problem(d) for d in docs if d.doc_id not in have]
        if not todo:
            return
        if not self.data_info.get("sha256"):  # documents made without load(): key them by their content
            text = json.dumps([p.task_id + p.code for p in todo])
            self.data_info["sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
        found = expected_outputs(todo, self.data_info["sha256"], self.sandbox, self._cache_dir())
        if self.expected is None:
            self.expected = found
        else:
            self.expected.oracles.update(found.oracles)
            self.expected.failures.update(found.failures)
            self.expected.computed += found.computed
            self.expected.seconds += found.seconds

    def _cache_dir(self) -> Path:
        chosen = self.options["expected_cache"] or os.environ.get("QWEN_EVAL_CACHE") or "~/.cache/qwen-eval"
        return Path(chosen).expanduser()

    def checks(self, doc: MbppPlusDoc, completion: str) -> list[Check]:
        if self.expected is None or doc.doc_id not in (self.expected.oracles.keys() | self.expected.failures.keys()):
            self._prepare([doc])
        raw = raw_solution(completion)
        solutions = {"sanitized": sanitize(raw, doc.entry_point), "raw": raw}
        oracles = self.expected.oracles.get(doc.doc_id)
        task = problem(doc)
        memory = self.sandbox.limits.memory_mb << 20
        checks = []
        for variant, solution in solutions.items():
            for split in SPLITS:
                name = f"{variant}/{split}"
                if oracles is None:
                    checks.append(failure_check(name, self.expected.failures[doc.doc_id]))
                    continue
                checks.append(check_program(task, split, solution, oracles[split], name=name, memory_bytes=memory,
                                            slack=self.sandbox.limits.timeout, min_time_limit=self.min_time_limit,
                                            factor=self.time_limit_factor))
        return checks

    def passes(self, doc: MbppPlusDoc, ran: Mapping[str, Outcome]) -> dict[str, bool]:
        ok = {name: evalplus_status(outcome) == "pass" for name, outcome in ran.items()}
        return {"pass": ok["sanitized/base"] and ok["sanitized/plus"], "base_pass": ok["sanitized/base"],
                "raw_pass": ok["raw/base"] and ok["raw/plus"], "raw_base_pass": ok["raw/base"]}

    def prediction(self, doc: MbppPlusDoc, ran: Mapping[str, Outcome]) -> str:
        base, plus = evalplus_status(ran["sanitized/base"]), evalplus_status(ran["sanitized/plus"])
        return {"pass": "passed", "fail": "failed", "timeout": "timeout"}[base if base != "pass" else plus]

    def record(self, doc: MbppPlusDoc, completion: str, checks: Sequence[Check],
               ran: Mapping[str, Outcome]) -> dict[str, Any]:
        by_name = {c.name: c for c in checks}
        sizes = {s: len(getattr(doc, f"{s}_input")) for s in SPLITS}
        raw = raw_solution(completion)

        def verdicts(variant: str) -> tuple[dict[str, str], dict[str, str | None]]:
            status = {s: evalplus_status(ran[f"{variant}/{s}"]) for s in SPLITS}
            reason = {s: evalplus_reason(ran[f"{variant}/{s}"], sizes[s]) for s in SPLITS}
            return status, reason

        verdict, reason = verdicts("sanitized")
        raw_verdict, raw_reason = verdicts("raw")
        return {"raw_solution": raw, "solution": sanitize(raw, doc.entry_point),
                "program": {s: by_name[f"sanitized/{s}"].shown or by_name[f"sanitized/{s}"].program for s in SPLITS},
                "program_sha256": {s: hashlib.sha256(by_name[f"sanitized/{s}"].program.encode("utf-8", "surrogatepass"))
                                   .hexdigest() for s in SPLITS},
                "verdict": verdict, "reason": reason,
                "outcome": {s: ran[f"sanitized/{s}"].record() for s in SPLITS},
                "raw_verdict": raw_verdict, "raw_reason": raw_reason}

    def run_info(self) -> dict[str, Any]:
        info = {**super().run_info(), "data": dict(self.data_info)}
        if self.expected is not None:
            info["expected_outputs"] = self.expected.info()
        info["time_limits"] = {"min_time_limit": self.min_time_limit, "gt_time_limit_factor": self.time_limit_factor,
                               "task_cap_seconds": 60, "sandbox_slack_seconds": self.sandbox.limits.timeout}
        return info
