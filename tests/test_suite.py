"""Suites: several tasks against one model, one table beside the model card, failures isolated."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import read_results, run_cli

SUITE = """\
name: quick
tasks:
  - {task: mmlu, shots: 5}
  - {task: gsm8k, shots: 8, options: {max_new_tokens: 4}}
  - {task: cmmlu, shots: 9}
  - {task: ceval, shots: 0}
"""


def test_a_suite_from_a_user_folder_writes_one_table_beside_the_model_card(tmp_path: Path):
    (tmp_path / "conf" / "suite").mkdir(parents=True)
    (tmp_path / "conf" / "suite" / "quick.yaml").write_text(SUITE, encoding="utf-8")
    out = tmp_path / "suite-out"
    proc = run_cli("suite=quick", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=tiny",
                   "data.source=sample", "limit=2", f"output_dir={out}", "progress=false", cwd=tmp_path)

    # cmmlu with 9 shots is a bad request: reported, the other tasks still ran, exit status 1
    assert proc.returncode == 1, proc.stderr
    assert "task cmmlu failed: task cmmlu supports shots from 0 to 5, not 9" in proc.stderr
    status = json.loads((out / "suite.json").read_text(encoding="utf-8"))
    assert [(t["task"], t["status"]) for t in status["tasks"]] == [
        ("mmlu", "ok"), ("gsm8k", "ok"), ("cmmlu", "failed"), ("ceval", "ok")]

    # each finished task has its own run folder; the entry's options and shots reached the task
    gsm8k = read_results(out / "gsm8k")
    assert gsm8k["task_config"]["options"]["max_new_tokens"] == 4
    assert read_results(out / "ceval")["shots"] == 0
    assert read_results(out / "mmlu")["n_samples"] == 2 * 5  # limit per subject, 5 sample subjects

    table = (out / "table.md").read_text(encoding="utf-8")
    assert "Qwen-14B" in table and "66.3" in table  # the model card's MMLU number beside ours
    assert "tiny" in table
    for suffix in (".csv", ".tex", ".html", ".png"):
        assert (out / f"table{suffix}").stat().st_size > 0


def test_an_unknown_option_in_a_suite_entry_names_the_task_and_option(tmp_path: Path):
    (tmp_path / "conf" / "suite").mkdir(parents=True)
    (tmp_path / "conf" / "suite" / "bad.yaml").write_text(
        "name: bad\ntasks:\n  - {task: gsm8k, options: {max_tokens: 4}}\n", encoding="utf-8")
    proc = run_cli("suite=bad", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=tiny",
                   "data.source=sample", "limit=1", f"output_dir={tmp_path / 'o'}", cwd=tmp_path)
    assert proc.returncode == 1
    assert "task gsm8k has no option 'max_tokens' (options: extract, max_new_tokens)" in proc.stderr
