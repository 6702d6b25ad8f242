"""Leaderboards: measured runs beside the model card's numbers (`qwen-eval-table`).

    build_table               results.json dicts -> the model card's layout (models x benchmarks)
    build_long_context_table  arxiv_ppl results -> the long-context layout (model + variant x length)
    format_table              numbers -> cells as shown (`66.3`, `66.3 ± 0.4`, `66.3*`, `-`)
    write_table               Markdown, CSV, LaTeX, HTML (and PNG) files
    plot_table                PNG: grouped bars (benchmarks) or lines (perplexity by length); measured
                              rows in colours of their own (`row_colours`)

The tables are numeric DataFrames (percent for accuracy-like metrics, perplexity as is; NaN where
nothing was measured or reported). What a cell needs beyond its number travels in `df.attrs`:
row kinds (reference / measured / diff), standard errors, conflict flags and the conflicts report,
and the references' provenance.

Rules (docs/tables-and-regression.md explains them for users):
- A column is a benchmark at a shot count: `MMLU (5-shot)`. A run at another shot count than the
  model card's gets its own column (`MMLU (0-shot)`) beside it, so it is never compared with a
  number measured differently.
- Conflicts: two runs of the same model that fill the same cell but differ in anything of
  PROVENANCE_FIELDS (task, version, shots, protocol, prompts, data, sample count, task options,
  backend, dtype, checkpoint, context options). A full run is shown over a partial one (a run
  with `limit` set), then the newest (by `created`; the later one given on a tie); `prefer="newest"`
  drops the first rule. The cell is marked `*` and the conflict is reported. Identical
  duplicates: the newest wins silently.
- Partial runs: a cell filled by a run with `limit` set shows how many documents it scored and
  the mark `†` (`20.0 (n=5)†`), so a quick check never passes for the benchmark's number.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from qwen_eval.errors import UserError
from qwen_eval.reference import (BASE_VARIANT, ReferenceTable, load_long_context, load_model_card,
                                 load_reference, split_variant, variant_label)
from qwen_eval.run_files import PPL_METRIC, Run, created, headline, is_fraction_metric, load_runs

FORMATS = ("md", "csv", "tex", "html", "png")
MISSING = "-"
CONFLICT_MARK = "*"
PARTIAL_MARK = "†"
PREFER = ("full", "newest")  # which of conflicting runs fills a cell
# What makes two runs of one model different measurements rather than repeats.
PROVENANCE_FIELDS = ("task", "task_version", "shots", "protocol", "prompt_fingerprint", "data.fingerprint",
                     "n_samples", "task_config.options", "config.task", "model.backend", "model.dtype",
                     "model.fingerprint", "model.max_length", "model.use_dynamic_ntk", "model.use_logn_attn",
                     "model.window_attn")
VARIANT_ORDER = (BASE_VARIANT, "dynamic_ntk", "dynamic_ntk+logn", "dynamic_ntk+logn+window_attn")

Results = Sequence[Mapping[str, Any] | Run]


@dataclass(frozen=True)
class _Measured:
    value: float
    stderr: float | None
    run: Run
    order: int  # position in the input: breaks ties between runs created at the same time

    @property
    def limit(self) -> int | None:
        """`limit` of the run's config: set = a partial run (None for a full one)."""
        return run_limit(self.run.results)


def run_limit(results: Mapping[str, Any]) -> int | None:
    limit = (results.get("config") or {}).get("limit")
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else None


# ---------------------------------------------------------------------------------------------
# Building


def build_table(results: Results, *, references: Sequence[ReferenceTable] | None = None,
                reference_models: Sequence[str] | None = None, reference_row: str | None = None,
                stderr: bool = False, labels: Mapping[str, str] | None = None, prefer: str = "full") -> pd.DataFrame:
    """The model card's table: reference rows, then each measured model (and its diff row).

    results: results.json dicts (or `Run`s); long-context runs (`<variant>/ppl@<L>` metrics) are
      left to build_long_context_table.
    references: reference tables to show; None = the model card; [] = none.
    reference_models: keep only these reference rows (None = all).
    reference_row: add, under each measured row, a row `<measured> - <reference_row>` (points).
    stderr: show `value ± stderr` in measured cells.
    labels: model name -> the label its rows get (several names may share one label).
    prefer: "full" (a full run fills a cell before any partial one, then the newest) or "newest".
    """
    runs = [run for run in _as_runs(results) if not is_long_context(run.results)]
    refs = [ref for ref in (references if references is not None else [load_model_card()])
            if ref.kind == "benchmarks"]
    card_shots: dict[str, int] = {}  # the shot count a benchmark's numbers are reported at
    for ref in refs:
        for column, shots in ref.shots.items():
            card_shots.setdefault(column, shots)
    declared = list(card_shots.items())  # columns the references define: always shown
    for column, shots in load_model_card().shots.items():  # a reference set that names no shots
        card_shots.setdefault(column, shots)

    reported = _reference_rows(refs, reference_models, reference_row,
                               lambda ref, column: (column, ref.shots.get(column, card_shots.get(column))))
    measured: dict[str, dict[tuple, list[_Measured]]] = defaultdict(lambda: defaultdict(list))
    mixed = _mixed_dtypes(runs)
    for order, run in enumerate(runs):
        metric, value, se = headline(run.results)
        scale = 100.0 if is_fraction_metric(metric) else 1.0
        column = run.results.get("model_card_column") or run.results["task"]
        key = (column, run.results.get("shots"))
        row = _measured_label(run, labels, mixed)
        measured[row][key].append(_Measured(value * scale, None if se is None else se * scale, run, order))

    keys = declared + [key for row in reported.values() for key in row] + [key for row in measured.values() for key in row]
    columns = _order_benchmark_columns(keys, card_shots)
    headers = {key: _benchmark_header(*key) for key in columns}
    diff_of = {row: (reference_row, f"{row} - {reference_row}") for row in measured} if reference_row else {}
    table = _assemble(reported, measured, diff_of, [headers[k] for k in columns], headers, prefer)
    table.attrs.update(kind="benchmarks", decimals=1, show_stderr=stderr, reference_row=reference_row,
                       references=[ref.provenance() for ref in refs], units="percent")
    return table


def build_long_context_table(results: Results, *, references: Sequence[ReferenceTable] | None = None,
                             reference_models: Sequence[str] | None = None, reference_row: str | None = None,
                             stderr: bool = False, labels: Mapping[str, str] | None = None,
                             prefer: str = "full") -> pd.DataFrame:
    """The long-context table: rows = model + variant, columns = context length, values = PPL.

    reference_row names a reference model (e.g. "Qwen-14B"); each measured variant is compared
    with that model's row of the same variant, where the model card reports one.
    """
    runs = [run for run in _as_runs(results) if is_long_context(run.results)]
    refs = [ref for ref in (references if references is not None else [load_long_context()])
            if ref.kind == "long_context"]
    models = None if reference_models is None else set(reference_models)
    keep = None if models is None else {label for ref in refs for label in ref.values.index
                                        if split_variant(label)[0] in models}
    reported = _reference_rows(refs, keep, None, lambda ref, length: length)

    measured: dict[str, dict[int, list[_Measured]]] = defaultdict(lambda: defaultdict(list))
    variants: dict[str, tuple[str, str]] = {}
    mixed = _mixed_dtypes(runs)
    for order, run in enumerate(runs):
        metrics = run.results["metrics"]
        model = _measured_label(run, labels, mixed)
        for name, value in metrics.items():
            match = PPL_METRIC.match(name)
            if not match or not isinstance(value, (int, float)):
                continue
            variant = match["variant"]
            row = variant_label(model, variant)
            variants[row] = (model, variant)
            se = metrics.get(f"{name}_stderr")
            measured[row][int(match["length"])].append(
                _Measured(float(value), float(se) if isinstance(se, (int, float)) else None, run, order))
    model_order = {model: i for i, model in enumerate(dict.fromkeys(model for model, _ in variants.values()))}
    measured = {row: measured[row] for row in sorted(
        measured, key=lambda r: (model_order[variants[r][0]], *_variant_rank(variants[r][1])))}

    diff_of: dict[str, tuple[str, str]] = {}
    if reference_row:
        all_reported = {label for ref in refs for label in ref.values.index}
        if not any(split_variant(label)[0] == reference_row for label in all_reported):
            raise UserError(f"--reference-row {reference_row!r} is not a model of the long-context reference; "
                            f"choose one of: {', '.join(sorted({split_variant(l)[0] for l in all_reported}))}")
        for row, (_, variant) in variants.items():
            target = variant_label(reference_row, variant)
            if target in all_reported:
                diff_of[row] = (target, f"{row} - {reference_row}")  # the same variant of reference_row
                if target not in reported:
                    reported.update(_reference_rows(refs, {target}, None, lambda ref, length: length))

    lengths = sorted({k for row in reported.values() for k in row} | {k for row in measured.values() for k in row})
    headers = {length: str(length) for length in lengths}
    table = _assemble(reported, measured, diff_of, [headers[k] for k in lengths], headers, prefer)
    table.attrs.update(kind="long_context", decimals=2, show_stderr=stderr, reference_row=reference_row,
                       references=[ref.provenance() for ref in refs], units="perplexity")
    return table


def build_tables(results: Results, **options: Any) -> dict[str, pd.DataFrame]:
    """Every table the runs call for: "benchmarks" and/or "long_context"."""
    runs = _as_runs(results)
    long_runs = [run for run in runs if is_long_context(run.results)]
    tables: dict[str, pd.DataFrame] = {}
    if len(long_runs) < len(runs) or not runs:
        tables["benchmarks"] = build_table(runs, **options)
    if long_runs:
        references = options.get("references")
        reported = {split_variant(label)[0] for ref in (references if references is not None else [load_long_context()])
                    if ref.kind == "long_context" for label in ref.values.index}
        if options.get("reference_row") not in reported:
            # A benchmark-table row (e.g. LLaMA2-7B) the long-context table does not report.
            options = {**options, "reference_row": None}
        tables["long_context"] = build_long_context_table(long_runs, **options)
    return tables


def is_long_context(results: Mapping[str, Any]) -> bool:
    return any(PPL_METRIC.match(name) for name in results.get("metrics", {}))


def _as_runs(results: Results) -> list[Run]:
    return [item if isinstance(item, Run) else Run(path=None, results=dict(item)) for item in results]


def _measured_label(run: Run, labels: Mapping[str, str] | None, mixed: set[str] = frozenset()) -> str:
    """The row of a run: its model's name (or label); with the dtype when runs of that name were
    made in more than one (fp32 and bf16 of one checkpoint are two rows, not a conflict)."""
    name = run.results["model"]["name"]
    dtype = f" {run.results['model'].get('dtype')}" if name in mixed else ""
    return f"{(labels or {}).get(name, name)}{dtype} (measured)"


def _mixed_dtypes(runs: Sequence[Run]) -> set[str]:
    dtypes: dict[str, set] = defaultdict(set)
    for run in runs:
        dtypes[run.results["model"]["name"]].add(run.results["model"].get("dtype"))
    return {name for name, seen in dtypes.items() if len(seen) > 1}


def _reference_rows(refs: Sequence[ReferenceTable], keep: Any, always: str | None,
                    key_of: Callable[[ReferenceTable, Any], Any]) -> dict[str, dict[Any, float]]:
    """label -> {column key: value} for the reference rows to show, in the references' order."""
    rows: dict[str, dict[Any, float]] = {}
    found_always = False
    for ref in refs:
        for model, values in ref.values.iterrows():
            found_always |= model == always
            if keep is not None and model not in keep and model != always:
                continue
            label = model if model not in rows else f"{model} ({ref.name})"
            rows[label] = {key_of(ref, column): value for column, value in values.items() if not math.isnan(value)}
    if always is not None and not found_always:
        names = [str(m) for ref in refs for m in ref.values.index]
        raise UserError(f"--reference-row {always!r} is not a reference row; choose one of: {', '.join(names)}")
    return rows


def _order_benchmark_columns(keys: Sequence[tuple[str, int | None]], card_shots: Mapping[str, int]) -> list[tuple]:
    """Model card columns first in its order, each followed by its other shot counts; then the rest."""
    first_seen: dict[str, int] = {}
    for column, _ in keys:
        first_seen.setdefault(column, len(first_seen))

    def rank(key: tuple[str, int | None]) -> tuple:
        column, shots = key
        return (first_seen[column], shots != card_shots.get(column), -1 if shots is None else shots)

    return sorted(set(keys), key=rank)


def _benchmark_header(column: str, shots: int | None) -> str:
    return column if shots is None else f"{column} ({shots}-shot)"


def _assemble(reported: Mapping[str, Mapping[Any, float]], measured: Mapping[str, Mapping[Any, list[_Measured]]],
              diff_of: Mapping[str, tuple[str, str]], columns: list[str], headers: Mapping[Any, str],
              prefer: str = "full") -> pd.DataFrame:
    """Lay out rows (reference, then each measured row followed by its diff row) and resolve conflicts."""
    if prefer not in PREFER:
        raise UserError(f"prefer={prefer!r}: choose one of {', '.join(PREFER)}")
    values: dict[str, dict[str, float]] = {}
    stderrs: dict[str, dict[str, float]] = {}
    kinds: dict[str, str] = {}
    flags: dict[str, list[str]] = {}
    partial: dict[str, dict[str, int | None]] = {}  # row -> column -> documents scored, for partial runs
    conflicts: list[dict[str, Any]] = []
    for label, row in reported.items():
        values[label] = {headers[k]: v for k, v in row.items()}
        kinds[label] = "reference"
    for label, row in measured.items():
        values[label], stderrs[label], kinds[label] = {}, {}, "measured"
        for key, candidates in row.items():
            column = headers[key]
            shown, conflict = pick_run(candidates, label, column, prefer)
            values[label][column] = shown.value
            if shown.limit is not None:
                partial.setdefault(label, {})[column] = shown.run.results.get("n_samples")
            if shown.stderr is not None:
                stderrs[label][column] = shown.stderr
            if conflict:
                flags.setdefault(label, []).append(column)
                conflicts.append(conflict)
        if label in diff_of:
            target, diff_label = diff_of[label]
            common = [c for c in values[label] if c in values[target]]
            values[diff_label] = {c: values[label][c] - values[target][c] for c in common}
            stderrs[diff_label] = {c: stderrs[label][c] for c in common if c in stderrs[label]}
            kinds[diff_label] = "diff"
            if label in partial:
                partial[diff_label] = {c: n for c, n in partial[label].items() if c in common}
    table = pd.DataFrame([[values[r].get(c, math.nan) for c in columns] for r in values],
                         index=pd.Index(list(values), name="model"), columns=columns, dtype=float)
    table.attrs.update(row_kinds=kinds, stderr=stderrs, flags=flags, conflicts=conflicts, partial=partial,
                       prefer=prefer)
    return table


def pick_run(candidates: Sequence[_Measured], row: str, column: str,
             prefer: str = "full") -> tuple[_Measured, dict[str, Any] | None]:
    """The run that fills the cell (the last of `ordered`): a full run before a partial one unless
    prefer="newest", then the newest; runs that measured it differently make a conflict report."""
    def rank(c: _Measured) -> tuple:
        newest = (created(c.run.results), c.order)
        return newest if prefer == "newest" else (c.limit is None, *newest)

    ordered = sorted(candidates, key=rank)
    shown = ordered[-1]
    provenances = [provenance(c.run.results) for c in ordered]
    differs = [name for name in PROVENANCE_FIELDS
               if len({json.dumps(p[name], sort_keys=True, default=str) for p in provenances}) > 1]
    if not differs:
        return shown, None
    return shown, {
        "row": row, "column": column, "differs": differs, "shown": shown.run.describe(),
        "rule": "the newest" if prefer == "newest" else "the newest full run, else the newest",
        "runs": [{"source": c.run.describe(), "created": c.run.results.get("created"), "value": round(c.value, 4),
                  "limit": c.limit, **{name: p[name] for name in differs}} for c, p in zip(ordered, provenances)],
    }


def provenance(results: Mapping[str, Any]) -> dict[str, Any]:
    """The PROVENANCE_FIELDS of a results.json (dotted names reach into nested objects)."""
    out = {}
    for name in PROVENANCE_FIELDS:
        value: Any = results
        for part in name.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        out[name] = value
    return out


def _variant_rank(variant: str) -> tuple[int, str]:
    """The model card's order of variants (base first), then any others by name."""
    known = VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER)
    return (known, variant)


# ---------------------------------------------------------------------------------------------
# Showing


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """The cells as text: fixed decimals, `± stderr` when asked, `+`/`-` signs on diffs, `(n=5)†`
    on partial runs, `*` on conflicts."""
    decimals = table.attrs.get("decimals", 1)
    kinds = table.attrs.get("row_kinds", {})
    stderrs = table.attrs.get("stderr", {}) if table.attrs.get("show_stderr") else {}
    flags = table.attrs.get("flags", {})
    partial = table.attrs.get("partial", {})
    rows = []
    for label, values in table.iterrows():
        signed = kinds.get(label) == "diff"
        marks = partial.get(label, {})
        rows.append([_cell(value, stderrs.get(label, {}).get(column), decimals, signed,
                           column in flags.get(label, ()), column in marks, marks.get(column))
                     for column, value in values.items()])
    return pd.DataFrame(rows, index=table.index, columns=table.columns, dtype=object)


def _cell(value: float, stderr: float | None, decimals: int, signed: bool, flagged: bool,
          partial: bool = False, n: int | None = None) -> str:
    if value is None or math.isnan(value):
        return MISSING
    text = f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"
    if stderr is not None:
        text += f" ± {stderr:.{decimals}f}"
    if partial:
        text += (f" (n={n})" if n is not None else "") + PARTIAL_MARK
    return text + (CONFLICT_MARK if flagged else "")


def footnotes(table: pd.DataFrame, conflicts_file: str | None = None) -> list[str]:
    """What a reader needs to read the table: units, diffs, conflicts and where the references come from."""
    notes = []
    if table.attrs.get("kind") == "long_context":
        notes.append("Perplexity on arXiv documents by context length in tokens; lower is better.")
    else:
        notes.append("Headline metric in percent (accuracy or pass@1); measured rows are this harness's runs.")
    if any(kind == "diff" for kind in table.attrs.get("row_kinds", {}).values()):
        unit = "perplexity" if table.attrs.get("kind") == "long_context" else "percentage points"
        same = " (the same variant of B)" if table.attrs.get("kind") == "long_context" else ""
        notes.append(f"Rows `A - B`: measured minus reference{same}, in {unit}.")
    if table.attrs.get("partial"):
        notes.append(f"{PARTIAL_MARK} a partial run (`limit` set): n is the number of documents it scored; "
                     f"not the benchmark's number.")
    if table.attrs.get("conflicts"):
        where = f" (details: {conflicts_file})" if conflicts_file else ""
        shown = ("the newest is shown" if table.attrs.get("prefer") == "newest"
                 else "the newest full run is shown, a partial one only where no full run exists")
        notes.append(f"{CONFLICT_MARK} conflicting runs fill this cell; {shown}{where}.")
    for ref in table.attrs.get("references", []):
        retrieved = f", transcribed {ref['retrieved']}" if ref.get("retrieved") else ""
        notes.append(f"Reference: {ref['source']}{retrieved}.")
    return notes


def to_markdown(table: pd.DataFrame, conflicts_file: str | None = None) -> str:
    cells = format_table(table)
    body = cells.to_markdown(disable_numparse=True, colalign=["left"] + ["right"] * len(cells.columns))
    return body + "\n\n" + "\n".join(f"- {note}" for note in footnotes(table, conflicts_file)) + "\n"


def to_latex(table: pd.DataFrame) -> str:
    cells = format_table(table).reset_index()  # `model` heads the first column, not a row of its own
    styler = cells.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    latex = styler.to_latex(hrules=True, column_format="l" + "r" * (len(cells.columns) - 1))
    return latex.replace("±", r"$\pm$").replace(PARTIAL_MARK, r"$^\dagger$")


def to_html(table: pd.DataFrame, conflicts_file: str | None = None) -> str:
    cells = format_table(table)
    html = cells.reset_index().to_html(index=False, escape=True, border=0, classes="qwen-eval-table")
    notes = "".join(f"<li>{_html_escape(note)}</li>" for note in footnotes(table, conflicts_file))
    return f"{html}\n<ul class=\"qwen-eval-notes\">{notes}</ul>\n"


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_table(table: pd.DataFrame, stem: str | Path, formats: Sequence[str] = ("md", "csv", "tex", "html")) -> list[Path]:
    """Write `stem.<format>` for each format (md, csv, tex, html, png) and `stem.conflicts.json`
    when runs conflicted. Returns the paths written."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise UserError(f"unknown table format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    conflicts = table.attrs.get("conflicts", [])
    conflicts_path = Path(f"{stem}.conflicts.json")
    written = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        if fmt == "md":
            path.write_text(to_markdown(table, conflicts_path.name if conflicts else None), encoding="utf-8")
        elif fmt == "csv":
            format_table(table).to_csv(path, encoding="utf-8")
        elif fmt == "tex":
            path.write_text(to_latex(table), encoding="utf-8")
        elif fmt == "html":
            path.write_text(to_html(table, conflicts_path.name if conflicts else None), encoding="utf-8")
        else:
            plot_table(table, path)
        written.append(path)
    if conflicts:
        portable = [_relative_sources(c, conflicts_path.parent) for c in conflicts]
        conflicts_path.write_text(json.dumps(portable, indent=2, default=str) + "\n", encoding="utf-8")
        written.append(conflicts_path)
    return written


def _relative_sources(conflict: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """The conflict with its run files named relative to `base` (the report's folder), so a report
    committed beside its runs reads the same on every checkout."""
    def relative(source: str) -> str:
        path = Path(source)
        return os.path.relpath(path.resolve(), base.resolve()) if path.is_file() else source

    return {**conflict, "shown": relative(conflict["shown"]),
            "runs": [{**run, "source": relative(run["source"])} for run in conflict["runs"]]}


# Reference rows in light colours (and hatched bars), measured rows in saturated ones: the two
# sets share no colour, so a measured bar is never read as a model card row.
REFERENCE_PALETTES = ("Pastel1", "Pastel2", "Set3")
MEASURED_PALETTES = ("tab10", "Dark2")


def row_colours(rows: Sequence[str], kinds: Mapping[str, str]) -> dict[str, tuple[float, ...]]:
    """A colour per row: measured rows from MEASURED_PALETTES, the others from REFERENCE_PALETTES
    (each set is cycled only when its rows outnumber it)."""
    from matplotlib import colormaps

    def palette(names: Sequence[str]) -> list[tuple[float, ...]]:
        colours: list[tuple[float, ...]] = []
        for name in names:
            colours += [tuple(c) for c in colormaps[name].colors if tuple(c) not in colours]
        return colours

    measured_colours = palette(MEASURED_PALETTES)
    reference_colours = [c for c in palette(REFERENCE_PALETTES) if c not in measured_colours]
    out: dict[str, tuple[float, ...]] = {}
    counts = {"measured": 0, "reference": 0}
    for row in rows:
        group = "measured" if kinds.get(row) == "measured" else "reference"
        colours = measured_colours if group == "measured" else reference_colours
        out[row] = colours[counts[group] % len(colours)]
        counts[group] += 1
    return out


def plot_table(table: pd.DataFrame, path: str | Path, rows: Sequence[str] | None = None) -> Path:
    """PNG of measured vs reported (see `figure`)."""
    fig = figure(table, rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


def figure(table: pd.DataFrame, rows: Sequence[str] | None = None):
    """A matplotlib Figure: grouped bars per benchmark, or perplexity-by-length lines.

    rows: which rows to draw; default = the measured rows plus the `reference_row` when one was
    chosen, else plus every reference row in the table. Diff rows are never drawn. Every row
    drawn has a legend entry, measured rows first.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here: matplotlib is slow to load
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    kinds = table.attrs.get("row_kinds", {})
    rows = list(rows) if rows is not None else _default_plot_rows(table)
    colours = row_colours(rows, kinds)
    stderrs = table.attrs.get("stderr", {})
    long_context = table.attrs.get("kind") == "long_context"
    fig = Figure(figsize=(max(6.0, 1.1 * len(table.columns) + 0.25 * len(rows)), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    handles = {}
    if long_context:
        lengths = [int(c) for c in table.columns]
        for row in rows:
            values = table.loc[row]
            points = [(x, v) for x, v in zip(lengths, values) if not math.isnan(v)]
            style = "-o" if kinds.get(row) == "measured" else "--s"
            if points:
                ax.plot(*zip(*points), style, label=row, color=colours[row])
            handles[row] = Line2D([], [], linestyle=style[:-1], marker=style[-1], color=colours[row], label=row)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("perplexity (lower is better)")
    else:
        width = 0.8 / max(1, len(rows))
        for i, row in enumerate(rows):
            xs, heights, errors = [], [], []
            for j, column in enumerate(table.columns):
                value = table.loc[row, column]
                if not math.isnan(value):
                    xs.append(j - 0.4 + width * (i + 0.5))
                    heights.append(value)
                    errors.append(stderrs.get(row, {}).get(column, 0.0))
            measured = kinds.get(row) == "measured"
            hatch = None if measured else "//"
            ax.bar(xs, heights, width, yerr=errors if measured and any(errors) else None, label=row,
                   color=colours[row], hatch=hatch, edgecolor="black", linewidth=0.4, capsize=2)
            handles[row] = Patch(facecolor=colours[row], hatch=hatch, edgecolor="black", linewidth=0.4, label=row)
        ax.set_xticks(range(len(table.columns)), list(table.columns), rotation=30, ha="right")
        ax.set_ylabel("score (%)")
    order = [r for r in rows if kinds.get(r) == "measured"] + [r for r in rows if kinds.get(r) != "measured"]
    ax.legend(handles=[handles[r] for r in order], fontsize="small", ncols=2 if len(rows) > 6 else 1)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _default_plot_rows(table: pd.DataFrame) -> list[str]:
    kinds = table.attrs.get("row_kinds", {})
    measured = [r for r in table.index if kinds.get(r) == "measured"]
    chosen = table.attrs.get("reference_row")
    if chosen:
        if table.attrs.get("kind") == "long_context":
            reference = [r for r in table.index if kinds.get(r) == "reference" and split_variant(r)[0] == chosen]
        else:
            reference = [chosen]
    else:
        reference = [r for r in table.index if kinds.get(r) == "reference"]
    return reference + measured


# ---------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen-eval-table",
        description="Leaderboard tables from qwen-eval runs beside the model card's reported numbers.")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="results.json files, run folders, folders of runs, or glob patterns")
    parser.add_argument("-o", "--out", metavar="STEM",
                        help="write STEM.md/.csv/.tex/.html/.png (and STEM-long_context.* for perplexity runs)")
    parser.add_argument("-f", "--formats", default=",".join(FORMATS),
                        help=f"comma-separated formats to write with --out (default: {','.join(FORMATS)})")
    parser.add_argument("--stderr", action="store_true", help="show standard errors: 66.3 ± 0.4")
    parser.add_argument("--reference-row", metavar="MODEL",
                        help="add a diff row (measured minus MODEL) under each measured row, e.g. Qwen-14B")
    parser.add_argument("--reference-models", metavar="A,B",
                        help="show only these reference rows (comma-separated), e.g. Qwen-7B,Qwen-14B")
    parser.add_argument("--reference", action="append", default=[], metavar="CSV",
                        help="another reference set in the layout of results/reference/*.csv (repeatable)")
    parser.add_argument("--no-model-card", action="store_true", help="leave out the model card's reference rows")
    parser.add_argument("--label", action="append", default=[], metavar="NAME=LABEL",
                        help="show model NAME as LABEL (repeatable)")
    parser.add_argument("--prefer", choices=PREFER, default="full",
                        help="which of conflicting runs fills a cell: full (default: a full run over a partial "
                             "`limit` run, then the newest) or newest")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except UserError as exc:
        print(f"qwen-eval-table: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    labels = {}
    for item in args.label:
        name, sep, label = item.partition("=")
        if not sep or not name or not label:
            raise UserError(f"--label {item!r}: expected NAME=LABEL, e.g. --label tiny=Tiny-Qwen")
        labels[name] = label
    extra = [load_reference(path) for path in args.reference]
    references = extra if args.no_model_card else [load_model_card(), load_long_context(), *extra]
    reference_models = [m.strip() for m in args.reference_models.split(",")] if args.reference_models else None

    runs = load_runs(args.paths)
    tables = build_tables(runs, references=references, reference_models=reference_models,
                          reference_row=args.reference_row, stderr=args.stderr, labels=labels, prefer=args.prefer)
    for kind, table in tables.items():
        for conflict in table.attrs["conflicts"]:
            sources = "; ".join(f"{r['source']} ({r['created']})" for r in conflict["runs"])
            print(f"qwen-eval-table: conflict: {conflict['row']} / {conflict['column']}: runs differ in "
                  f"{', '.join(conflict['differs'])}; showing {conflict['rule']}, {conflict['shown']} [{sources}]",
                  file=sys.stderr)
        stem = None
        if args.out:
            stem = args.out if kind == "benchmarks" else f"{args.out}-long_context"
            for path in write_table(table, stem, formats):
                print(f"qwen-eval-table: wrote {path}", file=sys.stderr)
        conflicts_file = f"{Path(stem).name}.conflicts.json" if stem and table.attrs["conflicts"] else None
        print(to_markdown(table, conflicts_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
