"""Leaderboards: measured runs beside the published numbers of the same model and protocol.

    build_table               results.json dicts -> rows (checkpoint, quantization, dtype, protocol)
                              x columns (benchmark, shots, protocol)
    build_long_context_table  arxiv_ppl results -> rows (checkpoint ..., variant) x context length
    build_tables              both, as the runs call for them
(showing and writing them: qwen_eval/table_formats.py; the command: qwen_eval/table_cli.py)

The tables are numeric DataFrames (percent for accuracy-like metrics, perplexity as is; NaN where
nothing was measured or reported). What a cell needs beyond its number travels in `df.attrs`:
row kinds (reference / measured / diff), each row's and column's protocol, standard errors,
partial cells with their document counts, conflict flags and the conflicts report, and the
references' provenance.

The rules (docs/tables-and-regression.md explains them for users):
- A row is one checkpoint (its name as the file or folder records it, never a config default)
  in one quantization, dtype and prompt protocol. A column is one benchmark at one shot count in
  one protocol: `MMLU (5-shot)`, `HumanEval (0-shot, instruct)`. So two protocols never share a
  row or a cell, and a run at another shot count gets a column of its own.
- A reference row is shown beside measured rows of the same model and protocol only (or where
  asked for by name), and its label names the reference table it comes from.
- A full run (it scored every document of its data) always fills a cell before a partial one (a
  `limit` run); among partial runs the one that scored more documents, then the newest. A partial
  cell says how many documents it scored, in every format.
- Conflicts: two equally complete runs of one row that fill the same cell but differ in
  PROVENANCE_FIELDS. The newest is shown, the cell marked `*`, the conflict reported.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from qwen_eval.errors import UserError
from qwen_eval.provenance import same_model
from qwen_eval.reference import (BASE_VARIANT, ReferenceTable, load_long_context, load_model_card, load_published,
                                 split_variant, variant_label)
from qwen_eval.run_files import (PPL_METRIC, Run, checkpoint_of, created, headline, is_fraction_metric,
                                 protocol_of)

BASE_PROTOCOL = "base"
SEPARATOR = " · "
# What makes two runs of one row different measurements rather than repeats.
PROVENANCE_FIELDS = ("task", "task_version", "shots", "protocol", "prompt_fingerprint", "data.fingerprint",
                     "n_samples", "task_config.options", "config.task", "model.backend", "model.dtype",
                     "model.fingerprint", "model.max_length", "model.use_dynamic_ntk", "model.use_logn_attn",
                     "model.window_attn")
VARIANT_ORDER = (BASE_VARIANT, "dynamic_ntk", "dynamic_ntk+logn", "dynamic_ntk+logn+window_attn")
MODEL_CARD_ORDER = ("MMLU", "C-Eval", "GSM8K", "MATH", "HumanEval", "MBPP", "MBPP+", "BBH", "CMMLU")

Results = Sequence[Mapping[str, Any] | Run]


# ---------------------------------------------------------------------------------------------
# What a run is: its row and its cells


@dataclass(frozen=True)
class RowKey:
    """The identity of a measured row."""

    model: str
    quantization: str | None
    dtype: str | None
    protocol: str

    def label(self, labels: Mapping[str, str] | None = None) -> str:
        name = (labels or {}).get(self.model, self.model)
        return SEPARATOR.join(p for p in (name, self.quantization, self.dtype, self.protocol) if p)


def row_key(results: Mapping[str, Any]) -> RowKey:
    checkpoint = checkpoint_of(results)
    dtype = (results.get("model") or {}).get("dtype")
    return RowKey(str(checkpoint["name"]), checkpoint.get("quantization"), str(dtype) if dtype else None,
                  protocol_of(results))


def column_header(column: str, shots: int | None, protocol: str) -> str:
    inside = [f"{shots}-shot"] if shots is not None else []
    if protocol != BASE_PROTOCOL:
        inside.append(protocol)
    return f"{column} ({', '.join(inside)})" if inside else column


def run_cells(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(column, metric) of each cell a run fills: `table_columns` where recorded, else its
    model-card column (or task name) with the headline metric."""
    columns = results.get("table_columns")
    if isinstance(columns, Mapping) and columns:
        return [(str(c), str(m)) for c, m in columns.items()]
    metric = headline(results)[0]
    return [(results.get("model_card_column") or results["task"], metric)]


def documents_scored(results: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(documents scored, documents in the benchmark's data) of a run; the second is None for a
    run that did not record it (then a run with `limit` set counts as partial)."""
    total = (results.get("data") or {}).get("n_documents")
    n = results.get("n_samples")
    return (n if isinstance(n, int) else None), (total if isinstance(total, int) else None)


def is_partial(results: Mapping[str, Any]) -> bool:
    n, total = documents_scored(results)
    if total is not None and n is not None:
        return n < total
    limit = (results.get("config") or {}).get("limit")
    return isinstance(limit, int) and not isinstance(limit, bool)


@dataclass(frozen=True)
class _Measured:
    value: float
    stderr: float | None
    run: Run
    order: int  # position in the input: breaks ties between runs created at the same time

    @property
    def partial(self) -> bool:
        return is_partial(self.run.results)

    @property
    def documents(self) -> tuple[int | None, int | None]:
        return documents_scored(self.run.results)


def _metric_value(results: Mapping[str, Any], metric: str) -> tuple[float, float | None] | None:
    metrics = results.get("metrics") or {}
    value = metrics.get(metric)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    se = metrics.get(f"{metric}_stderr")
    scale = 100.0 if is_fraction_metric(metric) else 1.0
    return float(value) * scale, (float(se) * scale if isinstance(se, (int, float)) and math.isfinite(se) else None)


# ---------------------------------------------------------------------------------------------
# Building


def build_table(results: Results, *, references: Sequence[ReferenceTable] | None = None,
                reference_models: Sequence[str] | None = None, reference_row: str | None = None,
                stderr: bool = False, labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The benchmark leaderboard: reference rows of the measured models, then each measured row
    (and its diff row).

    results: results.json dicts (or `Run`s); long-context runs are left to build_long_context_table.
    references: reference tables to draw rows from; None = every published table shipped in
      qwen_eval/reference (the model card, the Qwen2.5-Coder instruct table); [] = none.
    reference_models: show these reference rows whatever was measured (None: those of the same
      model and protocol as a measured row).
    reference_row: add, under each measured row of that reference's protocol, a row
      `<measured> - <reference_row>` (points).
    stderr: show `value ± stderr` in measured cells.
    labels: checkpoint name -> the name its rows show.
    """
    runs = [run for run in _as_runs(results) if not is_long_context(run.results)]
    refs = [ref for ref in (references if references is not None else load_published())
            if ref.kind == "benchmarks"]
    card_shots = dict(load_model_card().shots)
    for ref in refs:
        card_shots.update(ref.shots)

    measured: dict[RowKey, dict[tuple, list[_Measured]]] = defaultdict(lambda: defaultdict(list))
    for order, run in enumerate(runs):
        key = row_key(run.results)
        for column, metric in run_cells(run.results):
            cell = _metric_value(run.results, metric)
            if cell is not None:
                measured[key][(column, run.results.get("shots"), key.protocol)].append(_Measured(*cell, run, order))

    chosen = _chosen_references(refs, list(measured), reference_models, reference_row,
                                lambda ref, label: label)
    reported: dict[str, dict[tuple, float]] = {}
    protocols: dict[str, str] = {}
    for ref, model in chosen:
        label = reference_label(model, ref)
        reported[label] = {(column, ref.shots.get(column, card_shots.get(column)), ref.protocol): value
                           for column, value in ref.values.loc[model].items() if not math.isnan(value)}
        protocols[label] = ref.protocol

    protocol_rank = {p: i for i, p in enumerate(dict.fromkeys([BASE_PROTOCOL, *(k.protocol for k in measured)]))}
    in_order = sorted(measured, key=lambda k: protocol_rank[k.protocol])  # stable: first seen within a protocol
    measured_rows = {key.label(labels): measured[key] for key in in_order}
    protocols.update({key.label(labels): key.protocol for key in measured})
    diff_of: dict[str, tuple[str, str]] = {}
    if reference_row:
        target = next(((ref, m) for ref, m in chosen if m == reference_row), None)
        for key in measured:
            if target and key.protocol == target[0].protocol:
                diff_of[key.label(labels)] = (reference_label(reference_row, target[0]), f"{key.label(labels)} - {reference_row}")
        for _, (_, diff_label) in diff_of.items():
            protocols[diff_label] = target[0].protocol

    keys = [k for row in reported.values() for k in row] + [k for row in measured_rows.values() for k in row]
    columns = _order_benchmark_columns(keys, card_shots)
    headers = {key: column_header(*key) for key in columns}
    table = _assemble(reported, measured_rows, diff_of, [headers[k] for k in columns], headers)
    table.attrs.update(kind="benchmarks", decimals=1, show_stderr=stderr, reference_row=reference_row,
                       references=[ref.provenance() for ref in refs if any(r is ref for r, _ in chosen)],
                       units="percent", row_protocol=protocols,
                       column_protocol={headers[k]: k[2] for k in columns},
                       data_versions=_data_versions(measured_rows, headers))
    return table


def _data_versions(measured: Mapping[str, Mapping[tuple, list[_Measured]]], headers: Mapping[tuple, str]) -> dict[str, str]:
    """column -> the data release its runs read, where a task records one (`extra.data.version`:
    MBPP+ v0.1.0 is not EvalPlus's current v0.2.0)."""
    found: dict[str, set[str]] = defaultdict(set)
    for cells in measured.values():
        for key, candidates in cells.items():
            for c in candidates:
                data = ((c.run.results.get("extra") or {}).get("data") or {})
                if data.get("version"):
                    tasks = f", {data['tasks']} tasks" if data.get("tasks") else ""
                    found[headers[key]].add(f"{data['version']}{tasks}")
    return {column: " / ".join(sorted(v)) for column, v in found.items()}


def reference_label(model: str, ref: ReferenceTable) -> str:
    return SEPARATOR.join((model, ref.name, ref.protocol))


def _chosen_references(refs: Sequence[ReferenceTable], measured: Sequence[RowKey], reference_models: Any,
                       reference_row: str | None, model_of: Callable[[ReferenceTable, str], str]
                       ) -> list[tuple[ReferenceTable, str]]:
    """(reference table, row label) of each reference row to show: asked for by name, or of the
    same model and protocol as a measured row; every row when nothing was measured."""
    asked = set(reference_models or ()) | ({reference_row} if reference_row else set())
    known = {model_of(ref, label) for ref in refs for label in ref.values.index}
    for name in sorted(asked - known):
        flag = "--reference-row" if name == reference_row else "--reference-models"
        raise UserError(f"{flag} {name!r} is not a reference row; choose one of: {', '.join(sorted(known))}")
    chosen = []
    for ref in refs:
        for label in ref.values.index:
            model = model_of(ref, label)
            matches = any(same_model(model, key.model) and key.protocol == ref.protocol for key in measured)
            if model in asked or (reference_models is None and matches) or (not measured and not asked):
                chosen.append((ref, label))
    return chosen


def build_long_context_table(results: Results, *, references: Sequence[ReferenceTable] | None = None,
                             reference_models: Sequence[str] | None = None, reference_row: str | None = None,
                             stderr: bool = False, labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The long-context table: rows = model + variant, columns = context length, values = PPL.

    reference_row names a reference model (e.g. "Qwen-14B"); each measured variant is compared
    with that model's row of the same variant, where the reference reports one.
    """
    runs = [run for run in _as_runs(results) if is_long_context(run.results)]
    refs = [ref for ref in (references if references is not None else [load_long_context()])
            if ref.kind == "long_context"]

    measured: dict[str, dict[int, list[_Measured]]] = defaultdict(lambda: defaultdict(list))
    variants: dict[str, tuple[RowKey, str]] = {}
    for order, run in enumerate(runs):
        key = row_key(run.results)
        metrics = run.results["metrics"]
        for name, value in metrics.items():
            match = PPL_METRIC.match(name)
            if not match or not isinstance(value, (int, float)):
                continue
            row = variant_label(key.label(labels), match["variant"])
            variants[row] = (key, match["variant"])
            se = metrics.get(f"{name}_stderr")
            measured[row][int(match["length"])].append(
                _Measured(float(value), float(se) if isinstance(se, (int, float)) else None, run, order))
    model_order = {key: i for i, key in enumerate(dict.fromkeys(key for key, _ in variants.values()))}
    measured = {row: measured[row] for row in sorted(
        measured, key=lambda r: (model_order[variants[r][0]], *_variant_rank(variants[r][1])))}

    keys = list(model_order)
    chosen = _chosen_references(refs, keys, reference_models, reference_row, lambda ref, label: split_variant(label)[0])
    reported = {label: {length: v for length, v in ref.values.loc[label].items() if not math.isnan(v)}
                for ref, label in chosen}
    diff_of: dict[str, tuple[str, str]] = {}
    if reference_row:
        for row, (key, variant) in variants.items():
            target = variant_label(reference_row, variant)
            if target in reported:
                diff_of[row] = (target, f"{row} - {reference_row}")

    lengths = sorted({k for row in reported.values() for k in row} | {k for row in measured.values() for k in row})
    headers = {length: str(length) for length in lengths}
    table = _assemble(reported, measured, diff_of, [headers[k] for k in lengths], headers)
    rows = {row: BASE_PROTOCOL for row in table.index}
    table.attrs.update(kind="long_context", decimals=2, show_stderr=stderr, reference_row=reference_row,
                       references=[ref.provenance() for ref in refs if any(r is ref for r, _ in chosen)],
                       units="perplexity", row_protocol=rows, column_protocol={h: BASE_PROTOCOL for h in headers.values()})
    return table


def build_tables(results: Results, **options: Any) -> dict[str, pd.DataFrame]:
    """Every table the runs call for: "benchmarks" and/or "long_context"."""
    runs = _as_runs(results)
    long_runs = [run for run in runs if is_long_context(run.results)]
    tables: dict[str, pd.DataFrame] = {}
    if len(long_runs) < len(runs) or not runs:
        bench_options = dict(options)
        refs = options.get("references")
        bench_refs = [r for r in (refs if refs is not None else load_published()) if r.kind == "benchmarks"]
        known = {m for ref in bench_refs for m in ref.values.index}
        bench_options["reference_models"] = _known(options.get("reference_models"), known)
        if bench_options.get("reference_row") not in known:
            bench_options["reference_row"] = None
        tables["benchmarks"] = build_table(runs, **bench_options)
    if long_runs:
        long_options = dict(options)
        refs = options.get("references")
        long_refs = [r for r in (refs if refs is not None else [load_long_context()]) if r.kind == "long_context"]
        known = {split_variant(label)[0] for ref in long_refs for label in ref.values.index}
        long_options["reference_models"] = _known(options.get("reference_models"), known)
        if long_options.get("reference_row") not in known:
            long_options["reference_row"] = None  # a benchmark-table row (e.g. LLaMA2-7B) the long-context table lacks
        tables["long_context"] = build_long_context_table(long_runs, **long_options)
    return tables


def _known(names: Sequence[str] | None, known: set[str]) -> list[str] | None:
    """The names of `names` one kind of table has (`--reference-models` serves both tables)."""
    if names is None:
        return None
    unknown = [n for n in names if not any(n == k for k in known)]
    return [n for n in names if n not in unknown] if len(unknown) < len(names) else list(names)


def is_long_context(results: Mapping[str, Any]) -> bool:
    return any(PPL_METRIC.match(name) for name in results.get("metrics", {}))


def _as_runs(results: Results) -> list[Run]:
    return [item if isinstance(item, Run) else Run(path=None, results=dict(item)) for item in results]


def _order_benchmark_columns(keys: Sequence[tuple[str, int | None, str]], card_shots: Mapping[str, int]) -> list[tuple]:
    """Protocols in order (base first, then as first seen); within one, the model card's columns
    in its order, each followed by its other shot counts, then the rest as first seen."""
    first_seen: dict[str, int] = {}
    protocol_seen: dict[str, int] = {BASE_PROTOCOL: -1}
    for column, _, protocol in keys:
        first_seen.setdefault(column, len(first_seen))
        protocol_seen.setdefault(protocol, len(protocol_seen))

    def rank(key: tuple[str, int | None, str]) -> tuple:
        column, shots, protocol = key
        card = MODEL_CARD_ORDER.index(column) if column in MODEL_CARD_ORDER else len(MODEL_CARD_ORDER) + first_seen[column]
        return (protocol_seen[protocol], card, shots != card_shots.get(column), -1 if shots is None else shots)

    return sorted(set(keys), key=rank)


def _assemble(reported: Mapping[str, Mapping[Any, float]], measured: Mapping[str, Mapping[Any, list[_Measured]]],
              diff_of: Mapping[str, tuple[str, str]], columns: list[str], headers: Mapping[Any, str]) -> pd.DataFrame:
    """Lay out rows (reference, then each measured row followed by its diff row) and pick each
    measured cell's run."""
    values: dict[str, dict[str, float]] = {}
    stderrs: dict[str, dict[str, float]] = {}
    kinds: dict[str, str] = {}
    flags: dict[str, list[str]] = {}
    partial: dict[str, dict[str, tuple[int | None, int | None]]] = {}  # row -> column -> (scored, of)
    conflicts: list[dict[str, Any]] = []
    for label, row in reported.items():
        values[label] = {headers[k]: v for k, v in row.items()}
        kinds[label] = "reference"
    for label, row in measured.items():
        values[label], stderrs[label], kinds[label] = {}, {}, "measured"
        for key, candidates in row.items():
            column = headers[key]
            shown, conflict = pick_run(candidates, label, column)
            values[label][column] = shown.value
            if shown.partial:
                partial.setdefault(label, {})[column] = shown.documents
            if shown.stderr is not None:
                stderrs[label][column] = shown.stderr
            if conflict:
                if conflict["differs"]:
                    flags.setdefault(label, []).append(column)
                conflicts.append(conflict)
        if label in diff_of:
            target, diff_label = diff_of[label]
            common = [c for c in values[label] if c in values.get(target, {})]
            values[diff_label] = {c: values[label][c] - values[target][c] for c in common}
            stderrs[diff_label] = {c: stderrs[label][c] for c in common if c in stderrs[label]}
            kinds[diff_label] = "diff"
            if label in partial:
                partial[diff_label] = {c: n for c, n in partial[label].items() if c in common}
    table = pd.DataFrame([[values[r].get(c, math.nan) for c in columns] for r in values],
                         index=pd.Index(list(values), name="model"), columns=columns, dtype=float)
    table.attrs.update(row_kinds=kinds, stderr=stderrs, flags=flags, conflicts=conflicts, partial=partial)
    return table


def pick_run(candidates: Sequence[_Measured], row: str, column: str) -> tuple[_Measured, dict[str, Any] | None]:
    """The run that fills a cell: a full run before any partial one; among partial ones the one
    that scored more documents; then the newest. The report (None when one run fills the cell)
    names every run; `differs` lists the PROVENANCE_FIELDS on which the runs as complete as the
    shown one disagree (empty: the others were only less complete or exact repeats)."""
    def rank(c: _Measured) -> tuple:
        return (not c.partial, c.documents[0] or 0, created(c.run.results), c.order)

    ordered = sorted(candidates, key=rank)
    shown = ordered[-1]
    if len(ordered) == 1:
        return shown, None
    peers = [c for c in ordered if (not c.partial, c.documents[0]) == (not shown.partial, shown.documents[0])]
    provenances = [provenance(c.run.results) for c in peers]
    differs = [name for name in PROVENANCE_FIELDS
               if len({json.dumps(p[name], sort_keys=True, default=str) for p in provenances}) > 1]
    if not differs and len(peers) == len(ordered):
        return shown, None  # exact repeats: the newest, silently
    everyone = {id(c): provenance(c.run.results) for c in ordered}
    return shown, {
        "row": row, "column": column, "differs": differs, "shown": shown.run.describe(),
        "rule": "the full run, else the one that scored the most documents, then the newest",
        "runs": [{"source": c.run.describe(), "created": c.run.results.get("created"), "value": round(c.value, 4),
                  "documents": c.documents[0], "of": c.documents[1], "partial": c.partial,
                  **{name: everyone[id(c)][name] for name in differs}} for c in ordered],
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
