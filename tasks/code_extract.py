"""Code out of a chat reply: what a model wrote between the prose.

    extract_code(reply)                   # the program the reply offers
    extract_code(reply, entry_point="f")  # prefer the block that defines f

Rules, in order:
  1. Fenced blocks (``` with or without a language tag; an unclosed last fence runs to the end).
     Python-tagged or untagged blocks only; among them the first that defines `entry_point`, else
     the longest.
  2. No fence: the longest run of code-like lines (a line that parses as the start of Python, or an
     indented or blank line inside such a run), which skips the prose before and after.
  3. Nothing code-like: the reply as it is.
Tabs become four spaces (as evalplus does). The result still runs only in the sandbox.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[ \t]*$", re.MULTILINE)
_CODE_START = re.compile(r"^(?:def |class |async def |import |from \S+ import |@|if |for |while |with |try:|return\b|"
                         r"[A-Za-z_][\w.]*\s*(?:=|\(|\[|\+=|-=)|#)")
PYTHON_TAGS = ("", "python", "py", "python3")


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, body) of each fenced block, in order."""
    marks = list(_FENCE.finditer(text))
    blocks, i = [], 0
    while i < len(marks):
        start = marks[i]
        end = marks[i + 1] if i + 1 < len(marks) else None
        body = text[start.end() + 1: end.start() if end else len(text)]
        blocks.append((start.group(1).lower(), body.rstrip("\n") if end else body.rstrip()))
        i += 2
    return blocks


def _code_like(line: str) -> bool:
    return bool(_CODE_START.match(line))


def longest_code_run(text: str) -> str:
    """The longest stretch of lines that starts with a code-like line and continues with
    code-like, indented or blank lines."""
    best: list[str] = []
    run: list[str] = []
    for line in text.splitlines():
        if run and (not line.strip() or line[:1] in (" ", "\t") or _code_like(line)):
            run.append(line)
        elif _code_like(line):
            run = [line]
        else:
            run = []
        if len("\n".join(run).strip()) > len("\n".join(best).strip()):
            best = list(run)
    return "\n".join(best).strip("\n")


def extract_code(reply: str, entry_point: str | None = None) -> str:
    blocks = [body for tag, body in fenced_blocks(reply) if tag in PYTHON_TAGS]
    if blocks:
        if entry_point:
            defining = re.compile(rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE)
            for body in blocks:
                if defining.search(body):
                    return body.replace("\t", "    ")
        return max(blocks, key=len).replace("\t", "    ")
    run = longest_code_run(reply)
    return (run or reply).replace("\t", "    ")
