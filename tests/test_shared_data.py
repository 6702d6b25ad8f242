"""Where the tests look for the real benchmark data: only where the README says; and which tests
need it: exactly those marked shared_data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from conftest import shared_data_candidates, shared_data_mismatches


def test_shared_data_is_the_variable_or_beside_the_checkout_and_nowhere_else():
    assert shared_data_candidates({}, Path("/home/me/src/qwen-eval")) == [Path("/home/me/src/shared/data")]
    assert shared_data_candidates({"QWEN_EVAL_SHARED_DATA": "/data/bench"}, Path("/home/me/src/qwen-eval")) == [
        Path("/data/bench"), Path("/home/me/src/shared/data")]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "$QWEN_EVAL_SHARED_DATA" in readme and "../shared/data" in readme


@dataclass
class _Item:
    nodeid: str
    fixturenames: list[str]
    markers: set[str] = field(default_factory=set)

    def get_closest_marker(self, name: str):
        return name if name in self.markers else None


def test_a_test_reading_the_data_without_the_marker_or_marked_without_reading_it_is_named():
    items = [_Item("reads", ["shared_data", "tmp_path"], {"shared_data"}), _Item("plain", ["tmp_path"]),
             _Item("unmarked", ["reference", "shared_data"]), _Item("marked", ["tmp_path"], {"shared_data"})]
    assert shared_data_mismatches(items) == ["unmarked", "marked"]
