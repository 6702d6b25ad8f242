"""The benchmark leaderboard: measured runs beside the published numbers of the same model and protocol.

    build_table   results.json dicts -> rows (checkpoint, quantization, dtype, protocol)
                  x columns (benchmark, shots, protocol)

A column is one benchmark at one shot count in one protocol: `MMLU (5-shot)`, `HumanEval (0-shot,
instruct)`. So two protocols never share a row or a cell, and a run at another shot count gets a
column of its own; the model card's columns come first, in its order. Rows, the run that fills a
cell, conflicts and reference rows follow qwen_eval/leaderboard.py (the rules every leaderboard
shares); arxiv_ppl's long-context table is tasks/arxiv_ppl_table.py; showing and writing tables:
qwen_eval/table_formats.py; the command, which builds every table the runs call for:
qwen_eval/table_cli.py.

The tables are numeric DataFrames (percent for accuracy-like metrics, perplexity as is; NaN where
nothing was measured or reported). What a cell needs beyond its number travels in `df.attrs`:
row kinds (reference / measured / diff), each row's and column's protocol, standard errors,
partial cells with their document counts, conflict flags and the conflicts report, and the
references' provenance.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Mapping, Sequence

import pandas as pd

from qwen_eval.leaderboard import (BASE_PROTOCOL, SEPARATOR, Measured, Results, RowKey, as_runs, assemble,
                                   chosen_references, row_key)
from qwen_eval.reference import ReferenceTable, load_model_card, load_published
from qwen_eval.run_files import headline, is_fraction_metric, is_long_context

MODEL_CARD_ORDER = ("MMLU", "C-Eval", "GSM8K", "MATH", "HumanEval", "MBPP", "MBPP+", "BBH", "CMMLU")


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


def _metric_value(results: Mapping[str, Any], metric: str) -> tuple[float, float | None] | None:
    metrics = results.get("metrics") or {}
    value = metrics.get(metric)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    se = metrics.get(f"{metric}_stderr")
    scale = 100.0 if is_fraction_metric(metric) else 1.0
    return float(value) * scale, (float(se) * scale if isinstance(se, (int, float)) and math.isfinite(se) else None)


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
    runs = [run for run in as_runs(results) if not is_long_context(run.results)]
    refs = [ref for ref in (references if references is not None else load_published())
            if ref.kind == "benchmarks"]
    card_shots = dict(load_model_card().shots)
    for ref in refs:
        card_shots.update(ref.shots)

    measured: dict[RowKey, dict[tuple, list[Measured]]] = defaultdict(lambda: defaultdict(list))
    for order, run in enumerate(runs):
        key = row_key(run.results)
        for column, metric in run_cells(run.results):
            cell = _metric_value(run.results, metric)
            if cell is not None:
                measured[key][(column, run.results.get("shots"), key.protocol)].append(Measured(*cell, run, order))

    chosen = chosen_references(refs, list(measured), reference_models, reference_row, lambda ref, label: label)
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
    table = assemble(reported, measured_rows, diff_of, [headers[k] for k in columns], headers)
    column_protocols = {p: i for i, p in enumerate(dict.fromkeys(k[2] for k in columns))}  # the sections' order
    table = table.loc[_beside_their_model(list(table.index), protocols, column_protocols)]
    table.attrs.update(kind="benchmarks", decimals=1, show_stderr=stderr, reference_row=reference_row,
                       references=[ref.provenance() for ref in refs if any(r is ref for r, _ in chosen)],
                       units="percent", row_protocol=protocols,
                       column_protocol={headers[k]: k[2] for k in columns},
                       data_versions=_data_versions(measured_rows, headers))
    return table


def _beside_their_model(rows: list[str], protocol_of: Mapping[str, str], protocol_rank: Mapping[str, int]) -> list[str]:
    """Rows by protocol (base first, then as first seen), and within a protocol grouped by model (the
    label's first part) in the order the models first appear, so a model's published row stands right
    above its measured rows; within a group the order is kept."""
    def group(row: str) -> tuple[int, str]:
        protocol = protocol_of.get(row, "")
        return protocol_rank.get(protocol, len(protocol_rank)), row.split(" · ")[0]

    first: dict[tuple[int, str], int] = {}
    for position, row in enumerate(rows):
        first.setdefault(group(row), position)
    order = sorted(range(len(rows)), key=lambda i: (group(rows[i])[0], first[group(rows[i])], i))
    return [rows[i] for i in order]


def _data_versions(measured: Mapping[str, Mapping[tuple, list[Measured]]], headers: Mapping[tuple, str]) -> dict[str, str]:
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
