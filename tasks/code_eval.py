"""What HumanEval, MBPP and MBPP+ share: sampling options, running programs in the sandbox, pass@k.

A code task says how a document becomes a prompt (`prompt`, or MBPP's k-shot `fewshot` parts),
which stop strings end a completion (`stop`) and which programs check a completion (`checks`: by
default one, `program`); this module asks the model for `task.n` completions per document, runs
every program in the sandbox (tasks/scoring/sandbox.py; all documents at once, in parallel:
`score_many`), and reports pass@k with Chen et al.'s unbiased estimator, for each metric the task
names (`passes`: the headline "pass", and e.g. "raw_pass"). Each sample records, per completion,
the program that ran for the reported verdict, its sandbox outcome and the reason it failed
(`record`).

Options (under `task:`):
  n               completions per problem (1 = greedy, the model card's pass@1)
  temperature     sampling temperature; must be > 0 when n > 1 (n greedy answers are identical)
  top_p           nucleus sampling
  k               pass@k values to report (null = 1, 10, 100, those <= n); pass@1 is always reported
  max_new_tokens  generation budget per completion
  sandbox         workers, timeout, memory_mb, cpu_seconds, file_size_mb, disk_mb, open_files,
                  max_processes, output_bytes, user, python (tasks/scoring/sandbox.py's SandboxOptions,
                  confinement.py's Limits)
"""

from __future__ import annotations

import signal
from abc import abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from qwen_eval.errors import UserError
from qwen_eval.requests import Generate, GenerateResult, Response
from qwen_eval.task import Doc, Sample, Task
from qwen_eval.tasks.scoring.confinement import Limits
from qwen_eval.tasks.scoring.metrics import add_metric, mean_stderr, pass_at_k
from qwen_eval.tasks.scoring.sandbox import DEFAULT_USER, Outcome, Sandbox, SandboxOptions

DEFAULT_K = (1, 10, 100)
SANDBOX_LIMITS = ("timeout", "memory_mb", "cpu_seconds", "file_size_mb", "disk_mb", "open_files", "max_processes",
                  "output_bytes")
SANDBOX_OPTIONS = ("workers", "user", "python") + SANDBOX_LIMITS


def _int_option(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"task.{name}={value!r} must be a whole number >= {minimum}")
    return value


def _float_option(name: str, value: Any, low: float, high: float | None = None, low_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise UserError(f"task.{name}={value!r} must be a number {bound}")
    return value


def pass_ks(n: int, k: Any) -> tuple[int, ...]:
    """The k of pass@k to report: the defaults up to n, or the user's list (each <= n)."""
    if k is None:
        return tuple(x for x in DEFAULT_K if x <= n)
    values = [k] if isinstance(k, int) and not isinstance(k, bool) else k
    if not isinstance(values, (list, tuple)) or not values:
        raise UserError(f"task.k={k!r} must be a list of whole numbers, e.g. task.k=[1,10]")
    for x in values:
        _int_option("k", x, 1)
        if x > n:
            raise UserError(f"task.k={list(values)} asks for pass@{x} but task.n={n}; pass@k needs k <= n "
                            f"(raise task.n or drop {x})")
    return tuple(sorted({1, *values}))


def sandbox_from_options(options: Mapping[str, Any]) -> Sandbox:
    unknown = sorted(set(options) - set(SANDBOX_OPTIONS))
    if unknown:
        raise UserError(f"task.sandbox.{unknown[0]} is not a sandbox option; valid: {', '.join(SANDBOX_OPTIONS)}")
    defaults = Limits()
    limits = {}
    for key in SANDBOX_LIMITS:
        value = options.get(key)
        if value is None:
            continue
        if key == "timeout":
            limits[key] = _float_option("sandbox.timeout", value, 0.0, low_open=True)
        else:
            limits[key] = _int_option(f"sandbox.{key}", value, 1)
    workers = options.get("workers")
    if workers is not None:
        workers = _int_option("sandbox.workers", workers, 1)
    user = options.get("user") or DEFAULT_USER
    python = options.get("python")
    return Sandbox(Limits(**{**defaults.__dict__, **limits}), workers=workers, user=str(user),
                   python=str(python) if python else None)


def require_fields(row: Any, fields: Mapping[str, type | tuple[type, ...]], where: str, layout: str) -> None:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object ({layout})")
    for name, kind in fields.items():
        if name not in row:
            raise UserError(f"{where}: missing field {name!r} ({layout})")
        if not isinstance(row[name], kind) or isinstance(row[name], bool):
            raise UserError(f"{where}: field {name!r} has the wrong type ({type(row[name]).__name__}) ({layout})")


@dataclass(frozen=True)
class Check:
    """One program the sandbox runs for a completion."""

    name: str  # what the task calls it: "tests", "sanitized", "raw/plus", ...
    program: str
    timeout: float | None = None  # wall seconds; None: task.sandbox.timeout
    shown: str | None = None  # what samples.jsonl records as the program (None: the program itself)


def run_checks(sandbox: Sandbox, checks: Sequence[Check]) -> list[Outcome]:
    """One Outcome per check, in order; a program that occurs twice (same text and timeout) runs once."""
    jobs = list(dict.fromkeys((c.program, c.timeout) for c in checks))
    if all(timeout is None for _, timeout in jobs):
        outcomes = sandbox.run_many([program for program, _ in jobs])
    else:
        sandbox.plan  # detect once, before the threads start
        by_timeout = {t: Sandbox(replace(sandbox.limits, timeout=t), workers=sandbox.workers, user=sandbox.user,
                                 python=sandbox.python) if t is not None else sandbox
                      for t in {timeout for _, timeout in jobs}}
        with ThreadPoolExecutor(max_workers=sandbox.workers, thread_name_prefix="sandbox") as pool:
            outcomes = list(pool.map(lambda job: by_timeout[job[1]].run(job[0]), jobs))
    done = dict(zip(jobs, outcomes))
    return [done[(c.program, c.timeout)] for c in checks]


def failure_reason(outcome: Outcome) -> str | None:
    """Why a program did not pass, in one line (None when it passed): the timeout, the last line of
    its traceback, or how it ended."""
    if outcome.passed:
        return None
    if outcome.status == "timeout":
        return f"timeout: still running after {outcome.seconds:.1f} s"
    lines = [line.strip() for line in outcome.stderr.splitlines() if line.strip()]
    if lines:
        return lines[-1][:300]
    code = outcome.returncode
    if code is not None and code > 128:
        try:
            return f"killed by {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    if code == 0:
        return "left before the end of the program (exit status 0)"
    return f"exit status {code}"


class CodeTask(Task):
    """Base of HumanEval, MBPP and MBPP+: sampling, sandboxed scoring, pass@k."""

    headline = "pass@1"

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        return {"n": 1, "temperature": 0.0, "top_p": 1.0, "k": None, "max_new_tokens": 512,
                "sandbox": SandboxOptions().as_dict()}

    def __init__(self, options: Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__(options, **kwargs)
        o = self.options
        self.n = _int_option("n", o["n"], 1)
        self.temperature = _float_option("temperature", o["temperature"], 0.0)
        self.top_p = _float_option("top_p", o["top_p"], 0.0, 1.0, low_open=True)
        self.max_new_tokens = _int_option("max_new_tokens", o["max_new_tokens"], 1)
        self.max_length: int | None = None  # context + generated tokens (a task with a `max_length` option sets it)
        if self.n > 1 and self.temperature == 0.0:
            raise UserError(f"task.n={self.n} with task.temperature=0 gives {self.n} identical greedy answers; "
                            f"set task.temperature > 0 (e.g. 0.8) for pass@k sampling, or task.n=1")
        self.ks = pass_ks(self.n, o["k"])
        sandbox = o.get("sandbox") or {}
        if not isinstance(sandbox, Mapping):
            raise UserError(f"task.sandbox={sandbox!r} must be a mapping of sandbox options")
        self.sandbox = sandbox_from_options(sandbox)

    # --- what each benchmark says ---

    stop: tuple[str, ...] = ()
    # the pass@k metrics reported: "pass" (the headline) and any others `passes` names
    metric_stems: tuple[str, ...] = ("pass",)

    @abstractmethod
    def program(self, doc: Doc, completion: str) -> str:
        """The program the sandbox runs for one completion (it must end with the tests)."""

    @abstractmethod
    def target(self, doc: Doc) -> Any:
        """What samples.jsonl records as the target (the reference solution or tests)."""

    def checks(self, doc: Doc, completion: str) -> list[Check]:
        """The programs that check one completion (default: `program`, named "tests")."""
        return [Check("tests", self.program(doc, completion))]

    def passes(self, doc: Doc, ran: Mapping[str, Outcome]) -> dict[str, bool]:
        """Whether one completion counts for each of `metric_stems`, from its checks' outcomes by name."""
        return {"pass": ran["tests"].passed}

    def prediction(self, doc: Doc, ran: Mapping[str, Outcome]) -> str:
        """samples.jsonl's `prediction` for one completion: the reported verdict."""
        return ran["tests"].status

    def record(self, doc: Doc, completion: str, checks: Sequence[Check], ran: Mapping[str, Outcome]) -> dict[str, Any]:
        """What samples.jsonl keeps of one completion: the program that ran, its outcome, the reason."""
        check = checks[0]
        outcome = ran[check.name]
        return {"program": check.shown or check.program, "outcome": outcome.record(),
                "reason": failure_reason(outcome)}

    # --- requests and scoring ---

    def requests(self, doc: Doc) -> list[Generate]:
        return [Generate(self.prompt(doc), stop=self.stop, max_new_tokens=self.max_new_tokens,
                         max_length=self.max_length, temperature=self.temperature, top_p=self.top_p, n=self.n,
                         seed=self.seed)]

    def score(self, doc: Doc, responses: Sequence[Response]) -> Sample:
        return self.score_many([doc], [responses])[0]

    def score_many(self, docs: Sequence[Doc], responses_per_doc: Sequence[Sequence[Response]]) -> list[Sample]:
        """Run every check of every completion of every document in the sandbox, in parallel, then
        score each document."""
        completions: list[list[str]] = []
        for doc, responses in zip(docs, responses_per_doc):
            completions.append(list(self.response(doc, responses, GenerateResult).texts))
        plans = [[self.checks(doc, c) for c in texts] for doc, texts in zip(docs, completions)]
        outcomes = iter(run_checks(self.sandbox, [check for plan in plans for checks in plan for check in checks]))
        samples = []
        for doc, texts, plan in zip(docs, completions, plans):
            ran = [{check.name: next(outcomes) for check in checks} for checks in plan]
            samples.append(self._sample(doc, texts, plan, ran))
        return samples

    def _sample(self, doc: Doc, texts: list[str], plan: list[list[Check]], ran: list[dict[str, Outcome]]) -> Sample:
        n = len(texts)
        passes = [self.passes(doc, r) for r in ran]
        counts = {stem: sum(p[stem] for p in passes) for stem in self.metric_stems}
        records = [self.record(doc, t, checks, r) for t, checks, r in zip(texts, plan, ran)]
        predictions = [self.prediction(doc, r) for r in ran]
        single = n == 1
        extra: dict[str, Any] = {"n": n, "correct": counts["pass"]}
        extra.update({f"correct_{stem}": c for stem, c in counts.items() if stem != "pass"})
        if single:
            extra.update(records[0])
        else:
            extra.update({key: [r[key] for r in records] for key in records[0]} if records else {})
        return Sample(doc_id=doc.doc_id, prompt=self.prompt(doc), target=self.target(doc),
                      response=texts[0] if single else texts,
                      prediction=predictions[0] if single else predictions,
                      score=counts["pass"] / n if n else 0.0, extra=extra)

    def aggregate(self, samples: Sequence[Sample]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for stem in self.metric_stems:
            key = "correct" if stem == "pass" else f"correct_{stem}"
            for k in self.ks:
                values = [pass_at_k(s.extra["n"], s.extra[key], k) for s in samples if s.extra["n"] >= k]
                add_metric(metrics, f"{stem}@{k}", mean_stderr(values))
        return metrics

    def run_info(self) -> dict[str, Any]:
        return {"sandbox": self.sandbox.info()}
