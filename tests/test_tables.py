"""qwen-eval-table: runs written here as results.json files -> leaderboards in every format.

The fixture runs are of two checkpoints (`Coder-0.5B`, a GGUF Q4_K_M, and `tiny`), in two dtypes
and two protocols (base and instruct), with a partial and a full run of one cell, and a published
reference table of the instruct protocol beside the model card of the base protocol.
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
from qwen_eval.table_cli import build_tables, main
from qwen_eval.table_formats import figure, format_table, to_latex, to_markdown, write_table
from qwen_eval.tables import build_table
from qwen_eval.tasks.arxiv_ppl_table import build_long_context_table

MMLU, CEVAL, GSM8K = "MMLU (5-shot)", "C-Eval (5-shot)", "GSM8K (8-shot)"
HE_INSTRUCT, MBPP_INSTRUCT, MBPPPLUS = "HumanEval (0-shot, instruct)", "MBPP (0-shot, instruct)", "MBPP+ (0-shot, instruct)"
CODER = "Coder-0.5B-Instruct"
CODER_BF16 = f"{CODER} · GGUF Q4_K_M · bfloat16 · base"
CODER_FP32 = f"{CODER} · GGUF Q4_K_M · float32 · base"
CODER_INSTRUCT = f"{CODER} · GGUF Q4_K_M · bfloat16 · instruct"
TINY = "tiny · float32 · base"


def results(task: str, model: str, value: float, *, stderr: float | None = 0.01, shots: int = 5,
            column: str | None = None, metric: str = "acc", protocol: str = "qwen", prompt: str = "base",
            dtype: str = "float32", quantization: str | None = None, created: str = "2026-11-28T10:00:00+00:00",
            data_fingerprint: str = "data-1", metrics: dict | None = None, n: int = 200, of: int | None = 200,
            columns: dict | None = None, config_name: str = "qwen") -> dict:
    """A results.json in the runner's contract (`config_name` is the config's model.name, which must
    never name a row)."""
    payload = {
        "task": task, "task_version": "1", "shots": shots, "protocol": protocol,
        "model": {"name": config_name, "backend": "qwen", "path": f"/ckpt/{model}.gguf", "dtype": dtype,
                  "fingerprint": f"{model}-w",
                  "checkpoint": {"name": model, "format": "gguf", "quantization": quantization, "files": [],
                                 "sha256": f"{model}-sha"}},
        "metrics": metrics if metrics is not None else {metric: value, f"{metric}_stderr": stderr},
        "headline": {"metric": metric, "value": value, "stderr": stderr},
        "model_card_column": column, "n_samples": n, "requests": {"total": n, "cached": 0},
        "data": {"source": "sample", "path": None, "fingerprint": data_fingerprint, "n_documents": of},
        "task_config": {"options": {"prompt": prompt}},
        "config": {"task": {"name": task}, "chat": {"enabled": False}}, "versions": {"qwen_eval": "0.1.0"},
        "git_commit": "abc", "timing": {"wall_seconds": 1.0}, "created": created,
    }
    if columns:
        payload["table_columns"] = columns
    return payload


def write_run(root: Path, name: str, payload: dict) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(payload), encoding="utf-8")
    return folder


def published(tmp_path: Path) -> Path:
    """A published table of the instruct protocol, as results/real-*/published.csv are."""
    folder = tmp_path / "ref"
    folder.mkdir()
    (folder / "published.csv").write_text(f"model,HumanEval,MBPP,MBPP+\n{CODER},61.6,52.4,43.7\nOther-7B,80.0,,\n",
                                          encoding="utf-8")
    (folder / "sources.json").write_text(json.dumps({"published.csv": {
        "name": "report", "protocol": "instruct", "source": "a technical report, table 9", "retrieved": "2026-12-01",
        "shots": {"HumanEval": 0, "MBPP": 0, "MBPP+": 0}}}), encoding="utf-8")
    return folder / "published.csv"


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    root = tmp_path / "runs"
    q4 = {"quantization": "GGUF Q4_K_M"}
    # the same cell twice: a full run and a newer partial one (limit=5 per subject)
    write_run(root, "mmlu-bf16-full", results("mmlu", CODER, 0.301, stderr=0.004, column="MMLU", dtype="bfloat16",
                                               n=14042, of=14042, **q4))
    write_run(root, "mmlu-bf16-quick", results("mmlu", CODER, 0.281, stderr=0.027, column="MMLU", dtype="bfloat16",
                                                n=285, of=14042, created="2026-11-29T10:00:00+00:00", **q4))
    write_run(root, "mmlu-fp32-quick", results("mmlu", CODER, 0.281, stderr=0.027, column="MMLU", n=285, of=14042,
                                                **q4))
    write_run(root, "gsm8k-bf16", results("gsm8k", CODER, 0.208, stderr=0.011, shots=8, column="GSM8K",
                                          dtype="bfloat16", n=1319, of=1319, **q4))
    # another protocol, one run filling two columns
    write_run(root, "mbppplus-bf16", results("mbppplus", CODER, 0.437, stderr=0.025, shots=0, column="MBPP+",
                                             metric="pass@1", prompt="instruct", dtype="bfloat16", n=399, of=399,
                                             metrics={"pass@1": 0.437, "pass@1_stderr": 0.025, "base_pass@1": 0.52,
                                                      "base_pass@1_stderr": 0.025},
                                             columns={"MBPP+": "pass@1", "MBPP": "base_pass@1"}, **q4))
    write_run(root, "humaneval-bf16", results("humaneval", CODER, 0.591, stderr=0.038, shots=0, column="HumanEval",
                                              metric="pass@1", prompt="instruct", dtype="bfloat16", n=164, of=164, **q4))
    # a model no reference reports; the base protocol; two runs that disagree (protocol=clean is its own protocol)
    write_run(root, "tiny-mmlu", results("mmlu", "tiny", 0.2512, stderr=0.0123, column="MMLU"))
    write_run(root, "tiny-ceval-a", results("ceval", "tiny", 0.3801, column="C-Eval", created="2026-11-28T09:00:00+00:00"))
    write_run(root, "tiny-ceval-b", results("ceval", "tiny", 0.3911, column="C-Eval", data_fingerprint="data-2"))
    return root


def _md_rows(text: str) -> dict[str, dict[str, str]]:
    """Every table row of a Markdown file (all sections): row label -> column -> cell."""
    rows: dict[str, dict[str, str]] = {}
    header: list[str] = []
    for line in text.splitlines():
        if not line.startswith("|"):
            header = []
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not header:
            header = cells
        elif not set(line) <= set("|:- "):
            rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    return rows


def _tex_rows(text: str) -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    for block in text.split(r"\begin{tabular}")[1:]:
        lines = [line.rstrip("\\ ").strip() for line in block.splitlines() if line.rstrip().endswith("\\\\")]
        header = [c.strip() for c in lines[0].split("&")]
        for cells in ([c.strip() for c in line.split("&")] for line in lines[1:]):
            rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    return rows


def _html_rows(text: str) -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    for table in re.findall(r"<table.*?</table>", text, flags=re.S):
        header = re.findall(r"<th>(.*?)</th>", table)
        for body in re.findall(r"<tr>(.*?)</tr>", table, flags=re.S):
            cells = re.findall(r"<td>(.*?)</td>", body)
            if cells:
                rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    return rows


def test_rows_are_checkpoint_quantization_dtype_protocol_and_columns_carry_the_protocol(runs_dir, tmp_path):
    table = build_table(load_runs([runs_dir]), references=[load_reference(published(tmp_path))])
    kinds = table.attrs["row_kinds"]
    # never the config's model.name ("qwen"): the checkpoint as recorded; two dtypes = two rows;
    # the instruct runs are a row of their own, after the base rows (rows go by protocol)
    assert [r for r in table.index if kinds[r] == "measured"] == [CODER_BF16, CODER_FP32, TINY, CODER_INSTRUCT]
    # the published instruct row appears (same model, same protocol); Other-7B (not measured) does
    # not, nor any model card row (no measured model is in the model card)
    assert [r for r in table.index if kinds[r] == "reference"] == [f"{CODER} · report · instruct"]
    assert list(table.columns) == [MMLU, CEVAL, GSM8K, HE_INSTRUCT, MBPP_INSTRUCT, MBPPPLUS]
    assert table.attrs["column_protocol"][HE_INSTRUCT] == "instruct" and table.attrs["column_protocol"][MMLU] == "base"
    # two protocols never share a cell: the base row has no instruct number and vice versa
    assert math.isnan(table.loc[CODER_BF16, HE_INSTRUCT]) and math.isnan(table.loc[CODER_INSTRUCT, MMLU])
    assert math.isnan(table.loc[f"{CODER} · report · instruct", MMLU])
    # one run, two columns
    assert table.loc[CODER_INSTRUCT, MBPPPLUS] == pytest.approx(43.7)
    assert table.loc[CODER_INSTRUCT, MBPP_INSTRUCT] == pytest.approx(52.0)


def test_a_full_run_wins_over_a_newer_partial_one_and_a_partial_cell_names_n(runs_dir):
    table = build_table(load_runs([runs_dir]), references=[], stderr=True)
    cells = format_table(table)
    assert table.loc[CODER_BF16, MMLU] == pytest.approx(30.1)  # the full run, though the partial one is newer
    assert cells.loc[CODER_BF16, MMLU] == "30.1 ± 0.4"  # a less complete run is no conflict: no mark
    assert cells.loc[CODER_FP32, MMLU] == "28.1 ± 2.7 (n=285/14042)†"  # only partial runs of this cell
    [superseded] = [c for c in table.attrs["conflicts"] if c["row"] == CODER_BF16]
    assert superseded["differs"] == [] and superseded["shown"].endswith("mmlu-bf16-full/results.json")
    assert [(r["documents"], r["partial"]) for r in superseded["runs"]] == [(285, True), (14042, False)]
    # equally complete runs that measured differently: the newest, marked and reported
    [conflict] = [c for c in table.attrs["conflicts"] if c["differs"]]
    assert (conflict["row"], conflict["column"], conflict["differs"]) == (TINY, CEVAL, ["data.fingerprint"])
    assert cells.loc[TINY, CEVAL] == "39.1 ± 1.0*"


def test_every_format_shows_the_same_cells_and_marks(runs_dir, tmp_path):
    table = build_table(load_runs([runs_dir]), references=[load_reference(published(tmp_path))], stderr=True)
    written = write_table(table, tmp_path / "out" / "board", formats=("md", "csv", "tex", "html", "png"))
    assert sorted(p.name for p in written) == ["board.conflicts.json", "board.csv", "board.html", "board.md",
                                               "board.png", "board.tex"]
    expected = {
        (CODER_BF16, MMLU): "30.1 ± 0.4",
        (CODER_FP32, MMLU): "28.1 ± 2.7 (n=285/14042)†",
        (CODER_INSTRUCT, MBPPPLUS): "43.7 ± 2.5",
        (f"{CODER} · report · instruct", MBPPPLUS): "43.7",
        (f"{CODER} · report · instruct", HE_INSTRUCT): "61.6",
        (TINY, CEVAL): "39.1 ± 1.0*",
        (TINY, GSM8K): "-",
    }
    out = tmp_path / "out"
    md = _md_rows((out / "board.md").read_text(encoding="utf-8"))
    csv = pd.read_csv(out / "board.csv", dtype=str, keep_default_na=False).set_index("model")
    tex_text = (out / "board.tex").read_text(encoding="utf-8")
    tex = _tex_rows(tex_text)
    html = _html_rows((out / "board.html").read_text(encoding="utf-8"))

    def latex(text: str) -> str:
        return (text.replace("_", r"\_").replace("±", r"$\pm$").replace("†", r"$^\dagger$")
                .replace("·", r"$\cdot$"))

    for (row, column), cell in expected.items():
        assert md[row][column] == cell, ("md", row, column)
        assert csv.loc[row, column] == cell, ("csv", row, column)
        assert tex[latex(row)][column] == latex(cell), ("tex", row, column)
        assert html[row][column] == cell, ("html", row, column)
    assert len(md) == len(csv) == len(tex) == len(html) == 5
    text = (out / "board.md").read_text(encoding="utf-8")
    # one section per protocol, each with only its own columns
    assert text.index("Protocol `base`:") < text.index("Protocol `instruct`:")
    base_section = text[text.index("Protocol `base`:"):text.index("Protocol `instruct`:")]
    assert MMLU in base_section and HE_INSTRUCT not in base_section
    assert "Reference `report`: a technical report, table 9, transcribed 2026-12-01." in text
    assert "n = documents scored / documents in the data" in text
    assert "(details: board.conflicts.json)" in text
    conflicts = json.loads((out / "board.conflicts.json").read_text(encoding="utf-8"))
    sources = [c["shown"] for c in conflicts] + [run["source"] for c in conflicts for run in c["runs"]]
    assert all(not Path(s).is_absolute() and s.startswith("../") and (out / s).is_file() for s in sources), sources
    png = (out / "board.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_the_png_marks_partial_bars_and_keeps_measured_colours_apart(runs_dir, tmp_path):
    table = build_table(load_runs([runs_dir]), references=[load_reference(published(tmp_path))])
    fig = figure(table)
    assert [ax.get_title() for ax in fig.axes] == ["protocol: base", "protocol: instruct"]
    base = fig.axes[0]
    labels = [t.get_text() for t in base.texts]
    assert labels == ["n=285/14042"]  # the one partial cell (fp32 MMLU) says how many documents it scored
    faded = [p for p in base.patches if p.get_alpha() is not None and p.get_alpha() < 1]
    assert len(faded) == 1 and faded[0].get_hatch() == "xx"
    legend = [t.get_text() for t in base.get_legend().get_texts()]
    assert legend == [CODER_BF16, CODER_FP32, TINY]
    instruct = fig.axes[1]
    reference = [p for p in instruct.patches if p.get_hatch() == "//"]
    measured = [p for p in instruct.patches if p.get_hatch() is None]
    assert len(reference) == 3 and len(measured) == 3  # the published row's and the run's three cells
    assert not {tuple(p.get_facecolor()) for p in measured} & {tuple(p.get_facecolor()) for p in reference}


def test_reference_rows_only_beside_the_same_model_and_protocol(tmp_path):
    card = results("mmlu", "Qwen-14B", 0.66, column="MMLU", config_name="qwen-14b")
    instruct_only = results("humaneval", "Qwen-14B", 0.5, shots=0, column="HumanEval", metric="pass@1",
                            prompt="instruct")
    # a Qwen-14B base run: the model card's Qwen-14B row, and no other model card row
    table = build_table([card])
    assert [r for r, k in table.attrs["row_kinds"].items() if k == "reference"] == ["Qwen-14B · model card · base"]
    assert list(table.columns) == [MMLU, CEVAL, GSM8K, "MATH (4-shot)", "HumanEval (0-shot)", "MBPP (3-shot)",
                                   "BBH (3-shot)", "CMMLU (5-shot)"]
    assert "Reference `model card`: Qwen-14B model card" in to_markdown(table)
    # an instruct run of the same model: the base model card is not its reference
    assert [k for k in build_table([instruct_only]).attrs["row_kinds"].values()] == ["measured"]
    # asked for by name, a reference row is shown whatever was measured, with a diff row
    asked = build_table([results("mmlu", "tiny", 0.3, column="MMLU")], reference_row="Qwen-14B",
                        reference_models=["Qwen-7B"])
    assert list(asked.index) == ["Qwen-7B · model card · base", "Qwen-14B · model card · base", TINY,
                                 f"{TINY} - Qwen-14B"]
    assert asked.loc[f"{TINY} - Qwen-14B", MMLU] == pytest.approx(30.0 - 66.3)
    assert format_table(asked).loc[f"{TINY} - Qwen-14B", MMLU] == "-36.3"
    with pytest.raises(UserError, match="--reference-row 'GPT-5' is not a reference row"):
        build_table([card], reference_row="GPT-5")


def test_each_published_row_stands_right_above_its_own_models_measured_rows():
    def run(model: str, dtype: str) -> dict:
        return results("humaneval", model, 0.6, shots=0, column="HumanEval", metric="pass@1", prompt="instruct",
                       dtype=dtype, n=164, of=164, quantization="GGUF Q4_K_M")

    small, large = "Qwen2.5-Coder-0.5B-Instruct", "Qwen2.5-Coder-1.5B-Instruct"
    table = build_table([run(large, "float32"), run(small, "float32"), run(large, "bfloat16")])
    assert list(table.index) == [f"{small} · Qwen2.5-Coder report · instruct", f"{small} · GGUF Q4_K_M · float32 · instruct",
                                 f"{large} · Qwen2.5-Coder report · instruct", f"{large} · GGUF Q4_K_M · float32 · instruct",
                                 f"{large} · GGUF Q4_K_M · bfloat16 · instruct"]


def test_labels_rename_a_checkpoint_and_old_runs_are_named_by_their_file(tmp_path):
    run = results("mmlu", "tiny", 0.3, column="MMLU")
    assert list(build_table([run], labels={"tiny": "Tiny-Qwen"}).index) == ["Tiny-Qwen · float32 · base"]
    old = results("mmlu", "x", 0.3, column="MMLU")
    del old["model"]["checkpoint"]  # written before results.json recorded the checkpoint
    old["model"]["path"] = "/models/qwen2.5-coder-0.5b-instruct-q4.gguf"
    assert list(build_table([old], references=[]).index) == ["qwen2.5-coder-0.5b-instruct-q4 · float32 · base"]
    chat = results("gsm8k", "tiny", 0.1, shots=8, column="GSM8K")
    chat["config"]["chat"] = {"enabled": True, "system": "Be brief."}
    assert list(build_table([chat], references=[]).index) == ["tiny · float32 · chat+system"]


def ppl_results(model: str, values: dict[str, float], created: str = "2026-11-28T10:00:00+00:00") -> dict:
    payload = results("arxiv_ppl", model, 0.0, shots=0, metrics=dict(values), created=created)
    payload["headline"] = {"metric": next(iter(values)), "value": next(iter(values.values())), "stderr": None}
    return payload


def test_long_context_table_rows_are_model_and_variant(tmp_path):
    write_run(tmp_path, "ppl", ppl_results("Qwen-14B", {
        "base/ppl@1024": 12.345, "base/ppl@2048": 20.0,
        "dynamic_ntk+logn+window_attn/ppl@2048": 4.2, "dynamic_ntk/ppl@2048": 5.0}))
    write_run(tmp_path, "mmlu", results("mmlu", "tiny", 0.3, column="MMLU"))
    tables = build_tables(load_runs([tmp_path]), reference_row="Qwen-14B")
    assert set(tables) == {"benchmarks", "long_context"}
    table = tables["long_context"]
    row = "Qwen-14B · float32 · base"
    measured = [r for r, kind in table.attrs["row_kinds"].items() if kind != "reference"]
    assert measured == [row, f"{row} - Qwen-14B", f"{row} + dynamic_ntk", f"{row} + dynamic_ntk + logn + window_attn",
                        f"{row} + dynamic_ntk + logn + window_attn - Qwen-14B"]
    reference = [r for r, kind in table.attrs["row_kinds"].items() if kind == "reference"]
    assert reference and all(r.startswith("Qwen-14B") for r in reference)  # Qwen-7B's rows are not its reference
    assert list(table.columns) == ["1024", "2048", "4096", "8192", "16384"]  # Qwen-14B has no 32K figure
    cells = format_table(table)
    assert cells.loc[row, "1024"] == "12.35"
    assert cells.loc[f"{row} - Qwen-14B", "2048"] == "+16.54"  # 20.0 - 3.46: worse
    assert cells.loc[f"{row} + dynamic_ntk + logn + window_attn - Qwen-14B", "2048"] == "+0.74"
    assert cells.loc[f"{row} - Qwen-14B", "1024"] == "-"  # the model card has no 1024 for Qwen-14B
    assert "lower is better" in to_markdown(table)
    # the benchmark table holds the benchmark runs only
    assert tables["benchmarks"].loc[TINY, MMLU] == pytest.approx(30.0)


def test_long_context_conflicts_are_per_cell():
    old = ppl_results("tiny", {"base/ppl@2048": 7.0, "base/ppl@4096": 9.0})
    new = ppl_results("tiny", {"base/ppl@4096": 8.0}, created="2026-11-29T10:00:00+00:00")
    new["data"]["fingerprint"] = "other-docs"
    table = build_long_context_table([old, new], references=[])
    assert table.loc[TINY, "2048"] == 7.0  # filled by one run only: no conflict
    assert table.loc[TINY, "4096"] == 8.0
    assert [(c["column"], c["differs"]) for c in table.attrs["conflicts"]] == [("4096", ["data.fingerprint"])]
    assert format_table(table).loc[TINY, "4096"] == "8.00*"
    runs = [ppl_results("zeta", {"dynamic_ntk/ppl@2048": 5.0, "base/ppl@2048": 6.0}),
            ppl_results("alpha", {"base/ppl@2048": 7.0})]
    assert list(build_long_context_table(runs, references=[]).index) == [
        "zeta · float32 · base", "zeta · float32 · base + dynamic_ntk", "alpha · float32 · base"]


def _script(name: str, module: str) -> list[str]:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    return [found] if found else [sys.executable, "-m", module]


@pytest.mark.slow
def test_qwen_eval_table_command(runs_dir, tmp_path):
    out = tmp_path / "board"
    proc = subprocess.run([*_script("qwen-eval-table", "qwen_eval.table_cli"), str(runs_dir / "*"), "-o", str(out),
                           "-f", "md,csv", "--reference", str(published(tmp_path)), "--stderr"],
                          capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    assert f"conflict: {TINY} / {CEVAL}: runs differ in data.fingerprint" in proc.stderr
    rows = _md_rows(proc.stdout)
    assert rows[CODER_FP32][MMLU] == "28.1 ± 2.7 (n=285/14042)†"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["board.conflicts.json", "board.csv", "board.md", "ref", "runs"]

    bad = subprocess.run([*_script("qwen-eval-table", "qwen_eval.table_cli"), str(tmp_path / "nowhere")],
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


def test_a_readme_block_is_regenerated_and_a_stale_copy_fails_the_check(runs_dir, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# Results\n\n<!-- qwen-eval-table runs --stderr --no-model-card -o board -f md,csv -->\n"
                      "stale\n<!-- /qwen-eval-table -->\n\nAfter.\n", encoding="utf-8")
    assert main(["--check-readme", str(readme)]) == 1
    assert "block 1 (runs --stderr --no-model-card -o board -f md,csv) differs" in capsys.readouterr().err
    assert main(["--update-readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# Results\n\n<!-- qwen-eval-table runs") and text.endswith("<!-- /qwen-eval-table -->\n\nAfter.\n")
    assert _md_rows(text)[CODER_BF16][MMLU] == "30.1 ± 0.4"
    assert (tmp_path / "board.md").is_file() and (tmp_path / "board.csv").is_file()
    assert main(["--check-readme", str(readme)]) == 0
    # a committed leaderboard file edited by hand is stale too
    (tmp_path / "board.csv").write_text("edited\n", encoding="utf-8")
    assert main(["--check-readme", str(readme)]) == 1
    assert "board.csv differs from what its runs give" in capsys.readouterr().err


def test_the_runs_listing_reads_every_figure_from_results_json(runs_dir, capsys):
    assert main([str(runs_dir / "mmlu-bf16-quick"), "--runs"]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("| mmlu-bf16-quick")][0]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:8] == ["mmlu-bf16-quick", CODER, "bfloat16", "base", "acc", "28.1 ± 2.7", "285 of 14,042", "0 of 285"]
    assert cells[11] == "abc" and cells[12] == "unknown"  # commit as recorded; no machine recorded
