"""Data-source helpers shared by tasks: local paths, the Hugging Face hub, the bundled samples."""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path
from typing import Any

from qwen_eval.errors import UserError


def sample_dir(task_name: str) -> Path:
    """The folder of the small sample a task ships in the package (tasks/data/<task>/)."""
    return Path(str(resources.files("qwen_eval.tasks") / "data" / task_name))


def local_dir(path: str | None, task_name: str) -> Path:
    """The user's `data.path`, checked to exist."""
    if not path:
        raise UserError(f"task {task_name}: data.source=local needs data.path=DIR (the upstream layout)")
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"task {task_name}: data.path {p} does not exist; point data.path at a local "
                        f"copy of the dataset or use data.source=sample")
    return p


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise UserError(f"missing {what}: {path} not found")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl (or .jsonl.gz) file; a bad line is an error naming the file and line."""
    opener = gzip.open if path.name.endswith(".gz") else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix or remove the line") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    return rows


def load_hub_dataset(task_name: str, dataset_id: str, config: str | None, split: str) -> list[dict[str, Any]]:
    """Rows of a Hugging Face dataset split through `datasets` (which caches it).

    Offline and not cached is a UserError that says how to use a local copy instead.
    """
    try:
        import datasets
    except ImportError:  # pragma: no cover - a declared dependency
        raise UserError("data.source=hub needs the `datasets` package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as e:  # datasets raises many types for "offline", "not found", "no cache"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"task {task_name}: could not load hub dataset {dataset_id}"
            f"{'/' + config if config else ''} split {split} ({first}); without network use "
            f"data.path=DIR with a local copy in the upstream layout, or data.source=sample") from None
    return [dict(row) for row in ds]
