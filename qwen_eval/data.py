"""Data-source helpers shared by tasks: local paths, the Hugging Face hub, the bundled samples."""

from __future__ import annotations

import functools
import gzip
import json
import os
import socket
import threading
import urllib.parse
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


def local_file(path: str | None, task_name: str, name: str, what: str) -> Path:
    """The user's `data.path` as the data file itself, or a folder holding it as `name`."""
    p = local_dir(path, task_name)
    return require_file(p / name if p.is_dir() else p, what)


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


def jsonl_rows(path: Path) -> tuple[list[dict[str, Any]], str]:
    """The rows of a .jsonl file and where they came from (for messages naming a bad row)."""
    return read_jsonl(path), str(path)


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
PROBE_SECONDS = 1.5  # a hub that answers at all answers a TCP connect well within this


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _probe(host: str, port: int, timeout: float) -> bool:
    """One TCP connection, given up after `timeout` seconds (name resolution included)."""
    answered: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answered.append(True)
        except OSError:
            answered.append(False)

    thread = threading.Thread(target=connect, daemon=True)  # getaddrinfo itself has no timeout
    thread.start()
    thread.join(timeout)
    return bool(answered and answered[0])


@functools.lru_cache(maxsize=1)
def hub_offline_reason() -> str | None:
    """Why the Hugging Face hub is out of reach (None when it answers), decided once per process.

    The offline variables (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE, TRANSFORMERS_OFFLINE) are
    honoured as they are; otherwise one quiet connection to the hub endpoint (HF_ENDPOINT, or the
    https proxy when one is set) decides. Without it, `datasets` spends about 27 s retrying and
    prints every attempt before it gives up.
    """
    for name in OFFLINE_VARIABLES:
        if _is_true(os.environ.get(name)):
            return f"{name}={os.environ[name]}"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY")
    target = urllib.parse.urlsplit(proxy or endpoint)
    if not target.hostname:
        return None  # an address we cannot parse: let `datasets` try
    try:
        port = target.port or (443 if target.scheme == "https" else 80)
    except ValueError:
        return None
    if _probe(target.hostname, port, PROBE_SECONDS):
        return None
    return f"no connection to {proxy or endpoint} within {PROBE_SECONDS:g}s"


def _datasets_offline() -> None:
    """Put `datasets` (and huggingface_hub) in offline mode: cached datasets still load, at once."""
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets.config
    import huggingface_hub.constants

    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    datasets.utils.logging.set_verbosity_error()  # no "using the cached version" warnings


def load_hub_dataset(task_name: str, dataset_id: str, config: str | None, split: str) -> list[dict[str, Any]]:
    """Rows of a Hugging Face dataset split through `datasets` (which caches it).

    Offline and not cached is a UserError, at once, that says how to use a local copy instead.
    """
    try:
        import datasets
    except ImportError:  # pragma: no cover - a declared dependency
        raise UserError("data.source=hub needs the `datasets` package: pip install datasets") from None
    offline = hub_offline_reason()
    if offline:
        _datasets_offline()
    name = f"{dataset_id}{'/' + config if config else ''} split {split}"
    try:
        ds = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as e:  # datasets raises many types for "offline", "not found", "no cache"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        why = (f"not in the local datasets cache, and the hub is out of reach: {offline}" if offline
               else first)
        raise UserError(
            f"task {task_name}: could not load hub dataset {name} ({why}); without network use "
            f"data.path=DIR with a local copy in the upstream layout, or data.source=sample") from None
    return [dict(row) for row in ds]
