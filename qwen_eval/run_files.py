"""Reading finished runs: results.json and the samples.jsonl beside it.

A run folder holds `results.json` (the output contract) and `samples.jsonl` (one scored document
per line), or `samples.jsonl.gz` where a large run is kept compressed (a full MMLU run's prompts are
48 MB, 4 MB gzipped). Tools that read many runs (`qwen-eval-table`, `qwen-eval-compare`) accept results.json
files, run folders, folders of run folders (searched recursively) and glob patterns.
"""

from __future__ import annotations

import glob
import gzip
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from qwen_eval.errors import UserError

RESULTS_FILE = "results.json"
SAMPLES_FILE = "samples.jsonl"
SAMPLES_FILE_GZ = "samples.jsonl.gz"

# Metrics that are not fractions in [0, 1]: shown as they are, and lower is better.
_LOWER_IS_BETTER = re.compile(r"(^|/)(ppl|perplexity|loss|bpb|bpc|bits_per_byte)(@|$|_)")
# The long-context metrics of arxiv_ppl: `<variant>/ppl@<length>`.
PPL_METRIC = re.compile(r"^(?P<variant>.+)/ppl@(?P<length>\d+)$")


@dataclass(frozen=True, eq=False)
class Run:
    """One results.json and where it was read from (None for results handed over in memory)."""

    path: Path | None
    results: dict[str, Any]

    @property
    def samples_path(self) -> Path | None:
        return None if self.path is None else samples_file(self.path.parent)

    def describe(self) -> str:
        """How to name this run in a message: its file, else task, model and time."""
        if self.path is not None:
            return str(self.path)
        model = (self.results.get("model") or {}).get("name")
        return f"{self.results.get('task')} run of {model} created {self.results.get('created', '?')}"


def is_fraction_metric(name: str) -> bool:
    """Accuracy-like metrics are fractions (shown x100); perplexities and losses are not."""
    return not _LOWER_IS_BETTER.search(name)


def is_long_context(results: Mapping[str, Any]) -> bool:
    """A long-context run (arxiv_ppl): its metrics are `<variant>/ppl@<length>`."""
    return any(PPL_METRIC.match(name) for name in results.get("metrics", {}))


def higher_is_better(name: str) -> bool:
    return is_fraction_metric(name)


def find_results(patterns: Iterable[str | Path]) -> list[Path]:
    """Expand files, folders (searched recursively for results.json) and glob patterns.

    Order is stable (sorted within each pattern, patterns in the order given); a file named twice
    is read once.
    """
    found: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        if glob.has_magic(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
        else:
            matches = [Path(text)]
            if not matches[0].exists():
                raise UserError(f"{text}: no such file or folder")
        files: list[Path] = []
        for match in matches:
            if match.is_dir():
                files += sorted(match.rglob(RESULTS_FILE))
            elif match.is_file():
                files.append(match)
        if not files:
            raise UserError(f"{text}: no {RESULTS_FILE} found there")
        found += files
    unique: dict[Path, None] = {}
    for f in found:
        unique.setdefault(f.resolve(), None)
    return list(unique)


def read_results(path: str | Path) -> dict[str, Any]:
    """Read and check one results.json: the fields every reader relies on must be there."""
    path = Path(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(results, dict):
        raise UserError(f"{path}: expected a JSON object (a qwen-eval results.json)")
    if not isinstance(results.get("task"), str):
        raise UserError(f"{path}: field 'task' missing; is this a qwen-eval results.json?")
    if not isinstance(results.get("metrics"), dict):
        raise UserError(f"{path}: field 'metrics' missing or not an object")
    model = results.get("model")
    if not isinstance(model, dict) or not model.get("name"):
        raise UserError(f"{path}: field 'model.name' missing")
    return results


def load_runs(patterns: Iterable[str | Path]) -> list[Run]:
    return [Run(path=p, results=read_results(p)) for p in find_results(patterns)]


def headline(results: Mapping[str, Any]) -> tuple[str, float, float | None]:
    """(metric name, value, stderr) of the run's headline metric."""
    block = results.get("headline") or {}
    metric = block.get("metric")
    if metric is None:
        raise UserError(f"results for task {results.get('task')!r}: field 'headline.metric' missing")
    metrics = results.get("metrics", {})
    value = block.get("value", metrics.get(metric))
    stderr = block.get("stderr", metrics.get(f"{metric}_stderr"))
    if not isinstance(value, (int, float)):
        raise UserError(f"results for task {results.get('task')!r}: headline metric {metric!r} has no value")
    return metric, float(value), _number_or_none(stderr)


def protocol_of(results: Mapping[str, Any]) -> str:
    """The prompt protocol a run asked in: the task's prompt style ("base", "instruct",
    "qwen_chat"), "chat" for a base prompt sent as a chat turn (`chat.enabled`, "-multiturn" with
    the shots as turns), "+system" / "+template" for a system prompt or template of the user's,
    "/clean" for protocol=clean. Derived from the recorded config, so older runs get it too."""
    options = (results.get("task_config") or {}).get("options") or {}
    chat = (results.get("config") or {}).get("chat") or {}
    label = str(options.get("prompt") or "base")
    if chat.get("enabled") and label == "base":
        label = "chat-multiturn" if chat.get("fewshot_as_multiturn") else "chat"
    if chat.get("system") is not None:
        label += "+system"
    if chat.get("template"):
        label += "+template"
    if results.get("protocol") == "clean":
        label += "/clean"
    return label


def checkpoint_of(results: Mapping[str, Any]) -> dict[str, Any]:
    """What a run's model was, as recorded (`model.checkpoint`); for a run written before that
    record existed, the name of the file or folder it read, else the backend's name."""
    model = results.get("model") or {}
    if isinstance(model.get("checkpoint"), dict) and model["checkpoint"].get("name"):
        return model["checkpoint"]
    path = model.get("path")
    name = Path(str(path)).stem if path else str(model.get("name") or "?")
    return {"name": name.removesuffix(" (chat)"), "quantization": None, "format": None}


def created(results: Mapping[str, Any]) -> datetime:
    """When the run was written; runs without a timestamp sort first."""
    text = results.get("created")
    if isinstance(text, str):
        try:
            stamp = datetime.fromisoformat(text)
        except ValueError:
            stamp = None
        if stamp is not None:
            return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
    return datetime.min.replace(tzinfo=timezone.utc)


def samples_file(folder: Path) -> Path:
    """A run folder's samples.jsonl, else its samples.jsonl.gz where only that exists."""
    plain, packed = folder / SAMPLES_FILE, folder / SAMPLES_FILE_GZ
    return packed if packed.is_file() and not plain.is_file() else plain


def read_samples(path: str | Path) -> dict[str, float]:
    """doc_id -> score from a samples.jsonl file, or a gzipped one ending .gz (a bad line is a
    UserError naming it)."""
    path = Path(path)
    scores: dict[str, float] = {}
    try:
        # one record a line: JSON keeps U+2028 and friends raw, which str.splitlines() would split on
        lines = read_samples_text(path).split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            doc_id, score = str(record["doc_id"]), float(record["score"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UserError(f"{path}:{number}: expected a JSON object with 'doc_id' and a numeric 'score'") from None
        scores[doc_id] = score
    return scores


def read_samples_text(path: Path) -> str:
    """The text of samples.jsonl, decompressed when the name ends .gz."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    return path.read_text(encoding="utf-8")


def _number_or_none(value: Any) -> float | None:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None
