"""Reported numbers every comparison table is built against (importable as `qwen_eval.reference`).

This folder is data first: `model_card.csv` (the Qwen-14B model card's benchmark table, percent),
`long_context.csv` (its arXiv perplexity table), `qwen2.5_coder_instruct.csv` (the Qwen2.5-Coder
report's instruct code table) and `sources.json` (what each file is, where it
comes from, when it was transcribed, the shot count of each benchmark column and the prompt
protocol its numbers were measured with). A user's own reference set loads the same way: a CSV
whose first column is `model`, one column per benchmark (or per context length), empty cells for
numbers not reported, and optionally a `sources.json` beside it with an entry under the CSV's file
name (keys name, source, retrieved, shots, protocol).

The loader lives here, beside its data, because this package *is* `qwen_eval.reference`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwen_eval.errors import UserError

if TYPE_CHECKING:  # pandas is imported where a table is read: a run that writes none starts faster
    import pandas as pd

SOURCES_FILE = "sources.json"
BASE_VARIANT = "base"


@dataclass(frozen=True, eq=False)
class ReferenceTable:
    """One table of reported numbers.

    values: index = row label as published (e.g. "Qwen-14B", "Qwen-7B + dynamic_ntk + logn");
      columns = benchmark names ("MMLU") or context lengths (ints); NaN = not reported.
    kind: "benchmarks" (percentages) or "long_context" (perplexities, lower is better).
    shots: benchmark column -> shot count, where known.
    """

    name: str
    kind: str
    values: pd.DataFrame
    source: str = ""
    retrieved: str | None = None
    shots: dict[str, int] = field(default_factory=dict)
    path: str = ""
    protocol: str = "base"  # the prompt protocol its numbers were measured with (leaderboards key on it)

    def provenance(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "retrieved": self.retrieved, "path": self.path,
                "protocol": self.protocol}


def split_variant(label: str) -> tuple[str, str]:
    """'Qwen-7B + dynamic_ntk + logn' -> ('Qwen-7B', 'dynamic_ntk+logn'); no suffix -> 'base'."""
    model, *variant = [part.strip() for part in label.split(" + ")]
    return model, "+".join(variant) or BASE_VARIANT


def variant_label(model: str, variant: str) -> str:
    """The inverse of split_variant: the model card's way of naming a long-context row."""
    if variant == BASE_VARIANT:
        return model
    return " + ".join([model, *variant.split("+")])


PUBLISHED = ("model_card.csv", "qwen2.5_coder_instruct.csv")  # the benchmark tables shipped here


def load_published() -> list[ReferenceTable]:
    """Every benchmark table shipped here: the Qwen-14B model card (base protocol) and the
    Qwen2.5-Coder report's instruct code table (instruct protocol)."""
    return [_load_packaged(name) for name in PUBLISHED]


def load_model_card() -> ReferenceTable:
    """The model card's benchmark table: 11 models, 8 benchmarks, with shot counts."""
    return _load_packaged("model_card.csv")


def load_long_context() -> ReferenceTable:
    """The model card's arXiv perplexity table (1K..32K tokens)."""
    return _load_packaged("long_context.csv")


def load_reference(path: str | Path) -> ReferenceTable:
    """A reference set from any CSV in the same layout as model_card.csv or long_context.csv."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"reference table {path}: no such file")
    sources_path = path.parent / SOURCES_FILE
    sources = _read_sources(sources_path) if sources_path.is_file() else {}
    return _parse(path, sources.get(path.name, {}))


def _load_packaged(name: str) -> ReferenceTable:
    folder = resources.files(__name__)
    with resources.as_file(folder / SOURCES_FILE) as sources_path:
        sources = _read_sources(sources_path)
    with resources.as_file(folder / name) as csv_path:
        return _parse(csv_path, sources.get(name, {}))


def _read_sources(path: Path) -> dict[str, Any]:
    try:
        sources = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(sources, dict):
        raise UserError(f"{path}: expected an object keyed by CSV file name")
    return sources


def _parse(path: Path, meta: dict[str, Any]) -> ReferenceTable:
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"reference table {path}: cannot read as CSV ({exc})") from None
    if frame.columns[0] != "model" or len(frame.columns) < 2:
        raise UserError(f"reference table {path}: the header must start with 'model' followed by one column per benchmark")
    frame = frame.set_index("model")
    if frame.index.has_duplicates:
        dup = frame.index[frame.index.duplicated()][0]
        raise UserError(f"reference table {path}: model {dup!r} appears twice")
    kind = "long_context" if all(str(c).isdigit() for c in frame.columns) else "benchmarks"
    values = pd.DataFrame(index=frame.index, columns=[int(c) if kind == "long_context" else c for c in frame.columns],
                          dtype=float)
    for model, row in frame.iterrows():
        for column, cell in row.items():
            key = int(column) if kind == "long_context" else column
            values.loc[model, key] = _cell_value(path, model, column, cell)
    shots = {str(k): int(v) for k, v in (meta.get("shots") or {}).items()}
    protocol = meta.get("protocol", "base")
    if not isinstance(protocol, str) or not protocol:
        raise UserError(f"{path.parent / SOURCES_FILE}: {path.name}: 'protocol' must be a protocol name such as "
                        f"\"base\" or \"instruct\"")
    return ReferenceTable(name=meta.get("name", path.stem), kind=kind, values=values,
                          source=meta.get("source", str(path)), retrieved=meta.get("retrieved"),
                          shots=shots, path=str(path), protocol=protocol)


def _cell_value(path: Path, model: str, column: str, cell: str) -> float:
    text = cell.strip()
    if text in ("", "-"):
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise UserError(f"reference table {path}: row {model!r}, column {column!r}: {text!r} is not a number "
                        "(leave the cell empty when not reported)") from None
