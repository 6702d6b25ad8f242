"""arXiv perplexity from 1K to 32K tokens: the long-context table of the Qwen-14B model card.

The model card reports, for Qwen-7B and Qwen-14B, the perplexity of arXiv papers at context
lengths 1024 ... 32768 with the long-context switches added one at a time: base,
+ dynamic_ntk, + dynamic_ntk + logn, + dynamic_ntk + logn + window_attn. No other harness
reproduces it (vLLM's Qwen-1 has no NTK or LogN; lm-eval and OpenCompass have no such task).

Data: long documents, plain text or LaTeX.
  * `data.path=DIR`: every `.txt`, `.tex`, `.md` and `.adoc` file under DIR (recursively) is one
    document, doc_id = its path relative to DIR; every `.jsonl` file gives one document per line
    from the field `task.text_field` (default `text`), doc_id = `<relative path>:<line>`.
    `data.path` may also name one such file.
  * `data.source=hub`: the dataset `task.hub_id` (config `task.hub_config`, split `task.hub_split`),
    text in `task.text_field`; doc_id = `<split>/<row>`.
  * `data.source=sample`: two long technical documents shipped in the package (tasks/data/arxiv_ppl,
    see its NOTICE). Like the development copy in ../shared/data/arxiv they are arXiv-like LaTeX
    and AsciiDoc texts, NOT arXiv papers: their numbers are not comparable with the model card's.
  Documents are taken in sorted doc_id order; `limit` keeps the first N.

Protocol (docs/protocols.md): for each length L in `task.lengths` and each document with at
least L tokens, the loss of the document's first L tokens in ONE forward pass (window = L, so
the first token is context only and L - 1 tokens are scored); PPL at L = exp(total NLL / total
scored tokens) over all those documents. A document shorter than L is skipped at L and counted.
Each (document, length, variant) is one `Rolling(text, first_tokens=L, max_length=L,
long_context=...)` request; the backend answers n_tokens == 0 for a text shorter than L.

Variants (`task.variants`): `base` or `+`-joined switches among `dynamic_ntk`, `logn`,
`window_attn`, named in the model card's order (the labels of qwen_eval/reference/long_context.csv).
Each is a `LongContext` the bundled engine applies per request, so the weights load once for
every row. `task.window_attn`: "schedule" = the serving model's default layer-wise windows
(`qwen_eval.model.model.window_schedule`; Qwen never published its sizes), or one size per layer.

Metrics: `<variant>/ppl@<L>` with `_stderr` (delta method over documents: PPL x the standard
error of the ratio estimator total NLL / total tokens; null with fewer than two documents),
`<variant>/docs@<L>` (documents scored) and `skipped@<L>` (documents shorter than L). The
headline is the last variant at the largest length (by default
`dynamic_ntk+logn+window_attn/ppl@32768`, the model card's best row at its longest context).
`write_artifacts` writes the long-context table (tasks/arxiv_ppl_table.py: rows = variants, columns
= lengths, the model card's rows beside them) as long_context.md/.csv and a log-scale plot
long_context.png.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from qwen_eval.data import load_hub_dataset, local_dir, sample_dir
from qwen_eval.errors import UserError
from qwen_eval.reference import BASE_VARIANT, split_variant
from qwen_eval.requests import WINDOW_SCHEDULE, LongContext, Response, Rolling, RollingResult
from qwen_eval.task import DataSpec, Sample, Task

TEXT_SUFFIXES = (".txt", ".tex", ".md", ".adoc")
JSONL_SUFFIX = ".jsonl"
DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)
SWITCHES = ("dynamic_ntk", "logn", "window_attn")  # the model card's order
DEFAULT_VARIANTS = ("base", "dynamic_ntk", "dynamic_ntk+logn", "dynamic_ntk+logn+window_attn")
PROMPT_PREVIEW_CHARS = 300  # samples.jsonl keeps the text's start and its sha256, not 500 KB
PLOTTED_REFERENCE_MODELS = ("Qwen-7B", "Qwen-14B")


@dataclass(frozen=True)
class Document:
    doc_id: str
    text: str


# --- options -------------------------------------------------------------------------------------


def parse_lengths(value: Any) -> tuple[int, ...]:
    try:
        lengths = [int(v) for v in value]
        ok = all(float(v) == int(v) for v in value) and lengths and all(n >= 2 for n in lengths)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"task.lengths={value!r}: give a list of token counts >= 2, e.g. task.lengths=[1024,2048]")
    return tuple(sorted(set(lengths)))


def parse_window_attn(value: Any) -> str | tuple[int, ...]:
    if value == WINDOW_SCHEDULE:
        return WINDOW_SCHEDULE
    try:
        sizes = tuple(int(w) for w in value)
        ok = not isinstance(value, str) and bool(sizes) and all(w >= 0 for w in sizes)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise UserError(f"task.window_attn={value!r}: give {WINDOW_SCHEDULE!r} (the model's default layer-wise "
                        "windows) or one window size per layer, 0 = full attention, e.g. [2048,4096,8192,0]")
    return sizes


def parse_variant(name: str, window_attn: str | tuple[int, ...]) -> tuple[str, LongContext]:
    """A variant name -> (its canonical name, the switches it turns on)."""
    parts = [p.strip() for p in str(name).split("+")]
    if parts == [BASE_VARIANT]:
        return BASE_VARIANT, LongContext(False, False, None)
    if not all(p in SWITCHES for p in parts) or len(set(parts)) != len(parts):
        raise UserError(f"task.variants: {name!r} is not a variant; use {BASE_VARIANT!r} or switches among "
                        f"{', '.join(SWITCHES)} joined by '+', e.g. dynamic_ntk+logn")
    switches = [s for s in SWITCHES if s in parts]
    return "+".join(switches), LongContext(use_dynamic_ntk="dynamic_ntk" in switches, use_logn_attn="logn" in switches,
                                           window_attn=window_attn if "window_attn" in switches else None)


# --- reading -------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8 or remove it") from None


def _text_of(row: Any, text_field: str, where: str) -> str:
    if not isinstance(row, Mapping):
        raise UserError(f"{where}: expected a JSON object with a {text_field!r} field")
    if text_field not in row:
        raise UserError(f"{where}: no {text_field!r} field (fields: {', '.join(map(str, row))}); "
                        f"set task.text_field=NAME")
    text = row[text_field]
    if not isinstance(text, str):
        raise UserError(f"{where}: field {text_field!r} is {type(text).__name__}, not text")
    return text


def read_jsonl_documents(path: Path, doc_prefix: str, text_field: str) -> list[Document]:
    """One document per non-blank line, doc_id `<doc_prefix>:<line number>`."""
    docs = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove the line") from None
        docs.append(Document(f"{doc_prefix}:{lineno}", _text_of(row, text_field, f"{path}:{lineno}")))
    return docs


def read_documents(path: Path, text_field: str = "text") -> list[Document]:
    """Documents of a folder (recursive) or a single file, sorted by doc_id."""
    if path.is_file():
        files, root = [path], path.parent
    else:
        root = path
        files = [p for p in path.rglob("*") if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(path).parts)
                 and p.suffix.lower() in (*TEXT_SUFFIXES, JSONL_SUFFIX)]
    docs = []
    for p in files:
        rel = p.relative_to(root).as_posix()
        if p.suffix.lower() == JSONL_SUFFIX:
            docs += read_jsonl_documents(p, rel, text_field)
        elif p.suffix.lower() in TEXT_SUFFIXES:
            docs.append(Document(rel, _read_text(p)))
        else:
            raise UserError(f"{p}: not a document; use a {', '.join(TEXT_SUFFIXES)} or {JSONL_SUFFIX} file or a folder")
    if not docs:
        raise UserError(f"{path}: no documents ({', '.join(TEXT_SUFFIXES)} files or {JSONL_SUFFIX} lines); "
                        "point data.path at a folder of long documents")
    return sorted(docs, key=lambda d: d.doc_id)


# --- metrics -------------------------------------------------------------------------------------


def perplexity(nlls: Sequence[float], tokens: Sequence[int]) -> tuple[float, float]:
    """exp(sum NLL / sum tokens) over documents, and its delta-method standard error.

    R = sum(nll_i) / sum(n_i) is a ratio estimator over documents (the unit of sampling):
    Var(R) ~ sum((nll_i - R n_i)^2) / (k (k - 1) mean(n)^2), and se(exp R) = exp(R) se(R).
    """
    k, total = len(nlls), sum(tokens)
    if k == 0 or total == 0:
        return math.nan, math.nan
    ratio = sum(nlls) / total
    ppl = math.exp(ratio)
    if k < 2:
        return ppl, math.nan
    mean_n = total / k
    var = sum((nll - ratio * n) ** 2 for nll, n in zip(nlls, tokens)) / (k * (k - 1) * mean_n ** 2)
    return ppl, ppl * math.sqrt(var)


def cell_name(variant: str, length: int) -> str:
    return f"{variant}/ppl@{length}"


# --- the task ------------------------------------------------------------------------------------


class ArxivPerplexity(Task):
    name = "arxiv_ppl"
    default_shots = 0
    max_shots = 0
    headline = cell_name(DEFAULT_VARIANTS[-1], DEFAULT_LENGTHS[-1])
    model_card_column = None  # the long-context table, not the benchmark table
    version = "1"

    def __init__(self, options: Mapping[str, Any] | None = None, **kwargs):
        super().__init__(options, **kwargs)
        o = self.options
        self.lengths = parse_lengths(o["lengths"])
        self.window_attn = parse_window_attn(o["window_attn"])
        raw_variants = [o["variants"]] if isinstance(o["variants"], str) else list(o["variants"] or [])
        if not raw_variants:
            raise UserError("task.variants is empty; list at least one, e.g. task.variants=[base]")
        self.variants: dict[str, LongContext] = {}
        for raw in raw_variants:
            name, switches = parse_variant(raw, self.window_attn)
            if name in self.variants:
                raise UserError(f"task.variants names {name!r} twice")
            self.variants[name] = switches
        self.text_field = str(o["text_field"])
        self.hub = {k: (None if o[k] is None else str(o[k])) for k in ("hub_id", "hub_config", "hub_split")}
        # The last variant at the largest length (instance attribute: it follows the options).
        self.headline = cell_name(list(self.variants)[-1], self.lengths[-1])
        # The parsed values, as results.json records them.
        self.options = {**o, "lengths": list(self.lengths), "variants": list(self.variants),
                        "window_attn": self.window_attn if isinstance(self.window_attn, str) else list(self.window_attn),
                        "text_field": self.text_field, **self.hub}

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        return {"lengths": list(DEFAULT_LENGTHS), "variants": list(DEFAULT_VARIANTS), "window_attn": WINDOW_SCHEDULE,
                "text_field": "text", "hub_id": "bzantium/LongPerplexity", "hub_config": "arxiv", "hub_split": "test"}

    # -- data -------------------------------------------------------------------------------------
    def load(self, data: DataSpec, limit: int | None = None) -> list[Document]:
        docs = self.read_source(data)
        return docs[:limit] if limit else docs

    def read_local(self, path: str | None) -> list[Document]:
        return read_documents(local_dir(path, self.name), self.text_field)

    def read_sample(self) -> list[Document]:
        return read_documents(sample_dir(self.name), self.text_field)

    def read_hub(self) -> list[Document]:
        hub_id, config, split = self.hub["hub_id"], self.hub["hub_config"], self.hub["hub_split"] or "test"
        if not hub_id:
            raise UserError("task arxiv_ppl: data.source=hub needs task.hub_id=DATASET (and task.text_field); "
                            "or use data.path=DIR with local documents")
        rows = load_hub_dataset(self.name, hub_id, config, split)
        return [Document(f"{split}/{i}", _text_of(row, self.text_field, f"{hub_id} split {split} row {i}"))
                for i, row in enumerate(rows)]

    # -- requests ---------------------------------------------------------------------------------
    def cells(self) -> list[tuple[str, int]]:
        """(variant, length) in request order."""
        return [(variant, length) for variant in self.variants for length in self.lengths]

    def requests(self, doc: Document) -> list[Rolling]:
        return [Rolling(doc.text, first_tokens=length, max_length=length, long_context=self.variants[variant])
                for variant, length in self.cells()]

    def score(self, doc: Document, responses: Sequence[Response]) -> Sample:
        answers: dict[str, list[float]] = {}
        predictions: dict[str, float] = {}
        text_tokens = 0
        cells = self.cells()
        for i, (variant, length) in enumerate(cells):
            r = self.response(doc, responses, RollingResult, i, len(cells))
            name = cell_name(variant, length)
            answers[name] = [r.loglikelihood, r.n_tokens]
            text_tokens = max(text_tokens, r.text_tokens)
            if r.n_tokens > 0:
                predictions[name] = math.exp(-r.loglikelihood / r.n_tokens)
        # The per-document score: its PPL at the headline cell, else at the longest length it
        # reached under the headline variant; 0.0 (never a perplexity) when it is shorter than
        # every length. `score_cell` says which cell it is.
        head_variant = self.headline.split("/ppl@")[0]
        reached = [cell_name(head_variant, n) for n in self.lengths if cell_name(head_variant, n) in predictions]
        score_cell = reached[-1] if reached else None
        return Sample(
            doc_id=doc.doc_id,
            prompt=doc.text[:PROMPT_PREVIEW_CHARS],
            target=None,
            response=answers,  # cell -> [summed log-likelihood, tokens scored] as the backend answered
            prediction=predictions,  # cell -> this document's perplexity
            score=predictions[score_cell] if score_cell else 0.0,
            extra={"score_cell": score_cell, "text_tokens": text_tokens, "text_chars": len(doc.text),
                   "text_sha256": hashlib.sha256(doc.text.encode("utf-8")).hexdigest(),
                   "prompt_is_preview": len(doc.text) > PROMPT_PREVIEW_CHARS},
        )

    def aggregate(self, samples: Sequence[Sample]) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for length in self.lengths:
            metrics[f"skipped@{length}"] = sum(1 for s in samples if s.extra["text_tokens"] < length)
        for variant, length in self.cells():
            name = cell_name(variant, length)
            scored = [s.response[name] for s in samples if s.response[name][1] > 0]
            ppl, se = perplexity([-loglik for loglik, _ in scored], [n for _, n in scored])
            metrics[name], metrics[f"{name}_stderr"] = ppl, se
            metrics[f"{variant}/docs@{length}"] = len(scored)
        return metrics

    # -- the long-context table -------------------------------------------------------------------
    def write_artifacts(self, out_dir: Path, record: Mapping[str, Any]) -> list[Path]:
        """long_context.md/.csv (measured rows beside the model card's) and long_context.png."""
        from qwen_eval.table_formats import plot_table, write_table
        from qwen_eval.tasks.arxiv_ppl_table import build_long_context_table

        table = build_long_context_table([record])
        stem = Path(out_dir) / "long_context"
        paths = write_table(table, stem, formats=("md", "csv"))
        kinds = table.attrs["row_kinds"]
        rows = [r for r in table.index if kinds[r] == "reference" and split_variant(r)[0] in PLOTTED_REFERENCE_MODELS]
        rows += [r for r in table.index if kinds[r] == "measured"]
        paths.append(plot_table(table, Path(f"{stem}.png"), rows=rows))
        return paths
