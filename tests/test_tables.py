"""qwen-eval-table: runs written here as results.json files -> the model card's layout in every format.

The runs: `tiny` (MMLU twice with different protocols = a conflict, GSM8K, MMLU at 0 shots, PIQA
outside the model card), `small` (MMLU, and C-Eval twice with identical provenance = a harmless
duplicate); every other benchmark is missing for both. Plus long-context (arxiv_ppl) runs.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from qwen_eval.errors import UserError
from qwen_eval.reference import load_reference
from qwen_eval.run_files import load_runs
from qwen_eval.tables import (build_long_context_table, build_table, build_tables, format_table, main,
                              to_latex, to_markdown, write_table)

MMLU, CEVAL, GSM8K = "MMLU (5-shot)", "C-Eval (5-shot)", "GSM8K (8-shot)"


def results(task: str, model: str, value: float, *, stderr: float | None = 0.01, shots: int = 5,
            column: str | None = None, metric: str = "acc", protocol: str = "qwen",
            created: str = "2026-11-28T10:00:00+00:00", data_fingerprint: str = "data-1",
            metrics: dict | None = None) -> dict:
    """A results.json in the runner's contract."""
    return {
        "task": task, "task_version": "1", "shots": shots, "protocol": protocol,
        "model": {"name": model, "backend": "qwen", "path": None, "dtype": "float32", "fingerprint": f"{model}-w"},
        "metrics": metrics if metrics is not None else {metric: value, f"{metric}_stderr": stderr},
        "headline": {"metric": metric, "value": value, "stderr": stderr},
        "model_card_column": column, "n_samples": 200, "requests": {"total": 200, "cached": 0},
        "data": {"source": "sample", "path": None, "fingerprint": data_fingerprint},
        "config": {"task": {"name": task}}, "versions": {"qwen_eval": "0.1.0"}, "git_commit": "abc",
        "timing": {"wall_seconds": 1.0}, "created": created,
    }


def write_run(root: Path, name: str, payload: dict) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(payload), encoding="utf-8")
    return folder


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    root = tmp_path / "runs"
    write_run(root, "tiny-mmlu-old", results("mmlu", "tiny", 0.2512, stderr=0.0123, column="MMLU"))
    write_run(root, "tiny-mmlu-new", results("mmlu", "tiny", 0.2874, stderr=0.0131, column="MMLU", protocol="clean",
                                             created="2026-11-28T12:00:00+00:00"))
    write_run(root, "tiny-mmlu-0shot", results("mmlu", "tiny", 0.2655, shots=0, column="MMLU"))
    write_run(root, "tiny-gsm8k", results("gsm8k", "tiny", 0.0204, stderr=0.0039, shots=8, column="GSM8K",
                                          metric="exact_match"))
    write_run(root, "tiny-piqa", results("piqa", "tiny", 0.5511, shots=0))
    write_run(root, "small-mmlu", results("mmlu", "small", 0.4049, stderr=0.014, column="MMLU"))
    write_run(root, "small-ceval-a", results("ceval", "small", 0.3801, column="C-Eval",
                                             created="2026-11-28T09:00:00+00:00"))
    write_run(root, "small-ceval-b", results("ceval", "small", 0.3911, column="C-Eval"))
    return root


def _md_rows(text: str) -> dict[str, list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    return rows


def _tex_rows(text: str) -> dict[str, dict[str, str]]:
    lines = [line.rstrip("\\ ").strip() for line in text.splitlines() if line.rstrip().endswith("\\\\")]
    header = [c.strip() for c in lines[0].split("&")]
    return {cells[0]: dict(zip(header[1:], cells[1:]))
            for cells in ([c.strip() for c in line.split("&")] for line in lines[1:])}


def _html_rows(text: str) -> dict[str, dict[str, str]]:
    header = re.findall(r"<th>(.*?)</th>", text)
    rows = {}
    for body in re.findall(r"<tr>(.*?)</tr>", text, flags=re.S):
        cells = re.findall(r"<td>(.*?)</td>", body)
        if cells:
            rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    return rows


def test_table_cells_models_missing_tasks_and_conflicts(runs_dir):
    table = build_table(load_runs([runs_dir]), reference_row="Qwen-14B")
    kinds = table.attrs["row_kinds"]
    assert [r for r in table.index if kinds[r] == "reference"][-1] == "Qwen-14B"
    assert len([r for r in table.index if kinds[r] == "reference"]) == 11
    # Measured rows in the order the runs were given (folders are read in sorted order).
    assert [r for r in table.index if kinds[r] != "reference"] == [
        "small (measured)", "small (measured) - Qwen-14B", "tiny (measured)", "tiny (measured) - Qwen-14B"]
    # The model card's columns in its order; another shot count sits beside its benchmark; tasks
    # outside the model card come last.
    assert list(table.columns) == [MMLU, "MMLU (0-shot)", CEVAL, GSM8K, "MATH (4-shot)", "HumanEval (0-shot)",
                                   "MBPP (3-shot)", "BBH (3-shot)", "CMMLU (5-shot)", "piqa (0-shot)"]
    # Conflict (protocol differs): the newest run is shown, flagged, and reported.
    assert table.loc["tiny (measured)", MMLU] == pytest.approx(28.74)
    assert table.attrs["flags"] == {"tiny (measured)": [MMLU]}
    [conflict] = table.attrs["conflicts"]
    assert conflict["row"] == "tiny (measured)" and conflict["column"] == MMLU
    assert conflict["differs"] == ["protocol"]
    assert [r["value"] for r in conflict["runs"]] == [pytest.approx(25.12), pytest.approx(28.74)]
    assert conflict["shown"].endswith("tiny-mmlu-new/results.json")
    # Identical duplicate: the newest wins, no conflict.
    assert table.loc["small (measured)", CEVAL] == pytest.approx(39.11)
    assert table.loc["tiny (measured)", "MMLU (0-shot)"] == pytest.approx(26.55)
    assert table.loc["tiny (measured) - Qwen-14B", GSM8K] == pytest.approx(2.04 - 61.3)
    assert math.isnan(table.loc["tiny (measured)", CEVAL])
    assert math.isnan(table.loc["Qwen-14B", "MMLU (0-shot)"])

    cells = format_table(table)
    assert cells.loc["tiny (measured)", MMLU] == "28.7*"
    assert cells.loc["tiny (measured) - Qwen-14B", MMLU] == "-37.6*"[:-1]
    assert cells.loc["small (measured) - Qwen-14B", CEVAL] == "-33.0"
    assert cells.loc["tiny (measured)", "MATH (4-shot)"] == "-"


def test_every_format_shows_the_same_cells(runs_dir, tmp_path):
    table = build_table(load_runs([runs_dir]), reference_row="Qwen-14B", stderr=True)
    written = write_table(table, tmp_path / "out" / "board", formats=("md", "csv", "tex", "html", "png"))
    assert sorted(p.name for p in written) == ["board.conflicts.json", "board.csv", "board.html", "board.md",
                                               "board.png", "board.tex"]
    expected = {
        ("tiny (measured)", MMLU): "28.7 ± 1.3*",
        ("tiny (measured)", GSM8K): "2.0 ± 0.4",
        ("tiny (measured)", CEVAL): "-",
        ("tiny (measured) - Qwen-14B", MMLU): "-37.6 ± 1.3",
        ("small (measured)", MMLU): "40.5 ± 1.4",
        ("Qwen-14B", MMLU): "66.3",
        ("Qwen-14B", "HumanEval (0-shot)"): "32.3",
        ("LLaMA2-34B", CEVAL): "-",
        ("Qwen-7B (original)", "MATH (4-shot)"): "-",
    }
    out = tmp_path / "out"
    md = _md_rows((out / "board.md").read_text(encoding="utf-8"))
    csv = pd.read_csv(out / "board.csv", dtype=str, keep_default_na=False).set_index("model")
    tex = _tex_rows((out / "board.tex").read_text(encoding="utf-8"))
    html = _html_rows((out / "board.html").read_text(encoding="utf-8"))
    for (row, column), cell in expected.items():
        assert md[row][column] == cell, ("md", row, column)
        assert csv.loc[row, column] == cell, ("csv", row, column)
        assert tex[row][column] == cell.replace("±", r"$\pm$"), ("tex", row, column)
        assert html[row][column] == cell, ("html", row, column)
    assert len(md) == len(csv) == len(tex) == len(html) == 15
    notes = (out / "board.md").read_text(encoding="utf-8")
    assert "the newest full run is shown, a partial one only where no full run exists (details: board.conflicts.json)" \
        in notes and "transcribed 2026-11-28" in notes
    conflict = json.loads((out / "board.conflicts.json").read_text(encoding="utf-8"))[0]
    assert conflict["differs"] == ["protocol"]
    # the run files are named from the report's folder, so the report reads the same on any checkout
    sources = [conflict["shown"], *(run["source"] for run in conflict["runs"])]
    assert all(not Path(s).is_absolute() and s.startswith("../") and (out / s).is_file() for s in sources), sources
    png = (out / "board.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_labels_reference_filter_and_a_users_reference_set(runs_dir, tmp_path):
    # No sources.json: its columns are taken at the model card's shot counts.
    (tmp_path / "ours.csv").write_text("model,MMLU,C-Eval\nTiny-Qwen,30.1,\n", encoding="utf-8")
    table = build_table(load_runs([runs_dir / "tiny-mmlu-old", runs_dir / "small-mmlu"]),
                        references=[load_reference(tmp_path / "ours.csv")],
                        labels={"tiny": "Tiny-Qwen", "small": "Tiny-Qwen"}, reference_row="Tiny-Qwen")
    # Two model names under one label with different checkpoints: a conflict, never a silent merge.
    assert list(table.index) == ["Tiny-Qwen", "Tiny-Qwen (measured)", "Tiny-Qwen (measured) - Tiny-Qwen"]
    assert table.attrs["conflicts"][0]["differs"] == ["model.fingerprint"]
    assert table.loc["Tiny-Qwen (measured) - Tiny-Qwen", MMLU] == pytest.approx(40.49 - 30.1)

    only = build_table(load_runs([runs_dir / "small-mmlu"]), reference_models=["Qwen-7B", "Qwen-14B"])
    assert list(only.index) == ["Qwen-7B", "Qwen-14B", "small (measured)"]
    bare = build_table(load_runs([runs_dir / "small-mmlu"]), references=[])
    assert list(bare.index) == ["small (measured)"] and list(bare.columns) == [MMLU]
    with pytest.raises(UserError, match="--reference-row 'GPT-5' is not a reference row"):
        build_table(load_runs([runs_dir / "small-mmlu"]), reference_row="GPT-5")


def ppl_results(model: str, values: dict[str, float], created: str = "2026-11-28T10:00:00+00:00") -> dict:
    payload = results("arxiv_ppl", model, 0.0, shots=0, metrics=dict(values), created=created)
    payload["headline"] = {"metric": next(iter(values)), "value": next(iter(values.values())), "stderr": None}
    return payload


def test_long_context_table_rows_are_model_and_variant(tmp_path):
    write_run(tmp_path, "ppl", ppl_results("tiny", {
        "base/ppl@1024": 12.345, "base/ppl@2048": 20.0,
        "dynamic_ntk+logn+window_attn/ppl@2048": 4.2, "dynamic_ntk/ppl@2048": 5.0}))
    write_run(tmp_path, "mmlu", results("mmlu", "tiny", 0.3, column="MMLU"))
    tables = build_tables(load_runs([tmp_path]), reference_row="Qwen-14B")
    assert set(tables) == {"benchmarks", "long_context"}
    table = tables["long_context"]
    measured = [r for r, kind in table.attrs["row_kinds"].items() if kind != "reference"]
    assert measured == ["tiny (measured)", "tiny (measured) - Qwen-14B", "tiny (measured) + dynamic_ntk",
                        "tiny (measured) + dynamic_ntk + logn + window_attn",
                        "tiny (measured) + dynamic_ntk + logn + window_attn - Qwen-14B"]
    assert list(table.columns) == ["1024", "2048", "4096", "8192", "16384", "32768"]
    cells = format_table(table)
    assert cells.loc["tiny (measured)", "1024"] == "12.35"
    assert cells.loc["tiny (measured) - Qwen-14B", "2048"] == "+16.54"  # 20.0 - 3.46: worse
    assert cells.loc["tiny (measured) + dynamic_ntk + logn + window_attn - Qwen-14B", "2048"] == "+0.74"
    assert cells.loc["tiny (measured) - Qwen-14B", "1024"] == "-"  # the model card has no 1024 for Qwen-14B
    assert cells.loc["Qwen-7B (original)", "16384"] == "2645.09"
    assert "lower is better" in to_markdown(table)
    # The benchmark table only holds benchmark runs.
    assert "tiny (measured)" in tables["benchmarks"].index
    assert tables["benchmarks"].loc["tiny (measured)", MMLU] == pytest.approx(30.0)


def test_long_context_conflicts_are_per_cell(tmp_path):
    old = ppl_results("tiny", {"base/ppl@2048": 7.0, "base/ppl@4096": 9.0})
    new = ppl_results("tiny", {"base/ppl@4096": 8.0}, created="2026-11-29T10:00:00+00:00")
    new["data"]["fingerprint"] = "other-docs"
    table = build_long_context_table([old, new], references=[])
    assert table.loc["tiny (measured)", "2048"] == 7.0  # filled by one run only: no conflict
    assert table.loc["tiny (measured)", "4096"] == 8.0
    assert [(c["column"], c["differs"]) for c in table.attrs["conflicts"]] == [("4096", ["data.fingerprint"])]
    assert format_table(table).loc["tiny (measured)", "4096"] == "8.00*"
    # Models in the order given, each model's variants in the model card's order.
    runs = [ppl_results("zeta", {"dynamic_ntk/ppl@2048": 5.0, "base/ppl@2048": 6.0}),
            ppl_results("alpha", {"base/ppl@2048": 7.0})]
    assert list(build_long_context_table(runs, references=[]).index) == [
        "zeta (measured)", "zeta (measured) + dynamic_ntk", "alpha (measured)"]


def _script(name: str, module: str) -> list[str]:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    return [found] if found else [sys.executable, "-m", module]


@pytest.mark.slow
def test_qwen_eval_table_command(runs_dir, tmp_path):
    out = tmp_path / "board"
    proc = subprocess.run([*_script("qwen-eval-table", "qwen_eval.tables"), str(runs_dir / "*"), "-o", str(out),
                           "-f", "md,csv", "--reference-row", "Qwen-14B", "--reference-models", "Qwen-14B",
                           "--stderr"], capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    assert "conflict: tiny (measured) / MMLU (5-shot): runs differ in protocol" in proc.stderr
    rows = _md_rows(proc.stdout)
    assert list(rows) == ["Qwen-14B", "small (measured)", "small (measured) - Qwen-14B", "tiny (measured)",
                          "tiny (measured) - Qwen-14B"]
    assert rows["tiny (measured)"][MMLU] == "28.7 ± 1.3*"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["board.conflicts.json", "board.csv", "board.md", "runs"]

    bad = subprocess.run([*_script("qwen-eval-table", "qwen_eval.tables"), str(tmp_path / "nowhere")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [f"qwen-eval-table: error: {tmp_path / 'nowhere'}: no such file or folder"]


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json", encoding="utf-8")
    assert main([str(tmp_path / "broken")]) == 2
    assert "broken/results.json: not valid JSON (line 1" in capsys.readouterr().err
    write_run(tmp_path, "ok", results("mmlu", "tiny", 0.3, column="MMLU"))
    assert main([str(tmp_path / "ok"), "--label", "tiny"]) == 2
    assert "--label 'tiny': expected NAME=LABEL" in capsys.readouterr().err
    assert main([str(tmp_path / "ok"), "-o", str(tmp_path / "x"), "-f", "docx"]) == 2
    assert "unknown table format 'docx'" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "empty: no results.json found there" in capsys.readouterr().err


def limited(payload: dict, limit: int, n_samples: int) -> dict:
    """The same results as a `limit=N` run that scored n_samples documents."""
    payload = json.loads(json.dumps(payload))
    payload["config"]["limit"] = limit
    payload["n_samples"] = n_samples
    payload["data"]["fingerprint"] = f"limit-{limit}"
    return payload


@pytest.mark.slow
def test_a_full_run_wins_over_a_newer_partial_one_and_a_partial_cell_says_so(tmp_path):
    full = results("mmlu", "tiny", 0.2667, stderr=0.082, column="MMLU")
    full["n_samples"] = 30
    quick = limited(results("mmlu", "tiny", 0.4, stderr=0.2, column="MMLU", created="2026-11-29T10:00:00+00:00"), 1, 5)
    write_run(tmp_path, "full", full)
    write_run(tmp_path, "quick", quick)

    table = build_table(load_runs([tmp_path]), references=[])
    assert table.loc["tiny (measured)", MMLU] == pytest.approx(26.67)  # the full run, though older
    assert format_table(table).loc["tiny (measured)", MMLU] == "26.7*"  # conflicting runs: marked, not partial
    [conflict] = table.attrs["conflicts"]
    assert conflict["shown"].endswith("full/results.json") and [r["limit"] for r in conflict["runs"]] == [1, None]

    newest = build_table(load_runs([tmp_path]), references=[], prefer="newest")
    assert format_table(newest).loc["tiny (measured)", MMLU] == "40.0 (n=5)†*"

    only = build_table([quick], references=[], reference_row=None, stderr=True)
    cell = format_table(only).loc["tiny (measured)", MMLU]
    assert cell == "40.0 ± 20.0 (n=5)†"
    text = to_markdown(only)
    assert "40.0 ± 20.0 (n=5)†" in text and "† a partial run (`limit` set)" in text
    assert r"(n=5)$^\dagger$" in to_latex(only)

    # the command line: the same rule, and --prefer newest
    out = subprocess.run([*_script("qwen-eval-table", "qwen_eval.tables"), str(tmp_path), "--no-model-card"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert _md_rows(out.stdout)["tiny (measured)"][MMLU] == "26.7*"
    assert "showing the newest full run, else the newest" in out.stderr
    newest_cli = subprocess.run([*_script("qwen-eval-table", "qwen_eval.tables"), str(tmp_path), "--no-model-card",
                                 "--prefer", "newest"], capture_output=True, text=True, timeout=300)
    assert _md_rows(newest_cli.stdout)["tiny (measured)"][MMLU] == "40.0 (n=5)†*"


def test_measured_bars_have_colours_of_their_own_and_a_legend_entry(runs_dir):
    from matplotlib.container import BarContainer

    from qwen_eval.tables import figure

    table = build_table(load_runs([runs_dir]))
    kinds = table.attrs["row_kinds"]
    ax = figure(table).axes[0]
    colours = {}
    for container in ax.containers:
        if isinstance(container, BarContainer) and len(container.patches):
            colours[container.get_label()] = {tuple(p.get_facecolor()) for p in container.patches}
    measured = [r for r in colours if kinds[r] == "measured"]
    reference = [r for r in colours if kinds[r] == "reference"]
    assert len(measured) == 2 and len(reference) == 11
    assert all(len(c) == 1 for c in colours.values())  # one colour per row
    measured_colours = [next(iter(colours[r])) for r in measured]
    reference_colours = {next(iter(colours[r])) for r in reference}
    assert len(set(measured_colours)) == len(measured)  # distinct from each other
    assert not set(measured_colours) & reference_colours  # and from every reference row
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == measured and set(reference) <= set(legend)


def test_one_checkpoint_in_two_dtypes_is_two_rows_not_a_conflict(tmp_path):
    fp32 = results("mmlu", "real", 0.281, column="MMLU")
    bf16 = results("mmlu", "real", 0.274, column="MMLU", created="2026-11-28T12:00:00+00:00")
    bf16["model"]["dtype"] = "bfloat16"
    table = build_table([fp32, bf16], references=[])
    assert {"real float32 (measured)", "real bfloat16 (measured)"} <= set(table.index)
    assert table.loc["real float32 (measured)", MMLU] == pytest.approx(28.1)
    assert table.loc["real bfloat16 (measured)", MMLU] == pytest.approx(27.4)
    alone = build_table([fp32], references=[])
    assert "real (measured)" in alone.index  # one dtype: the name alone
