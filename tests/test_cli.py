"""The qwen-eval command end to end: the three output files, one-line errors, multirun, no litter."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli_helpers import read_results, read_samples, run_cli

REQUIRED_KEYS = {"task", "task_version", "shots", "protocol", "model", "metrics", "headline", "model_card_column",
                 "n_samples", "requests", "data", "prompt_fingerprint", "config", "versions", "git_commit", "timing",
                 "created"}


@pytest.fixture(scope="module")
def mmlu_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cwd")
    out = cwd / "run"
    cache = tmp_path_factory.mktemp("cache")
    proc = run_cli("task=mmlu", "shots=5", "model=tiny", "data.source=sample", f"output_dir={out}", "progress=false",
                   f"cache_dir={cache}", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd, out, proc


def test_run_writes_the_three_files_of_the_contract(mmlu_run):
    cwd, out, _ = mmlu_run
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "samples.jsonl", "table.md"]
    results = read_results(out)
    assert REQUIRED_KEYS <= set(results)
    assert results["task"] == "mmlu" and results["shots"] == 5 and results["protocol"] == "qwen"
    assert results["model"]["name"] == "tiny" and results["model"]["dtype"] == "float32"
    assert len(results["model"]["fingerprint"]) == 16
    assert results["headline"]["metric"] == "acc"
    assert results["headline"]["value"] == results["metrics"]["acc"]
    assert 0.0 <= results["metrics"]["acc"] <= 1.0 and "acc_stderr" in results["metrics"]
    for name, value in results["metrics"].items():
        if not name.endswith("_stderr"):
            assert f"{name}_stderr" in results["metrics"], name
            assert 0.0 <= value <= 1.0, name
    assert results["requests"]["total"] == results["n_samples"] > 0
    assert results["data"]["source"] == "sample" and len(results["data"]["fingerprint"]) == 16
    assert results["config"]["task"]["name"] == "mmlu" and results["config"]["model"]["name"] == "tiny"
    assert "torch" in results["versions"] and results["timing"]["tokens_per_second"] > 0


def test_samples_hold_the_exact_prompt_and_a_score_per_document(mmlu_run):
    _, out, _ = mmlu_run
    samples = read_samples(out)
    assert len(samples) == read_results(out)["n_samples"]
    for s in samples:
        assert {"doc_id", "prompt", "target", "response", "prediction", "score"} <= set(s)
        subject, row = s["doc_id"].split("/")
        assert row.isdigit()
        assert s["prompt"].startswith(
            f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n")
        assert s["prompt"].endswith("\nAnswer:")
        assert s["score"] == float(s["prediction"] == s["target"])
    acc = sum(s["score"] for s in samples) / len(samples)
    assert acc == pytest.approx(read_results(out)["metrics"]["acc"])


def test_table_puts_the_run_beside_the_model_card(mmlu_run):
    _, out, _ = mmlu_run
    table = (out / "table.md").read_text()
    assert "Qwen-14B" in table and "66.3" in table
    value = 100 * read_results(out)["metrics"]["acc"]
    assert f"{value:.1f}" in table


def test_nothing_but_the_run_folder_is_written(mmlu_run):
    cwd, out, proc = mmlu_run
    assert sorted(p.name for p in cwd.iterdir()) == ["run"]  # no outputs/, no .hydra/, no logs
    assert "acc =" in proc.stderr


@pytest.mark.parametrize("args, expected", [
    (["task=nope"], "unknown task 'nope'; valid tasks: "),
    (["model=nope"], "unknown model 'nope'; valid models: "),
    (["no_such_key=1"], "unknown config key 'no_such_key'"),
    (["task=mmlu", "data.path=/nonexistent/mmlu"], "/nonexistent/mmlu does not exist"),
    (["task=mmlu", "data.source=bogus"], "data.source='bogus' is not a source"),
    (["task=mmlu", "model=qwen-14b", "model.path=/nonexistent/ckpt", "data.source=sample"], "/nonexistent/ckpt"),
    (["task=mmlu", "model=replay", "data.source=sample"], "model=replay needs model.path"),
    (["task=mmlu", "shots=-1", "data.source=sample"], "shots=-1"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, expected):
    proc = run_cli(*args, "progress=false", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("qwen-eval: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    if "valid tasks" in expected:
        assert "mmlu" in lines[0] and "gsm8k" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback(tmp_path):
    proc = run_cli("task=mmlu", "data.path=/nonexistent/mmlu", "debug=true", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "UserError" in proc.stderr


def test_multirun_sweeps_and_keeps_runs_under_results(tmp_path):
    proc = run_cli("-m", "task=mmlu", "shots=0,1", "limit=1", "model=tiny", "data.source=sample", "progress=false",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["results"]
    runs = sorted(p for p in tmp_path.glob("results/runs/multirun-*/*") if p.is_dir())
    assert [p.name for p in runs] == ["0-mmlu-tiny", "1-mmlu-tiny"]
    shots = [read_results(p)["shots"] for p in runs]
    assert shots == [0, 1]
    zero_shot = read_samples(runs[0])[0]["prompt"]
    assert zero_shot.count("Answer:") == 1  # no examples in a 0-shot prompt
