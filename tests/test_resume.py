"""A run killed with SIGKILL and started again finishes with identical results, reusing its cache."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import read_results, read_samples, run_cli

pytestmark = pytest.mark.slow  # kills and reruns the qwen-eval command


def _cached_answers(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def _kill_after(args: list[str], cache: Path, out: Path, cwd: Path, *, answers: int) -> int:
    """Start the CLI, SIGKILL it once `answers` answers are committed; the number committed."""
    db = cache / "answers.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "qwen_eval", *args, f"cache_dir={cache}", f"output_dir={out}"],
                            cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.time() + 300
    while _cached_answers(db) < answers and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return _cached_answers(db)


def test_sigkill_then_rerun_gives_identical_results(tmp_path):
    # MMLU's bundled sample: 30 requests, each committed on its own
    args = ["task=mmlu", "model=tiny", "data.source=sample", "batch_size=1", "progress=false"]
    cache, out = tmp_path / "cache", tmp_path / "resumed"
    db = cache / "answers.sqlite"
    killed_at = _kill_after(args, cache, out, tmp_path, answers=5)
    assert 5 <= killed_at < 30
    assert not (out / "results.json").exists()

    resumed = run_cli(*args, f"cache_dir={cache}", f"output_dir={out}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    fresh_out = tmp_path / "fresh"
    fresh = run_cli(*args, f"cache_dir={tmp_path / 'other-cache'}", f"output_dir={fresh_out}", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr

    again, clean = read_results(out), read_results(fresh_out)
    assert again["requests"] == {"total": 30, "cached": killed_at}
    assert clean["requests"] == {"total": 30, "cached": 0}
    assert again["metrics"] == clean["metrics"]
    assert read_samples(out) == read_samples(fresh_out)
    assert _cached_answers(db) == 30


def test_streamed_generation_killed_then_rerun_gives_identical_results(tmp_path):
    """GSM8K on the bundled engine: every Generate request goes to the engine in one call, and
    batch_size=1 commits each answer as it ends; killed with SIGKILL after a few answers, the
    rerun computes only the rest and ends with the results of an uninterrupted run. (A token
    budget of one row makes the 8 sample problems decode one after another, so answers end
    apart; together, the tiny model's rows all run to max_new_tokens and end at one step.)"""
    args = ["task=gsm8k", "model=tiny", "data.source=sample", "batch_size=1", "progress=false",
            "task.max_new_tokens=48", "model.max_batch_tokens=256"]
    cache, out = tmp_path / "cache", tmp_path / "resumed"
    killed_at = _kill_after(args, cache, out, tmp_path, answers=3)
    assert not (out / "results.json").exists()

    resumed = run_cli(*args, f"cache_dir={cache}", f"output_dir={out}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    fresh_out = tmp_path / "fresh"
    fresh = run_cli(*args, f"cache_dir={tmp_path / 'other-cache'}", f"output_dir={fresh_out}", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    again, clean = read_results(out), read_results(fresh_out)
    total = clean["requests"]["total"]
    assert 3 <= killed_at < total
    assert again["requests"] == {"total": total, "cached": killed_at}
    assert again["metrics"] == clean["metrics"] and read_samples(out) == read_samples(fresh_out)
