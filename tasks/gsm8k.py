"""GSM8K (Cobbe et al., 2021): 8-shot chain of thought, accuracy on the 1,319 test problems, as in
the Qwen-14B model card (Qwen's eval/evaluate_gsm8k.py).

Data: `test.jsonl` ({"question", "answer"}; the gold is the number after `#### `, commas removed);
`data.path` is that file or a folder holding it. Hub `openai/gsm8k`, config `main`, split `test`.
doc_id: the 0-based line index in the test file (the row index for the hub).

Prompt (Qwen's `doc_to_text`, byte for byte): the 8-shot text of eval/gsm8k_prompt.txt (shipped as
data/gsm8k/qwen_8shot_prompt.txt; it ends in a newline), then
    "\\nQuestion: " + question + "\\nLet's think step by step\\n"
Greedy, at most 512 new tokens (the `max_new_tokens` of Qwen's generation config, which the script
uses); the completion is cut at the first of `<|endoftext|>`, `\\n\\n\\n`, `\\n\\n`, `Question:` (Qwen's
`decode` splits on each in turn, which is the same cut).

Answer extraction, two rules, both always reported:
  qwen    Qwen's `extract_answer`: the last run of digits (`re.findall(r"\\d+", completion)[-1]`)
          passed to Python's `eval`, compared with `==` to the gold (`eval` of the `#### ` number,
          commas removed). So signs, decimals and thousands separators are lost ("-3" -> 3,
          "1,200" -> 200, "2.50" -> 50), a run with a leading zero ("05") is a SyntaxError and
          counts as no answer, as are non-ASCII digits that `\\d` matches but `eval` rejects.
  strict  the first number after the last "The answer is" (the prompt's closing sentence), else
          the last number anywhere; a number keeps its sign, decimals and thousands separators
          ("-3", "1,200", "$2.50"), and is compared with the gold as an exact rational number.
`task.extract` picks the headline (`acc`); `acc_qwen` and `acc_strict` are both reported.

`task.prompt=qwen_chat` is Qwen's eval/evaluate_chat_gsm8k.py (its default, zero-shot mode): the
question alone in one chat turn, greedy up to the end of turn (512 new tokens), no stop strings;
its qwen score compares the reply's last run of digits with the reference solution's last run of
digits (both through `eval`, as that script's `is_correct` does); strict is as above.
`task.prompt=qwen_chat_fewshot` is the same script's `--use-fewshot` mode: its own four worked
examples (data/gsm8k/qwen_chat_4shot_prompt.txt, each followed by a blank line), then
"Question: " + question + "\nLet's think step by step", all in the one user turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Mapping, Sequence

from qwen_eval.data import jsonl_rows, load_hub_dataset, local_file, sample_dir
from qwen_eval.errors import UserError
from qwen_eval.requests import Generate, GenerateResult, Response
from qwen_eval.task import DataSpec, FewShot, Sample, Task
from qwen_eval.tasks.scoring.metrics import add_metric, mean_stderr

STOP = ("<|endoftext|>", "\n\n\n", "\n\n", "Question:")
EXTRACTORS = ("qwen", "strict")
COT_TRIGGER = "Let's think step by step"  # ends every question line of the prompt
PROMPT_STYLES = ("base", "qwen_chat", "qwen_chat_fewshot")
HUB_ID, HUB_CONFIG = "openai/gsm8k", "main"

# Qwen's ANS_RE for the reference solution.
GOLD_RE = re.compile(r"#### (\-?[0-9\.\,]+)")


@dataclass(frozen=True)
class GSM8KDoc:
    doc_id: str
    question: str
    answer: str  # the reference solution, ending "#### N"
    gold: str  # N with commas removed


def worked_examples(file_name: str) -> tuple[tuple[str, str], ...]:
    """The worked examples of a prompt file in data/gsm8k/, in order, each split into its question
    line(s), ending "Let's think step by step", and its worked answer. The files hold the examples
    separated by blank lines: qwen_8shot_prompt.txt (Qwen's eval/gsm8k_prompt.txt, ending in a
    newline) and qwen_chat_4shot_prompt.txt (the chat script's --use-fewshot examples, each
    followed by a blank line)."""
    text = (sample_dir("gsm8k") / file_name).read_text(encoding="utf-8")
    return tuple((q + "\n" + COT_TRIGGER, a) for q, a in
                 (e.split("\n" + COT_TRIGGER + "\n", 1) for e in text.rstrip("\n").split("\n\n")))


def gold_number(answer: str, origin: str) -> str:
    match = GOLD_RE.search(answer)
    if match is None:
        raise UserError(f"{origin}: the answer has no '#### N' line with the final number; fix or remove the row")
    gold = match.group(1).strip().replace(",", "")
    try:
        Fraction(gold)
    except ValueError:
        raise UserError(f"{origin}: the final number {match.group(1)!r} after '####' is not a number") from None
    return gold


# --- extraction -------------------------------------------------------------------------------------

INVALID = None


def python_int_literal(digits: str) -> int | None:
    """What Qwen's `eval(digits)` gives for a run of `\\d` characters, or None where it raises."""
    if not digits.isascii():
        return None  # `\d` matches e.g. Arabic-Indic digits; Python literals are ASCII only
    if len(digits) > 1 and digits[0] == "0" and digits.strip("0"):
        return None  # "05": leading zeros in decimal integer literals are a SyntaxError
    return int(digits)


def extract_qwen(completion: str) -> int | None:
    runs = re.findall(r"\d+", completion)
    return python_int_literal(runs[-1]) if runs else INVALID


# A number as people write it: optional minus (ASCII or U+2212), optional $, digits with or without
# thousands separators, optional decimals. Not preceded by a letter, digit or point, so "x2", the
# "5" of "3.5" and the "-" of "10-3" are not numbers of their own.
NUMBER_RE = re.compile(r"(?<![\w.])([-\u2212])?\$?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?")
ANSWER_IS_RE = re.compile(r"the answer is", re.IGNORECASE)


def _number_value(match: re.Match) -> Fraction:
    sign, whole, decimals = match.groups()
    value = Fraction(whole.replace(",", "") + (decimals or ""))
    return -value if sign else value


def extract_strict(completion: str) -> Fraction | None:
    said = list(ANSWER_IS_RE.finditer(completion))
    if said:
        first = NUMBER_RE.search(completion, said[-1].end())
        if first is not None:
            return _number_value(first)
    numbers = list(NUMBER_RE.finditer(completion))
    return _number_value(numbers[-1]) if numbers else INVALID


def format_number(value: Fraction | int | None) -> str | None:
    if value is None:
        return None
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.10f}".rstrip("0")
    return text


class GSM8K(Task):
    name = "gsm8k"
    default_shots = 8
    max_shots = 8
    headline = "acc"
    model_card_column = "GSM8K"
    version = "1"

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        return {"extract": "qwen", "max_new_tokens": 512, "prompt": "base"}

    def __init__(self, options: Mapping[str, Any] | None = None, **kwargs: Any):
        super().__init__(options, **kwargs)
        if self.options["extract"] not in EXTRACTORS:
            raise UserError(f"task.extract={self.options['extract']!r} is not an extractor; valid: {', '.join(EXTRACTORS)}")
        self.max_new_tokens = int(self.options["max_new_tokens"])
        self.prompt_style = self.options["prompt"]
        if self.prompt_style not in PROMPT_STYLES:
            raise UserError(f"task.prompt={self.prompt_style!r} is not a prompt style; valid: {', '.join(PROMPT_STYLES)}")
        if self.prompt_style == "qwen_chat":
            self.shots = 0  # the chat protocol asks the question alone
        elif self.prompt_style == "qwen_chat_fewshot":
            self.shots = 4  # the script's own four examples, whatever shots says
        # base: the first k of Qwen's eight examples (shots=8 is its file byte for byte)
        self.shot_pairs = (worked_examples("qwen_8shot_prompt.txt")[:self.shots] if self.prompt_style == "base"
                           else worked_examples("qwen_chat_4shot_prompt.txt") if self.prompt_style == "qwen_chat_fewshot"
                           else ())

    # --- data ---

    def load(self, data: DataSpec, limit: int | None = None) -> list[GSM8KDoc]:
        rows, origin = self.read_source(data)
        docs = []
        for i, row in enumerate(rows[:limit] if limit else rows):
            where = f"{origin}: row {i}"
            if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
                raise UserError(f"{where}: expected string fields \"question\" and \"answer\" (the GSM8K layout)")
            docs.append(GSM8KDoc(str(i), row["question"], row["answer"], gold_number(row["answer"], where)))
        return docs

    def read_hub(self) -> tuple[list, str]:
        return load_hub_dataset(self.name, HUB_ID, HUB_CONFIG, "test"), f"hub {HUB_ID}/{HUB_CONFIG} test"

    def read_sample(self) -> tuple[list, str]:
        return jsonl_rows(sample_dir(self.name) / "test.jsonl")

    def read_local(self, path: str | None) -> tuple[list, str]:
        return jsonl_rows(local_file(path, self.name, "test.jsonl", "GSM8K test file (test.jsonl)"))

    # --- prompt ---

    @property
    def uses_chat(self) -> bool:
        return self.prompt_style != "base"

    def fewshot(self, doc: GSM8KDoc) -> FewShot | None:
        """Base: Qwen's `doc_to_text`, the examples then "Question: ...\\nLet's think step by step\\n".
        qwen_chat_fewshot: the chat script's one user turn, the same question line without the
        final newline. qwen_chat asks the question alone (no k-shot prompt)."""
        if self.prompt_style == "qwen_chat":
            return None
        question = "Question: " + doc.question + "\n" + COT_TRIGGER
        return FewShot("", self.shot_pairs, question + "\n" if self.prompt_style == "base" else question,
                       target_delimiter="\n")

    def prompt(self, doc: GSM8KDoc) -> str:
        return doc.question if self.prompt_style == "qwen_chat" else super().prompt(doc)

    def requests(self, doc: GSM8KDoc) -> list[Generate]:
        if self.prompt_style != "base":
            return [Generate("", messages=(("user", self.prompt(doc)),), max_new_tokens=self.max_new_tokens)]
        return [Generate(self.prompt(doc), stop=STOP, max_new_tokens=self.max_new_tokens, temperature=0.0)]

    # --- scoring ---

    def score(self, doc: GSM8KDoc, responses: Sequence[Response]) -> Sample:
        completion = self.response(doc, responses, GenerateResult).texts[0]
        gold = Fraction(doc.gold)
        qwen, strict = extract_qwen(completion), extract_strict(completion)
        qwen_gold = gold if self.prompt_style == "base" else extract_qwen(doc.answer)
        scores = {"qwen": float(qwen is not None and qwen == qwen_gold),
                  "strict": float(strict is not None and strict == gold)}
        predictions = {"qwen": format_number(qwen), "strict": format_number(strict)}
        headline = self.options["extract"]
        return Sample(doc_id=doc.doc_id, prompt=self.prompt(doc), target=doc.gold, response=completion,
                      prediction=predictions[headline], score=scores[headline],
                      extra={"prediction_qwen": predictions["qwen"], "prediction_strict": predictions["strict"],
                             "score_qwen": scores["qwen"], "score_strict": scores["strict"]})

    def aggregate(self, samples: Sequence[Sample]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        add_metric(metrics, "acc", mean_stderr([s.score for s in samples]))
        for extractor in EXTRACTORS:
            add_metric(metrics, f"acc_{extractor}", mean_stderr([s.extra[f"score_{extractor}"] for s in samples]))
        return metrics
