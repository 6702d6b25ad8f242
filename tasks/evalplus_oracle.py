"""EvalPlus's differential testing for MBPP+, on the harness side: the canonical solutions' outputs
(computed in the sandbox once per data file, cached on disk), the time limits EvalPlus derives from
them, the program that checks one solution on one split, and how to read its verdict.

    oracles, failures = expected_outputs(problems, data_sha256, sandbox, cache_dir)
    check = check_program(problem, "plus", solution, oracles[task_id]["plus"], ...)   # a code_eval.Check
    status = evalplus_status(outcome)        # "pass" | "fail" | "timeout", as EvalPlus labels them

What runs in the sandbox is tasks/evalplus_check.py followed by one call; the expected outputs travel
as base64 zlib pickles that only the sandboxed program decodes. Time limits (evalplus/evaluate.py and
eval/__init__.py): each input may take max(min_time_limit, factor * the canonical solution's time)
seconds of wall clock (1.0 and 4.0 by default), and EvalPlus kills the whole process at
min(60, sum of the limits) + 2 seconds; the sandbox's own wall limit is that plus `slack` (the
interpreter's start, numpy, decoding the expected outputs), after which the program counts as timed out.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from qwen_eval.tasks.scoring.sandbox import Outcome, Sandbox
from qwen_eval.tasks.code_eval import Check, run_checks

CHECKER_FILE = Path(__file__).with_name("evalplus_check.py")
CHECKER = CHECKER_FILE.read_text(encoding="utf-8")
CHECKER_SHA256 = hashlib.sha256(CHECKER.encode("utf-8")).hexdigest()
OUTPUT_MARK = "EVALPLUS-EXPECTED-OUTPUTS "  # as tasks/evalplus_check.py writes them
REASON_MARK = "EVALPLUS-FAILED-INPUT "
CACHE_FORMAT = "1"  # bump when what expected_outputs() records changes

MIN_TIME_LIMIT = 1.0  # evalplus.config.DEFAULT_MIN_TIME_LIMIT
TIME_LIMIT_FACTOR = 4.0  # evalplus.config.DEFAULT_GT_TIME_LIMIT_FACTOR
TASK_TIME_CAP = 60.0  # EVALPLUS_TIMEOUT_PER_TASK's default
CANONICAL_TIMEOUT = 600.0  # wall seconds for one task's canonical solution on all its inputs
CANONICAL_OUTPUT_BYTES = 1 << 30  # its outputs come back on stdout (Mbpp/255's plus outputs: ~10 MB)
CANONICAL_MEMORY_MB = 16384  # address space: Mbpp/255 holds ~1.5 GB of outputs while it pickles them
SPLITS = ("base", "plus")


@dataclass(frozen=True)
class Problem:
    """What the oracle needs of one MBPP+ task; `inputs` are the call arguments per split, as
    EvalPlus's mbpp_deserialize_inputs builds them."""

    task_id: str
    entry_point: str
    code: str  # prompt + canonical_solution, as EvalPlus executes it
    inputs: Mapping[str, Sequence[Any]]
    atol: float
    output_not_none: bool = False


@dataclass(frozen=True)
class SplitOracle:
    """The canonical solution on one split: seconds per input, and each output (base64 zlib pickle)."""

    times: tuple[float, ...]
    expected: tuple[str, ...]


# --- Python literals for the program text ---------------------------------------------------------

def py_literal(value: Any) -> str:
    """Python source for a call argument, which the sandboxed program evaluates. NaN and the
    infinities are the checker's NAN, INF and NEG_INF (one object each, as json.loads gives them)."""
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return repr(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NAN"
        if math.isinf(value):
            return "INF" if value > 0 else "NEG_INF"
        return repr(value)
    if isinstance(value, complex):
        return f"complex({py_literal(value.real)}, {py_literal(value.imag)})"
    if isinstance(value, list):
        return "[" + ", ".join(py_literal(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(py_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, (set, frozenset)):
        items = "{" + ", ".join(py_literal(v) for v in value) + "}" if value else "set()"
        return f"frozenset({items})" if isinstance(value, frozenset) else items
    if isinstance(value, dict):
        return "{" + ", ".join(f"{py_literal(k)}: {py_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no literal for a {type(value).__name__}")


# --- the canonical solutions' outputs ---------------------------------------------------------------

def canonical_program(problem: Problem) -> str:
    splits = "{" + ", ".join(f"{s!r}: {py_literal(list(problem.inputs[s]))}" for s in SPLITS) + "}"
    return (f"{CHECKER}\n\nexpected_outputs(\n    code={problem.code!r},\n    entry_point={problem.entry_point!r},\n"
            f"    splits={splits},\n    output_not_none={problem.output_not_none!r},\n)\n")


def _parse_canonical(outcome: Outcome) -> tuple[dict[str, SplitOracle], str | None] | str:
    """The oracles of one task from its canonical program's stdout and the sandbox's numpy version,
    or why there are none."""
    if not outcome.passed:
        lines = [line for line in outcome.stderr.splitlines() if line.strip()]
        why = "timed out" if outcome.status == "timeout" else (lines[-1].strip() if lines else f"exit {outcome.returncode}")
        return f"the canonical solution failed in the sandbox: {why}"
    payload = next((line[len(OUTPUT_MARK):] for line in outcome.stdout.splitlines() if line.startswith(OUTPUT_MARK)),
                   None)
    if payload is None:
        return "the canonical solution's program wrote no outputs"
    data = json.loads(payload)
    oracles = {split: SplitOracle(tuple(data[split]["times"]), tuple(data[split]["expected"])) for split in SPLITS}
    return oracles, data.get("numpy")


def cache_file(cache_dir: Path, data_sha256: str, python_version: str) -> Path:
    return cache_dir / "mbppplus" / f"expected-outputs-{data_sha256}-py{python_version}-v{CACHE_FORMAT}.json"


def _read_cache(path: Path, data_sha256: str) -> tuple[dict[str, dict[str, SplitOracle]], str | None]:
    """The cached oracles by task, and the sandbox's numpy version when they were computed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}, None
    if data.get("data_sha256") != data_sha256 or data.get("format") != CACHE_FORMAT:
        return {}, None
    oracles = {task_id: {s: SplitOracle(tuple(v[s]["times"]), tuple(v[s]["expected"])) for s in SPLITS}
               for task_id, v in data.get("tasks", {}).items()}
    return oracles, data.get("numpy")


def _write_cache(path: Path, data_sha256: str, python_version: str, numpy_version: str | None,
                 oracles: Mapping[str, Mapping[str, SplitOracle]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tasks = {task_id: {s: {"times": list(o.times), "expected": list(o.expected)} for s, o in splits.items()}
             for task_id, splits in sorted(oracles.items())}
    payload = {"format": CACHE_FORMAT, "data_sha256": data_sha256, "python": python_version, "numpy": numpy_version,
               "tasks": tasks}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload), encoding="utf-8")
    tmp.replace(path)  # atomic: a run reading it meanwhile sees the old or the new file


@dataclass
class ExpectedOutputs:
    """The oracles of the tasks asked for, where they came from, and the tasks whose canonical
    solution failed (their solutions fail too, with that reason)."""

    oracles: dict[str, dict[str, SplitOracle]]
    failures: dict[str, str]
    cache: Path
    computed: int  # tasks computed in this run (the others came from the cache)
    seconds: float
    numpy: str | None  # the sandbox's numpy (None: the checker's own allclose compares floats)

    def info(self) -> dict[str, Any]:
        return {"cache": str(self.cache), "computed": self.computed, "from_cache": len(self.oracles) - self.computed,
                "seconds": round(self.seconds, 1), "failed": dict(self.failures), "sandbox_numpy": self.numpy}


def expected_outputs(problems: Sequence[Problem], data_sha256: str, sandbox: Sandbox, cache_dir: Path) -> ExpectedOutputs:
    """The canonical solution's outputs and times on every input of `problems`, from the cache
    when it has them, else computed in the sandbox (one program per task) and added to it."""
    started = time.monotonic()
    python_version = sandbox.plan.python_version
    path = cache_file(cache_dir, data_sha256, python_version)
    cached, numpy_version = _read_cache(path, data_sha256)
    missing = [p for p in problems if p.task_id not in cached]
    failures: dict[str, str] = {}
    if missing:
        runner = Sandbox(replace(sandbox.limits, timeout=CANONICAL_TIMEOUT, output_bytes=CANONICAL_OUTPUT_BYTES,
                                 memory_mb=max(sandbox.limits.memory_mb, CANONICAL_MEMORY_MB)),
                         workers=sandbox.workers, user=sandbox.user, python=sandbox.python)
        outcomes = run_checks(runner, [Check(p.task_id, canonical_program(p)) for p in missing])
        for problem, outcome in zip(missing, outcomes):
            parsed = _parse_canonical(outcome)
            if isinstance(parsed, str):
                failures[problem.task_id] = parsed
            else:
                cached[problem.task_id], numpy_version = parsed
        if len(missing) > len(failures):
            _write_cache(path, data_sha256, python_version, numpy_version, cached)
    wanted = {p.task_id for p in problems}
    oracles = {task_id: o for task_id, o in cached.items() if task_id in wanted}
    return ExpectedOutputs(oracles, failures, path, len(missing) - len(failures), time.monotonic() - started,
                           numpy_version)


# --- checking one solution ----------------------------------------------------------------------------

def time_limits(times: Sequence[float], min_time_limit: float = MIN_TIME_LIMIT,
                factor: float = TIME_LIMIT_FACTOR) -> list[float]:
    """EvalPlus's per-input wall-clock limits."""
    return [max(min_time_limit, factor * t) for t in times]


def kill_after(limits: Sequence[float]) -> float:
    """When EvalPlus kills the checking process: min(60, sum of the limits) + 1, joined 1 s later."""
    return min(TASK_TIME_CAP, sum(limits)) + 2


def check_program(problem: Problem, split: str, solution: str, oracle: SplitOracle, *, name: str,
                  memory_bytes: int, slack: float, min_time_limit: float = MIN_TIME_LIMIT,
                  factor: float = TIME_LIMIT_FACTOR) -> Check:
    """The program that checks `solution` on one split; `shown` is its text with the checker and
    the expected outputs left out (samples.jsonl records that, with the full text's sha256)."""
    limits = time_limits(oracle.times, min_time_limit, factor)
    deadline = kill_after(limits)
    expected = "[" + ", ".join(repr(blob) for blob in oracle.expected) + "]"
    call = ("check(\n    solution={solution},\n    entry_point={entry!r},\n    inputs={inputs},\n"
            "    expected={expected},\n    time_limits={limits!r},\n    atol={atol!r},\n    deadline={deadline!r},\n"
            "    memory_bytes={memory},\n)\n")
    fields = dict(solution=repr(solution), entry=problem.entry_point, inputs=py_literal(list(problem.inputs[split])),
                  limits=limits, atol=problem.atol, deadline=deadline, memory=memory_bytes)
    program = f"{CHECKER}\n\n" + call.format(expected=expected, **fields)
    digest = hashlib.sha256(program.encode("utf-8", "surrogatepass")).hexdigest()
    blobs = hashlib.sha256(expected.encode("ascii")).hexdigest()
    shown = (f"# [tasks/evalplus_check.py, sha256 {CHECKER_SHA256[:16]}, stood here; the whole program's sha256 is "
             f"{digest}]\n\n" + call.format(expected=f"EXPECTED_OUTPUTS_{len(oracle.expected)}_{blobs[:16]}", **fields)
             + f"# EXPECTED_OUTPUTS_{len(oracle.expected)}_{blobs[:16]}: the canonical solution's {len(oracle.expected)} "
               f"outputs ({split}), base64 zlib pickles from the expected-output cache\n")
    return Check(name, program, timeout=deadline + slack, shown=shown)


def failure_check(name: str, why: str) -> Check:
    """A program that fails at once, saying why (a task without expected outputs)."""
    line = REASON_MARK + json.dumps({"input": None, "reason": why})
    return Check(name, f"import sys\nsys.stderr.write({line!r} + '\\n')\nraise SystemExit(1)\n")


# --- reading the verdict ------------------------------------------------------------------------------

_WATCHDOG = re.compile(r"^Timeout \(\d+:\d\d:\d\d(\.\d+)?\)!$", re.MULTILINE)


def _reason_record(outcome: Outcome) -> dict[str, Any] | None:
    found = None
    for line in outcome.stderr.splitlines():
        if line.startswith(REASON_MARK):
            try:
                found = json.loads(line[len(REASON_MARK):])
            except ValueError:
                continue
    return found if isinstance(found, dict) else None


def evalplus_status(outcome: Outcome) -> str:
    """EvalPlus's label: "pass" when the program ran to its end (the sandbox's token), "fail" when
    the check raised (it reported the input), else "timeout" (killed, crashed or left early)."""
    if outcome.passed:
        return "pass"
    return "fail" if _reason_record(outcome) is not None and outcome.status != "timeout" else "timeout"


def evalplus_reason(outcome: Outcome, n_inputs: int | None = None) -> str | None:
    """Which input failed first and how, in one line (None when the program passed)."""
    if outcome.passed:
        return None
    record = _reason_record(outcome) if outcome.status != "timeout" else None
    if record is not None:
        where = record.get("input")
        head = "" if where is None else f"input {where}" + (f" of {n_inputs}" if n_inputs is not None else "") + ": "
        return head + str(record.get("reason", ""))
    if outcome.status == "timeout":
        return f"timeout: still running after {outcome.seconds:.1f} s (the sandbox's wall limit)"
    if _WATCHDOG.search(outcome.stderr):
        return "timeout: EvalPlus's time for the whole split ran out"
    lines = [line.strip() for line in outcome.stderr.splitlines() if line.strip()]
    return "ended without a verdict: " + (lines[-1][:300] if lines else f"exit status {outcome.returncode}")
