"""The benchmark scripts' CPU-side parts run here: gpu_14b.py --dry-run (every attention kernel
that resolves on CPU, against the CPU fp32 reference) and attention_paths.py --quick (the old
model/model.py from git against the new one: identical outputs)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_14b_dry_run_checks_every_phase_and_kernel(tmp_path):
    out = tmp_path / "dry.json"
    assert load("gpu_14b").main([str(out), "--dry-run", "--sections", "check", "--attention", "sdpa,math,flash"]) == 0
    report = json.loads(out.read_text())
    assert set(report["attention_unavailable"]) == {"flash"} and "CUDA only" in report["attention_unavailable"]["flash"]
    rows = report["check"]["rows"]
    phases = {"no_cache", "prefill", "decode", "prefix_prefill", "prefix_decode"}
    assert {(r["options"], r["attention"], r["phase"]) for r in rows} == {
        (o, k, p) for o in ("plain", "long") for k in ("sdpa", "math") for p in phases}
    # the 'device' side is bf16 on CPU here: every kernel within bf16 rounding of the fp32 logits
    assert all(r["finite"] and r["max_diff_over_logit_std"] < 0.2 for r in rows), rows
    assert report["check"]["windows"][0] == report["check"]["seq_length"] // 2


def test_gpu_14b_refuses_to_run_without_a_gpu_unless_asked(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert load("gpu_14b").main([str(tmp_path / "x.json")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.slow
def test_attention_paths_old_and_new_agree(tmp_path):
    rev = load("attention_paths").OLD_REV
    if subprocess.run(["git", "cat-file", "-e", f"{rev}:model/model.py"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip(f"the old model/model.py ({rev}) is not in this checkout's history")
    out = tmp_path / "paths.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "attention_paths.py"), "--quick", "--repeats", "1",
                    "--kernels", "sdpa,math", "--json", str(out)], check=True, cwd=ROOT, capture_output=True)
    rows = json.loads(out.read_text())["rows"]
    assert {r["phase"] for r in rows} == {"mmlu_prefix", "gsm8k_decode", "prefill", "decode", "rolling", "keep_rows"}
    for r in rows:
        limit = 0.0 if r["variant"] in ("old", "new:sdpa") else 1e-5  # sdpa on CPU: bitwise the old paths
        assert r["max_abs_diff_vs_old"] <= limit, r


@pytest.mark.slow
def test_startup_finds_the_first_request_of_a_real_run():
    """startup.py's driver runs the CLI and reports when the first request reaches the backend:
    a time inside the process's life, after imports and the tiny model's build."""
    startup = load("startup")
    start = time.perf_counter()
    first = startup.first_request("gsm8k", ["model=tiny"])
    assert 0.1 < first < time.perf_counter() - start


def test_join_memory_stacks_the_two_caches():
    """join_memory.py's child builds the two caches, stacks them with this checkout's
    KVCache.stacked and reports the stacked cache's size: 24 layers x (keys, values) x 5 rows x
    (10 positions + 256 room) x 2 kv heads x 64 x 2 bytes."""
    import argparse

    bench = load("join_memory")
    args = argparse.Namespace(running=2, newcomers=3, positions=10)
    r = bench.measure(ROOT / "model" / "attention" / "cache.py", args)
    assert r["stacked_cache_mb"] == round(24 * 2 * 5 * 266 * 2 * 64 * 2 / 2**20)
    assert r["peak_mb"] >= r["inputs_peak_mb"] > 0


@pytest.mark.slow
def test_gguf_open_measures_each_case_on_a_written_file(tmp_path):
    """gguf_open.py's child on a small GGUF: every case opens it, in positive time; the
    backend's weights (fp32) stay resident afterwards, a header alone holds far less."""
    from helpers_checkpoints import PROMPTS, random_model, tiny_bpe_vocab, tiny_config, write_gguf

    model = random_model(tiny_config(vocab_size=512, num_kv_heads=2, seq_length=256))
    path = write_gguf(model, tmp_path / "m.gguf", vocab=tiny_bpe_vocab(" ".join(PROMPTS) * 5, size=512))
    bench = load("gguf_open")
    got = {case: bench.measure(case, str(path)) for case in bench.CASES}
    assert all(r["seconds"] > 0 and r["peak_mib"] >= r["after_mib"] - 1 for r in got.values()), got
    weights_mib = sum(p.numel() for p in model.parameters()) * 4 / 2**20
    assert got["backend-float32"]["after_mib"] > got["header"]["after_mib"] + 0.5 * weights_mib, (got, weights_mib)


@pytest.mark.slow
def test_vs_lm_eval_reports_the_runners_that_finished_when_one_fails(tmp_path):
    """A side-by-side run on a small random checkpoint: qwen-eval and the loop give the same greedy
    texts; a runner that crashes gets a 'failed' row instead of losing the others' table, and
    --report-only prints the same table again from the files the run left."""
    args = [sys.executable, str(ROOT / "benchmarks" / "vs_lm_eval.py"), "--case", "humaneval", "--n", "2",
            "--max-new-tokens", "4", "--hidden", "64", "--layers", "2", "--heads", "2", "--intermediate", "128",
            "--runners", "qwen-eval,lm-eval,loop", "--lm-eval-python", "/bin/false", "--workdir", str(tmp_path)]
    run = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    table = (tmp_path / "report-humaneval.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["qwen-eval"].endswith("| 1.0x | 2/2 |")
    assert rows["loop"].endswith("| 2/2 |")
    assert "| failed: false exited 1; see " in rows["lm-eval"]
    again = subprocess.run(args + ["--report-only"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0, again.stdout + again.stderr
    reread = (tmp_path / "report-humaneval.md").read_text()
    assert reread.splitlines()[:4] == table.splitlines()[:4]  # title, header, qwen-eval's row
    assert "failed: no earlier run to read" in reread  # lm-eval left no files


def test_elementwise_times_each_piece_of_a_layer():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "elementwise.py"), "--rows", "16", "--reps", "1"],
                          check=True, cwd=ROOT, capture_output=True, text=True)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("16 rows, bfloat16, eager")
    pieces = {line[:34].strip(): float(line[34:].split()[0]) for line in lines[1:]}
    assert set(pieces) == {"RMSNorm (twice a layer)", "RoPE on queries and keys", "SiLU(gate) x up, in place",
                           "residual add (twice a layer)", "one layer's element-wise work"}
    assert pieces["one layer's element-wise work"] > pieces["RoPE on queries and keys"] > 0


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc (Linux)")
def test_flash_key_cache_reports_growth_per_200_calls():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "flash_key_cache.py"), "--keys", "padded",
                           "--calls", "400"], check=True, cwd=ROOT, capture_output=True, text=True)
    lines = done.stdout.splitlines()
    assert [line.split(": ")[1].split(",")[0] for line in lines] == ["200 calls", "400 calls"]
    assert all(line.startswith("padded keys (blocks of 32)") and "RSS +" in line for line in lines)
