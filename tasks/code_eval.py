"""What HumanEval and MBPP share: sampling options, running programs in the sandbox, pass@k.

A code task says how a document becomes a prompt (`prompt`), which stop strings end a completion
(`stop`) and how a completion becomes a program (`program`); this module asks the model for
`task.n` completions per document, runs every program in qwen_eval.sandbox (all documents at once,
in parallel: `score_many`), and reports pass@k with Chen et al.'s unbiased estimator.

Options (under `task:`):
  n               completions per problem (1 = greedy, the model card's pass@1)
  temperature     sampling temperature; must be > 0 when n > 1 (n greedy answers are identical)
  top_p           nucleus sampling
  k               pass@k values to report (null = 1, 10, 100, those <= n); pass@1 is always reported
  max_new_tokens  generation budget per completion
  sandbox         workers, timeout, memory_mb, cpu_seconds, file_size_mb, disk_mb, open_files,
                  max_processes, output_bytes, user, python (see qwen_eval/sandbox.py)
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Mapping, Sequence

from qwen_eval.errors import UserError
from qwen_eval.metrics import add_metric, mean_stderr, pass_at_k
from qwen_eval.requests import Generate, GenerateResult, Response
from qwen_eval.sandbox import DEFAULT_USER, Limits, Outcome, Sandbox, SandboxOptions
from qwen_eval.task import Doc, Sample, Task

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


class CodeTask(Task):
    """Base of HumanEval and MBPP: sampling, sandboxed scoring, pass@k."""

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

    @abstractmethod
    def prompt(self, doc: Doc) -> str:
        """The text the model continues."""

    @abstractmethod
    def program(self, doc: Doc, completion: str) -> str:
        """The program the sandbox runs for one completion (it must end with the tests)."""

    @abstractmethod
    def target(self, doc: Doc) -> Any:
        """What samples.jsonl records as the target (the reference solution or tests)."""

    # --- requests and scoring ---

    def requests(self, doc: Doc) -> list[Generate]:
        return [Generate(self.prompt(doc), stop=self.stop, max_new_tokens=self.max_new_tokens,
                         temperature=self.temperature, top_p=self.top_p, n=self.n, seed=self.seed)]

    def score(self, doc: Doc, responses: Sequence[Response]) -> Sample:
        return self.score_many([doc], [responses])[0]

    def score_many(self, docs: Sequence[Doc], responses_per_doc: Sequence[Sequence[Response]]) -> list[Sample]:
        """Run every completion of every document in the sandbox, in parallel, then score each."""
        completions: list[list[str]] = []
        for doc, responses in zip(docs, responses_per_doc):
            completions.append(list(self.response(doc, responses, GenerateResult).texts))
        programs = [self.program(doc, c) for doc, texts in zip(docs, completions) for c in texts]
        outcomes = iter(self.sandbox.run_many(programs))
        return [self._sample(doc, texts, [next(outcomes) for _ in texts]) for doc, texts in zip(docs, completions)]

    def _sample(self, doc: Doc, texts: list[str], outcomes: list[Outcome]) -> Sample:
        correct = sum(o.passed for o in outcomes)
        n = len(outcomes)
        single = n == 1
        return Sample(doc_id=doc.doc_id, prompt=self.prompt(doc), target=self.target(doc),
                      response=texts[0] if single else texts,
                      prediction=outcomes[0].status if single else [o.status for o in outcomes],
                      score=correct / n if n else 0.0,
                      extra={"n": n, "correct": correct,
                             "outcome": outcomes[0].record() if single else [o.record() for o in outcomes]})

    def aggregate(self, samples: Sequence[Sample]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for k in self.ks:
            values = [pass_at_k(s.extra["n"], s.extra["correct"], k) for s in samples if s.extra["n"] >= k]
            add_metric(metrics, f"pass@{k}", mean_stderr(values))
        return metrics

    def run_info(self) -> dict[str, Any]:
        return {"sandbox": self.sandbox.info()}
