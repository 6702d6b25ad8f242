"""The qwen-eval command end to end: the three output files, one-line errors, multirun, no litter,
and what a newcomer meets first: --help, --version, offline, the result line on stdout."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from cli_helpers import read_results, read_samples, run_cli

pytestmark = pytest.mark.slow  # subprocesses: the command, servers, ranks or sandboxed programs

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


def test_table_puts_the_run_beside_the_published_numbers_of_its_model_only(mmlu_run):
    """tiny is no model the model card reports, so its table has no reference row (a Qwen-14B
    checkpoint's run would get the model card's Qwen-14B row: tests/test_tables.py)."""
    _, out, _ = mmlu_run
    table = (out / "table.md").read_text()
    assert "| tiny · float32 · base" in table and "Qwen-14B" not in table and "66.3" not in table
    value = 100 * read_results(out)["metrics"]["acc"]
    assert f"{value:.1f}" in table


def test_nothing_but_the_run_folder_is_written(mmlu_run):
    cwd, out, proc = mmlu_run
    assert sorted(p.name for p in cwd.iterdir()) == ["run"]  # no outputs/, no .hydra/, no logs


def test_the_result_line_goes_to_stdout_and_nothing_else_does(mmlu_run):
    _, out, proc = mmlu_run
    # `qwen-eval ... > log.txt` captures the result; progress and logs stay on stderr (empty here)
    assert proc.stdout.splitlines() == [proc.stdout.strip()]
    assert proc.stdout.startswith("mmlu (5-shot, base, tiny): acc = ") and proc.stdout.strip().endswith(f"-> {out}")
    assert "30 answers computed" in proc.stdout
    assert proc.stderr == ""


@pytest.mark.parametrize("args, expected", [
    (["task=nope"], "unknown task 'nope'; valid tasks: "),
    (["model=nope"], "unknown model 'nope'; valid models: "),
    (["no_such_key=1"], "unknown config key 'no_such_key'"),
    (["task=mmlu", "data.path=/nonexistent/mmlu"], "/nonexistent/mmlu does not exist"),
    (["task=mmlu", "data.source=bogus"], "data.source='bogus' is not a source"),
    (["task=mmlu", "model=qwen-14b", "model.path=/nonexistent/ckpt", "data.source=sample"], "/nonexistent/ckpt"),
    (["task=mmlu", "model=replay", "data.source=sample"], "model=replay needs model.path"),
    (["task=mmlu", "shots=-1", "data.source=sample"], "shots=-1"),
    # every option is checked before any data or model is loaded
    (["batch_size=-1", "data.source=sample"], "batch_size=-1 must be a whole number >= 1 (requests per backend call)"),
    (["batch_size=0", "data.source=sample"], "batch_size=0 must be a whole number >= 1"),
    (["batch_size=abc", "data.source=sample"], "batch_size='abc' must be a whole number >= 1"),
    (["batch_size=-1", "data.path=/nonexistent/mmlu"], "batch_size=-1"),  # the option, not the data, first
    (["limit=abc", "data.source=sample"], "limit='abc' must be a whole number >= 1 (or null for everything)"),
    (["seed=1.5", "data.source=sample"], "seed=1.5 must be a whole number"),
    (["task=gsm8k", "task.max_new_tokens=abc", "data.source=sample"],
     "task.max_new_tokens='abc' must be a whole number (the default is 512)"),
    (["task=gsm8k", "task.max_new_tokens=0", "data.source=sample"], "task.max_new_tokens=0 must be a whole number >= 1"),
    (["model.use_logn_attn=2", "data.source=sample"], "model.use_logn_attn=2 must be true or false (the default is true)"),
    (["model.dtype=16", "data.source=sample"], "model.dtype=16 must be a string (the default is 'auto')"),
    (["debug=maybe", "data.source=sample"], "debug='maybe' must be true or false"),
    # a mistyped key says what was meant; a key added with + is not silently ignored
    (["shot=5"], "unknown config key 'shot'; did you mean shots?"),
    (["modle=tiny"], "unknown config key 'modle'; did you mean model?"),
    (["task=gsm8k", "task.max_new_token=5"], "unknown config key 'task.max_new_token'; did you mean max_new_tokens?"),
    (["+shot=5", "data.source=sample"], "unknown config key 'shot'; did you mean shots?"),
    (["+task.max_new_token=5", "task=gsm8k", "data.source=sample"],
     "unknown config key 'task.max_new_token'; did you mean max_new_tokens?"),
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
    assert "prefix with +" not in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_bad_value_anywhere_in_a_sweep_stops_it_before_the_first_job(tmp_path):
    proc = run_cli("-m", "batch_size=4,-1", "limit=1", "data.source=sample", "progress=false", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "qwen-eval: error: batch_size=-1 must be a whole number >= 1 (requests per backend call)"]
    assert list(tmp_path.iterdir()) == []


def _offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No offline variables, an empty Hugging Face cache, and a hub endpoint nothing listens on."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                                            "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9", **extra)
    return env


@pytest.mark.parametrize("extra, reason", [({}, "no connection to http://127.0.0.1:9"),
                                           ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE=1")])
def test_offline_a_bare_command_fails_at_once_with_one_line(tmp_path, extra, reason):
    import subprocess
    import sys

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "qwen_eval"], cwd=cwd, env=_offline_env(tmp_path, **extra),
                          capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - started
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # no retry messages, no connection errors
    assert lines[0].startswith("qwen-eval: error: task mmlu: could not load hub dataset cais/mmlu")
    assert reason in lines[0] and "data.source=sample" in lines[0]
    assert seconds < 10, seconds  # the bound is 3 s; about 2 s here, 27 s of retries before
    assert list(cwd.iterdir()) == []


def test_help_and_version_are_qwen_evals_own(tmp_path):
    shown = run_cli("--help", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stderr == ""
    text = shown.stdout
    assert "powered by Hydra" not in text
    assert text.startswith("qwen-eval 0.1.0: evaluate a language model")
    tasks = re.search(r"^tasks: +(.+)$", text, re.M)[1].split(", ")
    assert {"mmlu", "ceval", "cmmlu", "gsm8k", "math", "bbh", "humaneval", "mbpp", "arxiv_ppl"} <= set(tasks)
    assert {"tiny", "qwen-14b", "hf", "openai"} <= set(re.search(r"^models: +(.+)$", text, re.M)[1].split(", "))
    for key in ("task=", "model=", "shots=", "limit=", "data.source=", "batch_size=", "output_dir=", "cache_dir="):
        assert f"  {key}" in text, key
    examples = [line.strip() for line in text.split("examples:\n", 1)[1].splitlines() if line.startswith("  qwen-eval")]
    assert len(examples) == 3 and examples[0] == "qwen-eval task=mmlu shots=5 model=tiny data.source=sample"
    assert "results/runs/" in text and "stdout" in text and "--hydra-help" in text
    assert run_cli("-h", cwd=tmp_path).stdout == text

    version = run_cli("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout == "qwen-eval 0.1.0\n"
    hydra_help = run_cli("--hydra-help", cwd=tmp_path)
    assert hydra_help.returncode == 0 and "Hydra" in hydra_help.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_cached_run_shows_no_progress_and_says_the_answers_came_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    args = ("task=mmlu", "limit=1", "model=tiny", "data.source=sample", f"cache_dir={cache}", "progress=true")
    first = run_cli(*args, f"output_dir={tmp_path / 'a'}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "5 answers computed" in first.stdout and "tiny: 100%" in first.stderr  # real work: a bar
    again = run_cli(*args, f"output_dir={tmp_path / 'b'}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"all 5 answers from the cache ({cache})" in again.stdout
    assert "req" not in again.stderr and again.stderr == ""  # no `tiny: 0req [00:00, ?req/s]`


def test_a_single_run_prints_an_absolute_path(tmp_path):
    proc = run_cli("task=mmlu", "limit=1", "model=tiny", "data.source=sample", "progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    shown = Path(proc.stdout.strip().rsplit(" -> ", 1)[1])
    assert shown.is_absolute() and shown.parent == tmp_path / "results" / "runs"
    assert read_results(shown)["task"] == "mmlu"


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

    # every run's line, then one summary of the sweep: task, model, headline and absolute folder
    sweep = runs[0].parent
    lines = proc.stdout.splitlines()
    assert [ln.split(" -> ")[1] for ln in lines[:2]] == [str(p) for p in runs]
    assert lines[2] == f"sweep {sweep}: 2 runs finished"
    rows = [ln.split() for ln in lines[5:7]]
    for number, (row, run) in enumerate(zip(rows, runs)):
        assert row[:4] == [str(number), "mmlu", str(number), "tiny"] and row[4:6] == ["acc", "="]
        assert row[-1] == str(run)
    assert lines[7].startswith(f"table: {sweep / 'table.md'}")
    table = (sweep / "table.md").read_text(encoding="utf-8")
    assert "MMLU (0-shot)" in table and "MMLU (1-shot)" in table and "tiny · float32 · base" in table


def test_a_failing_job_does_not_stop_the_sweep_and_the_summary_names_it(tmp_path):
    proc = run_cli("-m", "data.source=sample,local", "task=mmlu", "limit=1", "progress=false", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "qwen-eval: error: task mmlu: data.source=local needs data.path=DIR (the upstream layout)"]
    [sweep] = list((tmp_path / "results" / "runs").iterdir())
    assert read_results(sweep / "0-mmlu-tiny")["data"]["source"] == "sample"
    assert "sweep" in proc.stdout and ": 1 run finished, 1 failed" in proc.stdout
    failed = [ln for ln in proc.stdout.splitlines() if "FAILED" in ln]
    assert len(failed) == 1 and "data.source=local needs data.path" in failed[0] and " mmlu " in failed[0]
    assert failed[0].endswith(str(sweep / "1-mmlu-tiny"))
