"""arxiv_ppl's long-context table: rows = model + variant (plain, dynamic NTK, + LogN, + window
attention), columns = context length, values = perplexity, beside the model card's long-context
numbers (qwen_eval/reference). qwen-eval-table builds it for the long-context runs it is given;
an arxiv_ppl run also writes it into its run folder (`ArxivPerplexity.write_artifacts`).
Rows, cells and references follow qwen_eval/leaderboard.py's rules, as the benchmark leaderboard does.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Mapping, Sequence

import pandas as pd

from qwen_eval.leaderboard import BASE_PROTOCOL, Measured, Results, RowKey, as_runs, assemble, chosen_references, row_key
from qwen_eval.reference import BASE_VARIANT, ReferenceTable, load_long_context, split_variant, variant_label
from qwen_eval.run_files import PPL_METRIC, is_long_context

VARIANT_ORDER = (BASE_VARIANT, "dynamic_ntk", "dynamic_ntk+logn", "dynamic_ntk+logn+window_attn")


def build_long_context_table(results: Results, *, references: Sequence[ReferenceTable] | None = None,
                             reference_models: Sequence[str] | None = None, reference_row: str | None = None,
                             stderr: bool = False, labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The long-context table: rows = model + variant, columns = context length, values = PPL.

    reference_row names a reference model (e.g. "Qwen-14B"); each measured variant is compared
    with that model's row of the same variant, where the reference reports one.
    """
    runs = [run for run in as_runs(results) if is_long_context(run.results)]
    refs = [ref for ref in (references if references is not None else [load_long_context()])
            if ref.kind == "long_context"]

    measured: dict[str, dict[int, list[Measured]]] = defaultdict(lambda: defaultdict(list))
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
                Measured(float(value), float(se) if isinstance(se, (int, float)) else None, run, order))
    model_order = {key: i for i, key in enumerate(dict.fromkeys(key for key, _ in variants.values()))}
    measured = {row: measured[row] for row in sorted(
        measured, key=lambda r: (model_order[variants[r][0]], *_variant_rank(variants[r][1])))}

    keys = list(model_order)
    chosen = chosen_references(refs, keys, reference_models, reference_row, lambda ref, label: split_variant(label)[0])
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
    table = assemble(reported, measured, diff_of, [headers[k] for k in lengths], headers)
    rows = {row: BASE_PROTOCOL for row in table.index}
    table.attrs.update(kind="long_context", decimals=2, show_stderr=stderr, reference_row=reference_row,
                       references=[ref.provenance() for ref in refs if any(r is ref for r, _ in chosen)],
                       units="perplexity", row_protocol=rows, column_protocol={h: BASE_PROTOCOL for h in headers.values()})
    return table


def _variant_rank(variant: str) -> tuple[int, str]:
    """The model card's order of variants (base first), then any others by name."""
    known = VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER)
    return (known, variant)
