"""Data parallelism: `torchrun --nproc_per_node=2 -m qwen_eval ...` on CPU (gloo) gives the results
of one process, and the answer cache is shared whatever the number of ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import read_results, read_samples, run_cli

pytestmark = pytest.mark.slow  # subprocesses: the command, servers, ranks or sandboxed programs

ARGS = ["task=mmlu", "model=tiny", "data.source=sample", "progress=false"]
ENV = {"OMP_NUM_THREADS": "1",  # two ranks on a two-core machine
       "CUDA_VISIBLE_DEVICES": ""}  # CPU ranks and gloo, on a GPU machine too


def torchrun(*args: str, cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("torchrun")
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "torch.distributed.run"]
    return subprocess.run([*launcher, "--standalone", f"--nproc_per_node={nproc}", "-m", "qwen_eval", *args],
                          cwd=cwd, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=600)


def assert_same_samples(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k not in ("response", "probs")} == \
            {k: v for k, v in y.items() if k not in ("response", "probs")}
        assert x["response"] == pytest.approx(y["response"], abs=1e-5)  # batches may share prefixes differently


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[Path, Path]:
    """One process, batches of 4 (30 requests: 8 batches): its cache folder and run folder."""
    root = tmp_path_factory.mktemp("single")
    done = run_cli(*ARGS, "batch_size=4", f"cache_dir={root / 'cache'}", f"output_dir={root / 'out'}", cwd=root,
                   env=ENV)
    assert done.returncode == 0, done.stderr
    return root / "cache", root / "out"


def test_two_ranks_give_the_results_of_one_and_share_its_cache(single, tmp_path):
    single_cache, single_out = single
    two = torchrun(*ARGS, "batch_size=4", f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'two'}",
                   cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    results, reference = read_results(tmp_path / "two"), read_results(single_out)
    assert results["world_size"] == 2
    assert results["requests"] == {"total": 30, "cached": 0}
    assert results["metrics"] == reference["metrics"]
    assert_same_samples(read_samples(tmp_path / "two"), read_samples(single_out))
    assert two.stdout.count("mmlu (5-shot, base, tiny): acc") == 1  # only rank 0 reports

    # two ranks reuse what one rank cached, and one rank what two cached
    reuse = torchrun(*ARGS, "batch_size=4", f"cache_dir={single_cache}", f"output_dir={tmp_path / 'reuse2'}",
                     cwd=tmp_path)
    assert reuse.returncode == 0, reuse.stderr
    assert read_results(tmp_path / "reuse2")["requests"] == {"total": 30, "cached": 30}
    back = run_cli(*ARGS, "batch_size=16", f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'reuse1'}",
                   cwd=tmp_path, env=ENV)
    assert back.returncode == 0, back.stderr
    assert read_results(tmp_path / "reuse1")["requests"] == {"total": 30, "cached": 30}
    for out in ("reuse2", "reuse1"):
        assert read_results(tmp_path / out)["metrics"] == reference["metrics"]
        assert_same_samples(read_samples(tmp_path / out), read_samples(single_out))


def test_a_rank_without_batches_a_multirun_folder_and_a_partial_resume(single, tmp_path):
    _, single_out = single
    # limit=1: 5 requests, one batch, so rank 1 has nothing to compute; a multirun (-m) so both
    # ranks must agree on the timestamped sweep folder
    first = torchrun("-m", *ARGS, "limit=1", "batch_size=64", f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    sweeps = list((tmp_path / "results" / "runs").iterdir())
    assert len(sweeps) == 1 and sweeps[0].name.startswith("multirun-")
    assert sorted(p.name for p in sweeps[0].iterdir()) == [
        "0-mmlu-tiny", "multirun.yaml", "table.csv", "table.html", "table.md", "table.png", "table.tex"]
    assert first.stdout.count(f"sweep {sweeps[0]}: 1 run finished") == 1  # the summary: rank 0 only
    assert read_results(sweeps[0] / "0-mmlu-tiny")["requests"] == {"total": 5, "cached": 0}

    # the full run finds those 5 answers and splits the other 25 over both ranks
    full = torchrun(*ARGS, "batch_size=4", f"cache_dir={tmp_path / 'cache'}", f"output_dir={tmp_path / 'full'}",
                    cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    results = read_results(tmp_path / "full")
    assert results["requests"] == {"total": 30, "cached": 5}
    assert results["metrics"] == read_results(single_out)["metrics"]
    assert_same_samples(read_samples(tmp_path / "full"), read_samples(single_out))


def test_a_user_error_under_torchrun_is_one_line_per_rank(tmp_path):
    bad = torchrun(*ARGS, "limit=0", cwd=tmp_path)
    assert bad.returncode != 0
    errors = [line for line in bad.stderr.splitlines() if line.startswith("qwen-eval: error")]
    # each rank says it on one line; torchrun may stop a rank before it does, once another failed
    message = "limit=0 must be a whole number >= 1 (or null for everything)"
    assert errors and set(errors) <= {f"qwen-eval: error: {message}", f"qwen-eval: error (rank 1): {message}"}
