"""Sweeps beyond one machine: Hydra's submitit launcher, tested with its local executor.

`hydra/launcher=submitit_slurm` sends each job of a multirun to Slurm; `submitit_local` runs the
same code path in local subprocesses. The jobs share the answer cache and the sweep folder (on a
cluster: shared storage), and the launching process ends with one summary and one table.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from cli_helpers import read_results, run_cli
from test_tables import _md_rows, _script

pytestmark = pytest.mark.slow  # subprocesses: the command, servers, ranks or sandboxed programs

pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                    reason="hydra-submitit-launcher is not installed (pip install -e '.[slurm]' or '.[test]')")


def test_a_submitit_sweep_runs_every_job_and_ends_with_one_table(tmp_path: Path):
    import subprocess

    sweep, cache = tmp_path / "shared" / "sweep", tmp_path / "shared" / "cache"
    proc = run_cli("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "task=mmlu,gsm8k",
                   "model=tiny", "data.source=sample", "limit=1", f"cache_dir={cache}", f"hydra.sweep.dir={sweep}",
                   cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # both jobs ran (each in its own process) and wrote their run folders into the sweep folder
    jobs = {p.name: read_results(p) for p in sorted(sweep.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    assert sorted(jobs) == ["0-mmlu-tiny", "1-gsm8k-tiny"]
    assert [r["task"] for r in jobs.values()] == ["mmlu", "gsm8k"]
    assert list((sweep / ".submitit").iterdir())  # submitit's job logs
    with sqlite3.connect(cache / "answers.sqlite") as db:  # one answer cache for every job
        assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == sum(
            r["requests"]["total"] for r in jobs.values())

    # the launching process: a summary of every run on stdout, one table over the sweep
    assert proc.stdout.startswith(f"sweep {sweep}: 2 runs finished\n")
    for name, results in jobs.items():
        [line] = [ln for ln in proc.stdout.splitlines() if ln.endswith(str(sweep / name))]
        assert f" {results['task']} " in line and " tiny " in line and " acc = " in line
    rows = _md_rows((sweep / "table.md").read_text(encoding="utf-8"))
    measured = rows["tiny · float32 · base"]
    assert measured["MMLU (5-shot)"].endswith("(n=5/30)†") and re.search(r"\(n=1/\d+\)†$", measured["GSM8K (8-shot)"])
    assert (sweep / "table.png").stat().st_size > 0

    # qwen-eval-table over the sweep folder builds the same leaderboard
    table = subprocess.run([*_script("qwen-eval-table", "qwen_eval.table_cli"), str(sweep), "--stderr"],
                           capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr
    assert _md_rows(table.stdout)["tiny · float32 · base"] == measured

    # a second sweep over the same shared cache answers everything from it
    again = run_cli("-m", "hydra/launcher=submitit_local", "task=mmlu,gsm8k", "model=tiny", "data.source=sample",
                    "limit=1", f"cache_dir={cache}", f"hydra.sweep.dir={tmp_path / 'again'}", cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    for name in ("0-mmlu-tiny", "1-gsm8k-tiny"):
        requests = read_results(tmp_path / "again" / name)["requests"]
        assert requests["cached"] == requests["total"] > 0
