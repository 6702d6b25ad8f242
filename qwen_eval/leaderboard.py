"""What every leaderboard shares (the benchmark leaderboard, qwen_eval/tables.py; the long-context
table, tasks/arxiv_ppl_table.py): a measured row's identity (checkpoint, quantization, dtype,
protocol), the run that fills a cell and the conflicts between runs, which reference rows stand
beside the measured ones, and the DataFrame laid out with what each cell needs in `df.attrs`.

The rules (docs/tables-and-regression.md explains them for users):
- A row is one checkpoint (its name as the file or folder records it, never a config default)
  in one quantization, dtype and prompt protocol.
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
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from qwen_eval.errors import UserError
from qwen_eval.provenance import same_model
from qwen_eval.reference import ReferenceTable
from qwen_eval.run_files import Run, checkpoint_of, created, protocol_of

BASE_PROTOCOL = "base"
SEPARATOR = " · "
# What makes two runs of one row different measurements rather than repeats.
PROVENANCE_FIELDS = ("task", "task_version", "shots", "protocol", "prompt_fingerprint", "data.fingerprint",
                     "n_samples", "task_config.options", "config.task", "model.backend", "model.dtype",
                     "model.fingerprint", "model.max_length", "model.use_dynamic_ntk", "model.use_logn_attn",
                     "model.window_attn")
Results = Sequence[Mapping[str, Any] | Run]


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
class Measured:
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


def chosen_references(refs: Sequence[ReferenceTable], measured: Sequence[RowKey], reference_models: Any,
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


def as_runs(results: Results) -> list[Run]:
    return [item if isinstance(item, Run) else Run(path=None, results=dict(item)) for item in results]


def assemble(reported: Mapping[str, Mapping[Any, float]], measured: Mapping[str, Mapping[Any, list[Measured]]],
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


def pick_run(candidates: Sequence[Measured], row: str, column: str) -> tuple[Measured, dict[str, Any] | None]:
    """The run that fills a cell: a full run before any partial one; among partial ones the one
    that scored more documents; then the newest. The report (None when one run fills the cell)
    names every run; `differs` lists the PROVENANCE_FIELDS on which the runs as complete as the
    shown one disagree (empty: the others were only less complete or exact repeats)."""
    def rank(c: Measured) -> tuple:
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
