"""Shared pytest fixtures. No test reaches the network."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_candidates(environ: Mapping[str, str], repo: Path) -> list[Path]:
    """Where the real benchmark data (upstream layouts) may be, as the README says:
    $QWEN_EVAL_SHARED_DATA, else shared/data beside the checkout. Nowhere else."""
    return [Path(p) for p in (environ.get("QWEN_EVAL_SHARED_DATA"),) if p] + [repo.parent / "shared" / "data"]


SHARED_DATA_CANDIDATES = shared_data_candidates(os.environ, REPO)
SHARED_DATA = next((p for p in SHARED_DATA_CANDIDATES if (p / "mmlu").is_dir()), SHARED_DATA_CANDIDATES[0])

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Never the user's ~/.cache: module-scoped fixtures run before the per-test cache below.
os.environ["QWEN_EVAL_CACHE"] = tempfile.mkdtemp(prefix="qwen-eval-test-cache-")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real benchmark data (see SHARED_DATA); tests that need it skip, saying so, without it."""
    if not (SHARED_DATA / "mmlu").is_dir():
        pytest.skip(f"no benchmark data at {', '.join(map(str, SHARED_DATA_CANDIDATES))}: "
                    f"set QWEN_EVAL_SHARED_DATA=/path/to/shared/data")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own answer cache, never the user's ~/.cache."""
    monkeypatch.setenv("QWEN_EVAL_CACHE", str(tmp_path_factory.mktemp("cache")))


def shared_data_mismatches(items) -> list[str]:
    """The tests that take the `shared_data` fixture without the shared_data marker, or carry the
    marker without taking the fixture."""
    return [item.nodeid for item in items
            if ("shared_data" in item.fixturenames) != (item.get_closest_marker("shared_data") is not None)]


def pytest_collection_modifyitems(items):
    """A test reads the benchmark data exactly when its file marks it shared_data, so
    `-m shared_data` and `-m "not shared_data"` select by it; a mismatch stops the run."""
    mismatched = shared_data_mismatches(items)
    if mismatched:
        raise pytest.UsageError("the shared_data marker and the shared_data fixture go together; they do not in: "
                                + ", ".join(mismatched))
