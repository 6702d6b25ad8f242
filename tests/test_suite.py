"""Suites: several tasks against one model, one table beside the model card, failures isolated."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from cli_helpers import read_results, run_cli

SUITE = """\
name: quick
tasks:
  - {task: mmlu, shots: 5}
  - {task: gsm8k, shots: 8, options: {max_new_tokens: 4}}
  - {task: cmmlu, shots: 9}
  - {task: ceval, shots: 0}
"""


@pytest.mark.slow
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
    assert "| tiny · float32 · base" in table
    assert "Qwen-14B" not in table  # tiny is not a model the model card reports: no reference row beside it
    for suffix in (".csv", ".tex", ".html", ".png"):
        assert (out / f"table{suffix}").stat().st_size > 0


@pytest.mark.slow
def test_an_unknown_option_in_a_suite_entry_names_the_task_and_option(tmp_path: Path):
    (tmp_path / "conf" / "suite").mkdir(parents=True)
    (tmp_path / "conf" / "suite" / "bad.yaml").write_text(
        "name: bad\ntasks:\n  - {task: gsm8k, options: {max_tokens: 4}}\n", encoding="utf-8")
    proc = run_cli("suite=bad", f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=tiny",
                   "data.source=sample", "limit=1", f"output_dir={tmp_path / 'o'}", cwd=tmp_path)
    assert proc.returncode == 1
    [line] = [ln for ln in proc.stderr.splitlines() if "has no option" in ln]
    assert "task gsm8k has no option 'max_tokens' (options: extract, max_new_tokens" in line  # + any added since


def _composed(*overrides: str):
    with initialize_config_module(config_module="qwen_eval.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_the_embedded_model_has_a_small_generation_budget_of_its_own():
    from qwen_eval.evaluation import make_task

    tiny = _composed("suite=model_card", "model=tiny")
    assert tiny.model.max_new_tokens == 32
    budgets = {}
    for name in ("gsm8k", "math", "humaneval", "mbpp", "bbh"):
        cfg = _composed(f"task={name}", "model=tiny")
        budgets[name] = make_task(cfg.task, cfg).options["max_new_tokens"]
    assert budgets == {name: 32 for name in budgets}  # MATH asked for 1024, BBH 1024, the rest 512
    # a real model keeps the task's budget; the cap is an option of any model
    real = _composed("task=math", "model=qwen-14b")
    assert make_task(real.task, real).options["max_new_tokens"] == 1024
    capped = _composed("task=math", "model=qwen-14b", "model.max_new_tokens=64")
    assert make_task(capped.task, capped).options["max_new_tokens"] == 64
    uncapped = _composed("task=math", "model=tiny", "model.max_new_tokens=null")
    assert make_task(uncapped.task, uncapped).options["max_new_tokens"] == 1024


@pytest.mark.slow
def test_the_budget_reaches_the_run_and_its_results(tmp_path: Path):
    out = tmp_path / "math"
    proc = run_cli("task=math", "model=tiny", "data.source=sample", "limit=1", f"output_dir={out}", "progress=false",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = read_results(out)
    assert results["task_config"]["options"]["max_new_tokens"] == 32
    assert results["config"]["model"]["max_new_tokens"] == 32


INTERRUPTED = """\
name: stopped
tasks:
  - {task: mmlu, shots: 0}
  - {task: gsm8k, shots: 8, options: {max_new_tokens: 512}}
  - {task: ceval, shots: 0}
"""


@pytest.mark.slow
def test_a_suite_stopped_midway_still_writes_the_table_of_what_finished(tmp_path: Path):
    (tmp_path / "conf" / "suite").mkdir(parents=True)
    (tmp_path / "conf" / "suite" / "stopped.yaml").write_text(INTERRUPTED, encoding="utf-8")
    out = tmp_path / "suite-out"
    # gsm8k without the tiny budget: minutes of generation, so it is still running when stopped
    proc = subprocess.Popen([sys.executable, "-m", "qwen_eval", "suite=stopped",
                             f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "model=tiny", "model.max_new_tokens=null",
                             "data.source=sample", "limit=3", f"output_dir={out}", "progress=false"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "mmlu" / "results.json").is_file() or not (out / "suite.json").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        time.sleep(1.0)  # into gsm8k
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    status = json.loads((out / "suite.json").read_text(encoding="utf-8"))
    assert [(t["task"], t["status"]) for t in status["tasks"]] == [
        ("mmlu", "ok"), ("gsm8k", "interrupted"), ("ceval", "pending")]
    table = (out / "table.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| tiny")}
    assert "MMLU (0-shot)" in table and "tiny · float32 · base" in rows
    assert "(n=15/30)†" in rows["tiny · float32 · base"]  # 3 questions x 5 subjects of 30, a partial run
    assert "interrupted; the table of the 1 finished tasks is in" in stderr
    assert not (out / "gsm8k" / "results.json").exists()


def test_results_name_the_commit_the_run_started_on(tmp_path: Path, monkeypatch):
    """A long run can outlive a commit (the full MMLU ran for hours): results.json names the
    checkout as it was when the run began, not when it ended."""
    import json

    from omegaconf import OmegaConf

    from qwen_eval import evaluation, provenance
    from qwen_eval.backends import build

    commits = iter(["commit-at-start", "commit-at-end"])
    monkeypatch.setattr(provenance, "code_identity",
                        lambda: {"version": "0", "commit": next(commits), "dirty": False, "source": "git checkout"})
    cfg = _composed("task=gsm8k", "model=tiny", "data.source=sample", "limit=1", "progress=false",
                    f"output_dir={tmp_path / 'run'}", "cache_dir=null")
    task = evaluation.make_task(cfg.task, cfg)
    loaded = evaluation.load_documents(cfg, task)
    backend = build(OmegaConf.to_container(cfg.model, resolve=True), seed=int(cfg.seed))
    provenance.code_identity()  # someone commits while the model answers
    evaluation.run_task(cfg, task, backend, None, loaded=loaded)
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["git_commit"] == record["code"]["commit"] == "commit-at-start"
