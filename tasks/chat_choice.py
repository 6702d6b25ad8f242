"""Qwen's chat protocol for four-choice benchmarks (eval/evaluate_chat_mmlu.py and
eval/evaluate_chat_ceval.py in QwenLM/Qwen): the question is asked in one chat turn, zero-shot,
the model answers freely (greedy, up to its end of turn), and the letter is read from the reply.

Questions:
  MMLU    "The following is a multiple-choice question. Please choose the most suitable one among
          A, B, C and D as the answer to this question.\\n\\n" + question + "\\n" + "A. ...\\n" x 4
  C-Eval  question + "\\n\\n" + "A. ...\\n" x 4
Reading the letter (each step only when the ones before found nothing):
  1. the reply is rewritten first: each choice's text (longest first; MMLU: case-insensitively,
     without its final "."; C-Eval: without its final "。") becomes its letter; C-Eval also
     replaces the question's last clause before its blank ("____") by "答案是" and drops what follows;
  2. a letter after "answer is / choice is / choose" (C-Eval: 答案是, 选项为, 选 ...) unless negated;
  3. a letter followed by "is correct / right" (C-Eval: 正确, 对, 符合), unless negated;
  4. a reply that starts with the letter;
  5. the first free-standing A-D;
  6. the choice whose text is most like the reply (fuzzy WRatio, as thefuzz's extractOne).
"""

from __future__ import annotations

import re
from typing import Sequence

LETTERS = ("A", "B", "C", "D")
MMLU_INSTRUCTION = ("The following is a multiple-choice question. Please choose the most suitable one among A, B, C "
                    "and D as the answer to this question.\n\n")
MAX_NEW_TOKENS = 512  # Qwen-Chat's generation_config

_EN_ANSWER_IS = re.compile(r"(?:(?:[Cc]hoose)|(?:(?:[Aa]nswer|[Cc]hoice)(?![^ABCD]{0,20}?(?:n't|not))"
                           r"[^ABCD]{0,10}?\b(?:|is|:|be))\b)[^ABCD]{0,20}?\b(A|B|C|D)\b")
_EN_IS_CORRECT = re.compile(r"\b(A|B|C|D)\b(?![^ABCD]{0,8}?(?:n't|not)[^ABCD]{0,5}?(?:correct|right))"
                            r"[^ABCD]{0,10}?\b(?:correct|right)\b")
_ZH_ANSWER_IS = re.compile(r"(?:(?:选|选择|选定)|(?:(?:答案|选项)(?![^ABCD]{0,10}?(?:不|非)[^ABCD]{0,10}?"
                           r"(?:是|为|：|:|】))[^ABCD]{0,10}?(?:是|为|：|:|】))[^ABCD]{0,10}?)(A|B|C|D)(?:选项)?"
                           r"(?:\)|。|\.|，|,|．|、|A|B|C|D|$)")
_ZH_IS_CORRECT = re.compile(r"(A|B|C|D)(?:选?项)?(?![^ABCD]{0,4}?(?:不|非)[^ABCD]{0,4}?(?:正确|对|符合))"
                            r"[^ABCD]{0,4}?(?:正确|对|符合)")
_EN_LEADING = re.compile(r"^(A|B|C|D)(?:\.|,|:|$)")
_ZH_LEADING = re.compile(r"^(A|B|C|D)(?:。|\.|，|,|．|$)")
_FIRST_LETTER = re.compile(r"(?<![a-zA-Z])(A|B|C|D)(?![a-zA-Z=])")


def mmlu_question(text: str, choices: Sequence[str]) -> str:
    return MMLU_INSTRUCTION + text + "\n" + "".join(f"{l}. {c}\n" for l, c in zip(LETTERS, choices))


def ceval_question(text: str, choices: Sequence[str]) -> str:
    return text + "\n\n" + "".join(f"{l}. {c}\n" for l, c in zip(LETTERS, choices))


def closest_choice(reply: str, choices: Sequence[str]) -> str:
    """Step 6: the letter of the choice most like the reply (WRatio on normalised text, first of equals)."""
    from rapidfuzz import fuzz, process, utils

    best = process.extractOne(reply, list(choices), scorer=fuzz.WRatio, processor=utils.default_process)
    return LETTERS[best[2]] if best is not None else LETTERS[0]


def _first_match(text: str, patterns: Sequence[re.Pattern]) -> str | None:
    for pattern in patterns:
        found = pattern.search(text)
        if found:
            return found.group(1)
    return None


def mmlu_letter(reply: str, choices: Sequence[str]) -> str:
    gen = reply
    for letter, text in sorted(zip(LETTERS, choices), key=lambda lc: len(lc[1]), reverse=True):
        gen = re.sub(re.escape(text.rstrip(".")), letter, gen, flags=re.IGNORECASE)
    found = _first_match(gen, (_EN_ANSWER_IS, _EN_IS_CORRECT, _EN_LEADING, _FIRST_LETTER))
    return found or closest_choice(gen, choices)


def ceval_letter(reply: str, question: str, choices: Sequence[str]) -> str:
    gen = reply
    clauses = question.rstrip("。").split("。")[-1].split("_")
    if len(clauses[0].strip()) > 4:
        gen = gen.replace(clauses[0], "答案是")
    if len(clauses[-1].strip()) > 4:
        gen = gen.replace(clauses[-1], "")
    for letter, text in sorted(zip(LETTERS, choices), key=lambda lc: len(lc[1]), reverse=True):
        gen = gen.replace(text.rstrip("。"), letter)
    found = _first_match(gen, (_ZH_ANSWER_IS, _ZH_IS_CORRECT, _ZH_LEADING, _FIRST_LETTER))
    return found or closest_choice(gen, choices)
