"""The committed results are what their runs say: every README copy of a leaderboard is what
`qwen-eval-table` builds from the committed runs now, and the committed leaderboards keep the rules
tests/test_tables.py checks on fixture runs (rows named by checkpoint, partial cells marked,
references only beside their own model and protocol)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qwen_eval.run_files import load_runs
from qwen_eval.table_cli import BLOCK, update_readme
from qwen_eval.table_formats import format_table
from qwen_eval.leaderboard import row_key
from qwen_eval.tables import build_table

REPO = Path(__file__).resolve().parent.parent
READMES = sorted(p for p in [REPO / "README.md", *(REPO / "results").rglob("README.md")]
                 if BLOCK.search(p.read_text(encoding="utf-8")))
RUN_FOLDERS = sorted(p for p in (REPO / "results").glob("*/runs") if p.is_dir())


def test_there_are_generated_copies_to_check():
    assert READMES, "no README holds a generated leaderboard block"
    assert RUN_FOLDERS


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_readme_copy_is_what_its_runs_give(readme):
    problems = update_readme(readme, write=False)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("folder", RUN_FOLDERS, ids=lambda p: str(p.relative_to(REPO)))
def test_the_committed_leaderboard_keeps_the_rules(folder):
    runs = load_runs([folder])
    table = build_table(runs, stderr=True)
    kinds, protocols = table.attrs["row_kinds"], table.attrs["row_protocol"]
    cells = format_table(table)
    for run in runs:
        key = row_key(run.results)
        assert key.model not in ("qwen", "hf", "tiny") and key.dtype and key.quantization, run.describe()
    measured = [r for r in table.index if kinds[r] == "measured"]
    for row in measured:
        assert re.fullmatch(r"[^·]+ · [^·]+ · (float32|bfloat16|float16) · [\w+\-/]+", row), row
    for row in table.index:
        for column in table.columns:
            if table.attrs["column_protocol"][column] != protocols[row]:
                assert cells.loc[row, column] == "-", (row, column)  # two protocols never share a cell
    for row, columns in table.attrs["partial"].items():
        for column, (scored, of) in columns.items():
            assert cells.loc[row, column].endswith(f"(n={scored}/{of})†") and scored < of
    for row in [r for r in table.index if kinds[r] == "reference"]:
        model, _, protocol = row.split(" · ")
        assert any(m.startswith(model) and protocols[m] == protocol for m in measured), row
