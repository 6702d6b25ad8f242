"""Shared pytest fixtures. No test reaches the network."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Never the user's ~/.cache: module-scoped fixtures run before the per-test cache below.
os.environ["QWEN_EVAL_CACHE"] = tempfile.mkdtemp(prefix="qwen-eval-test-cache-")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real benchmark data in upstream layouts (../shared/data beside the checkout)."""
    assert SHARED_DATA.is_dir(), f"{SHARED_DATA} missing: clone the repo next to shared/"
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own answer cache, never the user's ~/.cache."""
    monkeypatch.setenv("QWEN_EVAL_CACHE", str(tmp_path_factory.mktemp("cache")))
