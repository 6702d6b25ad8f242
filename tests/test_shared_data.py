"""Where the tests look for the real benchmark data: only where the README says."""

from __future__ import annotations

from pathlib import Path

from conftest import shared_data_candidates


def test_shared_data_is_the_variable_or_beside_the_checkout_and_nowhere_else():
    assert shared_data_candidates({}, Path("/home/me/src/qwen-eval")) == [Path("/home/me/src/shared/data")]
    assert shared_data_candidates({"QWEN_EVAL_SHARED_DATA": "/data/bench"}, Path("/home/me/src/qwen-eval")) == [
        Path("/data/bench"), Path("/home/me/src/shared/data")]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "$QWEN_EVAL_SHARED_DATA" in readme and "../shared/data" in readme
