"""Grading MATH answers: Minerva's answer extraction and normalisation, and a time-bounded check
of mathematical equivalence.

Extraction (docs/protocols.md, MATH): the text after the last `The final answer is` up to `. I hope it is
correct.` (Minerva's closing sentence), else the content of the last `\\boxed{}`. The gold answer is the
content of the last `\\boxed{}` of the reference solution.

`normalize_final_answer` follows appendix D of Lewkowycz et al. (2022), "Solving Quantitative
Reasoning Problems with Language Models" (Minerva), step by step, including its quirks: every
"a " and "an " is deleted (so `\\text{a }` loses its content), `\\text{\\ns}` really is a newline,
and only the part after the last `=` is kept.

`EquivalenceChecker` asks `math_verify` whether two answers are the same mathematical object,
in a worker process with a wall-clock bound per comparison. sympy can spend minutes, or forever,
on an answer like `10^{10^{10}}` inside C code that no signal interrupts, and signal.alarm only
works on a main thread; a separate process that is killed when time is up works everywhere.
A comparison that runs out of time counts as not equivalent and is reported as timed out.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import weakref
from dataclasses import dataclass

# --- extraction ----------------------------------------------------------------------------------

FINAL_ANSWER = "The final answer is"
CLOSING = "I hope it is correct"


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, braces balanced.

    `\\boxed 5` (a space, no braces) is the content up to the next `$`, as in the MATH solutions
    that write it that way. None when there is no complete box.
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    if text.startswith("\\boxed ", start):
        return text[start + len("\\boxed "):].split("$")[0].strip()
    open_brace = text.find("{", start)
    if open_brace < 0 or text[start:open_brace] not in ("\\boxed", "\\fbox"):
        return None
    depth = 0
    for i in range(open_brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace + 1:i]
    return None


def extract_answer(completion: str) -> str | None:
    """The model's final answer: Minerva's sentence first, else the last box; None if neither."""
    at = completion.rfind(FINAL_ANSWER)
    if at >= 0:
        # The last such sentence: a solution may say "the final answer is positive, because..."
        # on its way. It ends at Minerva's closing words, or at the end of its line without them.
        answer = completion[at + len(FINAL_ANSWER):]
        closing = answer.find(CLOSING)
        answer = answer[:closing] if closing >= 0 else answer.split("\n")[0]
        answer = answer.strip()
        if answer.endswith("."):
            answer = answer[:-1].rstrip()
        if answer:
            return answer
    return last_boxed(completion)


def gold_answer(solution: str) -> str | None:
    """The reference answer: the last box of the reference solution."""
    return last_boxed(solution)


# --- Minerva normalisation (Lewkowycz et al. 2022, appendix D) -------------------------------------

SUBSTITUTIONS: tuple[tuple[str, str], ...] = (
    ("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
    (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"),
)

REMOVED_EXPRESSIONS: tuple[str, ...] = (
    "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units", "\\ldots",
    "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters",
    "meals", "edges", "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}",
    "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", "\\mathrm{th}", "^\\circ",
    "^{\\circ}", "\\;", ",\\!", "{,}", '"', "\\dots",
)


def normalize_final_answer(answer: str) -> str:
    """Minerva's canonical form of a final answer, for string comparison."""
    answer = answer.split("=")[-1]
    for old, new in SUBSTITUTIONS:
        answer = answer.replace(old, new)
    for expression in REMOVED_EXPRESSIONS:
        answer = answer.replace(expression, "")
    # Keep what is inside math mode, bold, a box, an overline, \text.
    answer = re.sub(r"(.*?)\$(.*?)\$(.*)", r"$\2$", answer)
    answer = re.sub(r"\\text\{(.*?)\}", r"\1", answer)
    answer = re.sub(r"\\textbf\{(.*?)\}", r"\1", answer)
    answer = re.sub(r"\\overline\{(.*?)\}", r"\1", answer)
    answer = re.sub(r"\\boxed\{(.*)\}", r"\1", answer)
    # Shorthand TeX: \fracab -> \frac{a}{b}, \sqrta -> \sqrt{a}.
    answer = re.sub(r"frac([^{])(.)", r"frac{\1}{\2}", answer)
    answer = re.sub(r"sqrt([^{])", r"sqrt{\1}", answer)
    answer = answer.replace("$", "")
    # 100,000 -> 100000
    if answer.replace(",", "").isdigit():
        answer = answer.replace(",", "")
    return answer


# --- mathematical equivalence ------------------------------------------------------------------------


def math_verify_equivalent(prediction: str, gold: str) -> bool:
    """Whether math_verify parses both answers to the same object (no time bound: run it in the worker)."""
    from math_verify import parse, verify

    def parsed(answer: str):
        body = answer.strip().strip("$").strip()
        return parse(f"${body}$", parsing_timeout=None) if body else []

    gold_parsed, prediction_parsed = parsed(gold), parsed(prediction)
    if not gold_parsed or not prediction_parsed:
        return False
    return bool(verify(gold_parsed, prediction_parsed, timeout_seconds=None))


@dataclass(frozen=True)
class Verdict:
    equivalent: bool
    timed_out: bool = False
    error: str | None = None  # the worker failed (crashed, or could not start)


class EquivalenceChecker:
    """`checker(prediction, gold) -> Verdict`, each comparison bounded by `timeout` seconds.

    One worker process (`python -m qwen_eval.tasks.math_grading`) answers comparisons one at a
    time over a pipe; it starts on first use, is killed and replaced when a comparison runs out
    of time, and is stopped when the checker is closed or garbage collected. Verdicts are
    memoised, so a repeated (prediction, gold) pair costs nothing.
    """

    def __init__(self, timeout: float = 5.0, startup_timeout: float = 120.0):
        self.timeout = float(timeout)
        self.startup_timeout = float(startup_timeout)
        self._proc: subprocess.Popen | None = None
        self._buffer = b""
        self._memo: dict[tuple[str, str], Verdict] = {}
        self._finalizer = None

    def __call__(self, prediction: str, gold: str) -> Verdict:
        key = (prediction, gold)
        if key not in self._memo:
            self._memo[key] = self._ask(prediction, gold)
        return self._memo[key]

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._proc, self._finalizer, self._buffer = None, None, b""

    def _start(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "qwen_eval.tasks.math_grading"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._finalizer = weakref.finalize(self, _stop, self._proc)
        self._buffer = b""
        if self._read_line(self.startup_timeout) != b"ready":
            self.close()
            raise RuntimeError("the math_verify worker did not start")

    def _ask(self, prediction: str, gold: str) -> Verdict:
        try:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            self._proc.stdin.write(json.dumps([prediction, gold]).encode() + b"\n")
            self._proc.stdin.flush()
            line = self._read_line(self.timeout)
        except (OSError, RuntimeError) as e:
            self.close()
            return Verdict(False, error=str(e) or type(e).__name__)
        if line is None:  # out of time: the worker may be stuck in C code, so it goes
            self.close()
            return Verdict(False, timed_out=True)
        reply = json.loads(line)
        return Verdict(bool(reply.get("equivalent")), error=reply.get("error"))

    def _read_line(self, timeout: float) -> bytes | None:
        """One line from the worker, or None when `timeout` seconds pass first."""
        import time

        deadline = time.monotonic() + timeout
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError("the math_verify worker exited")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


def _worker() -> None:
    """The worker's loop: one JSON [prediction, gold] per line in, one JSON verdict per line out."""
    import logging

    logging.disable(logging.WARNING)  # math_verify warns that its own timeouts are off: ours apply
    import math_verify  # noqa: F401  (imported before saying ready, so the first bound is fair)

    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        prediction, gold = json.loads(line)
        try:
            reply = {"equivalent": math_verify_equivalent(prediction, gold)}
        except Exception as e:  # a parser failure on odd LaTeX means "not shown equivalent"
            reply = {"equivalent": False, "error": f"{type(e).__name__}: {e}"[:200]}
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()


if __name__ == "__main__":
    _worker()
