"""qwen-eval-compare: a real drop fails (exit 1) and lists the flipped documents, noise passes (exit 0),
bad input is exit 2 with one line.

Runs are written here from per-document scores, with the metrics computed from them the way a task
aggregates (mean and its standard error), so the z-test sees realistic standard errors.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_eval.compare import (Tolerance, compare, format_report, load_tolerances, main, mcnemar_exact,
                               parse_task_tolerance)
from qwen_eval.errors import UserError
from qwen_eval.run_files import load_runs
from qwen_eval.tasks.scoring.metrics import mean_stderr

N_DOCS = 200


def write_run(folder: Path, task: str, scores: dict[str, float], *, groups: dict[str, list[str]] | None = None,
              shots: int = 5, data_fingerprint: str = "docs-1") -> Path:
    """A run folder: results.json (acc + per-group acc, each with a stderr) and samples.jsonl."""
    folder.mkdir(parents=True)
    acc, se = mean_stderr(list(scores.values()))
    metrics = {"acc": acc, "acc_stderr": se}
    for group, doc_ids in (groups or {}).items():
        metrics[f"{group}/acc"], metrics[f"{group}/acc_stderr"] = mean_stderr([scores[d] for d in doc_ids])
    results = {"task": task, "task_version": "1", "shots": shots, "protocol": "qwen",
               "model": {"name": "tiny", "backend": "qwen", "dtype": "float32", "fingerprint": str(folder)},
               "metrics": metrics, "headline": {"metric": "acc", "value": acc, "stderr": se},
               "model_card_column": "MMLU", "n_samples": len(scores),
               "data": {"source": "sample", "fingerprint": data_fingerprint}, "created": "2026-11-28T10:00:00+00:00"}
    (folder / "results.json").write_text(json.dumps(results), encoding="utf-8")
    with open(folder / "samples.jsonl", "w", encoding="utf-8") as f:
        for doc_id, score in scores.items():
            # a raw U+2028 as real prompts hold (MMLU's do): one record a line all the same
            f.write(json.dumps({"doc_id": doc_id, "prompt": "...\u2028...", "target": "A", "response": " A",
                                "prediction": "A", "score": score}, ensure_ascii=False) + "\n")
    return folder


def baseline_scores() -> dict[str, float]:
    """140 of 200 right: acc 0.70, stderr ~0.032."""
    return {f"doc-{i:03d}": 1.0 if i % 10 < 7 else 0.0 for i in range(N_DOCS)}


def flip(scores: dict[str, float], to_wrong: list[str] = (), to_right: list[str] = ()) -> dict[str, float]:
    changed = dict(scores)
    changed.update({d: 0.0 for d in to_wrong})
    changed.update({d: 1.0 for d in to_right})
    return changed


@pytest.fixture
def runs(tmp_path) -> dict[str, Path]:
    base = baseline_scores()
    right = [d for d, s in base.items() if s == 1.0]
    wrong = [d for d, s in base.items() if s == 0.0]
    return {
        "baseline": write_run(tmp_path / "baseline", "mmlu", base),
        # 30 documents lost: 0.70 -> 0.55, z ~ -3.1
        "drop": write_run(tmp_path / "drop", "mmlu", flip(base, to_wrong=right[:30])),
        # 3 lost, 1 gained: 0.70 -> 0.69, well within 2 standard errors
        "noise": write_run(tmp_path / "noise", "mmlu", flip(base, to_wrong=right[:3], to_right=wrong[:1])),
    }


def _script() -> list[str]:
    found = shutil.which("qwen-eval-compare", path=str(Path(sys.executable).parent)) or shutil.which("qwen-eval-compare")
    return [found] if found else [sys.executable, "-m", "qwen_eval.compare"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*_script(), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_real_drop_fails_and_lists_the_flipped_documents(runs):
    proc = _run(str(runs["baseline"]), str(runs["drop"] / "results.json"))
    assert proc.returncode == 1, proc.stderr
    assert "REGRESSED: mmlu acc -15.00 points (allowed drop 9.59, p = 0.00176)" in proc.stdout
    assert "flipped documents: 30 lost, 0 gained" in proc.stdout
    assert "lost: doc-000 (1->0), doc-001 (1->0)" in proc.stdout
    assert "(+20 more; --json lists all)" in proc.stdout  # text output is capped at 10

    proc = _run(str(runs["baseline"]), str(runs["drop"]), "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["regressed"] is True
    [task] = report["tasks"]
    acc = task["metrics"][0]
    assert acc["metric"] == "acc" and acc["regressed"] is True
    assert acc["diff"] == pytest.approx(-0.15)
    assert acc["z"] == pytest.approx(-0.15 / (0.0325 ** 2 + 0.0353 ** 2) ** 0.5, abs=0.05)
    assert acc["p_value"] < 0.01
    assert len(task["flips"]["lost"]) == 30 and task["flips"]["gained"] == []
    assert task["flips"]["lost"][0] == {"doc_id": "doc-000", "baseline": 1.0, "candidate": 0.0}
    assert task["flips"]["mcnemar_p"] == pytest.approx(2 / 2 ** 30)


def test_gzipped_samples_are_read_where_only_they_exist(runs):
    """A large run keeps samples.jsonl.gz (a full MMLU's prompts are 48 MB); the flips still come out."""
    import gzip

    from qwen_eval.compare import flipped_documents

    plain = runs["drop"] / "samples.jsonl"
    with gzip.open(runs["drop"] / "samples.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(plain.read_text(encoding="utf-8"))
    plain.unlink()
    base, drop = load_runs([runs["baseline"]]), load_runs([runs["drop"]])
    assert drop[0].samples_path.name == "samples.jsonl.gz"
    flips = flipped_documents(base[0], drop[0])
    assert flips["available"] and len(flips["lost"]) == 30 and flips["gained"] == []

    (runs["drop"] / "samples.jsonl.gz").write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(UserError, match=r"samples\.jsonl\.gz: cannot read"):
        flipped_documents(base[0], drop[0])


@pytest.mark.slow
def test_a_drop_within_noise_passes(runs):
    proc = _run(str(runs["baseline"]), str(runs["noise"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: no headline metric dropped beyond its tolerance" in proc.stdout
    assert "flipped documents: 3 lost, 1 gained" in proc.stdout
    assert "gained: doc-007 (0->1)" in proc.stdout


def test_tolerances_points_se_and_per_task(runs, capsys):
    base, noise, drop = str(runs["baseline"]), str(runs["noise"]), str(runs["drop"])
    # -1 point: fails a 0.5-point tolerance, passes a 1-point one (exactly at the limit).
    assert main([base, noise, "--tolerance-points", "0.5"]) == 1
    assert main([base, noise, "--tolerance-points", "1"]) == 0
    # -15 points with a combined stderr of ~4.8 points: within 20 points and 4 se (19.2), beyond 3 se (14.4).
    assert main([base, drop, "--tolerance-points", "20"]) == 0
    assert main([base, drop, "--tolerance-se", "4"]) == 0
    assert main([base, drop, "--tolerance-se", "3"]) == 1
    # Both given: the larger allowed drop counts.
    assert main([base, drop, "--tolerance-points", "16", "--tolerance-se", "1"]) == 0
    # A per-task tolerance replaces the default for that task.
    assert main([base, drop, "--tolerance-points", "20", "--task-tolerance", "mmlu=2se"]) == 1
    assert main([base, noise, "--task-tolerance", "mmlu=0.5"]) == 1
    capsys.readouterr()


def test_tolerance_file_and_parsing(tmp_path, runs):
    path = tmp_path / "tolerances.yaml"
    path.write_text("default: {points: 1.0}\ntasks:\n  mmlu: {points: 20}\n  gsm8k: {se: 3}\n", encoding="utf-8")
    tolerances = load_tolerances(path)
    assert tolerances.default == Tolerance(points=1.0)
    assert tolerances.for_task("gsm8k") == Tolerance(se=3.0)
    assert tolerances.for_task("bbh") == Tolerance(points=1.0)
    assert main([str(runs["baseline"]), str(runs["drop"]), "--tolerances", str(path)]) == 0
    assert main([str(runs["baseline"]), str(runs["drop"]), "--tolerances", str(path),
                 "--task-tolerance", "mmlu=1"]) == 1
    assert parse_task_tolerance("humaneval=1.5,3se") == ("humaneval", Tolerance(points=1.5, se=3.0))
    with pytest.raises(UserError, match="expected TASK=POINTS"):
        parse_task_tolerance("mmlu")
    path.write_text("default: {pts: 1}\n", encoding="utf-8")
    with pytest.raises(UserError, match="tolerances.yaml: default: expected"):
        load_tolerances(path)


def test_allowed_drop_units():
    assert Tolerance(points=1.5).allowed_drop("acc", 0.02) == pytest.approx(0.015)
    assert Tolerance(points=1.5).allowed_drop("base/ppl@4096", None) == pytest.approx(1.5)  # ppl units
    assert Tolerance(points=1.0, se=2.0).allowed_drop("acc", 0.02) == pytest.approx(0.04)
    assert Tolerance(se=2.0).allowed_drop("acc", None) == 0.0  # no stderr: any drop counts
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
    assert mcnemar_exact(5, 5) == 1.0


def test_gate_all_checks_group_metrics(tmp_path):
    base = baseline_scores()
    docs = list(base)
    groups = {"stem": docs[:40], "other": docs[40:]}
    stem_right = [d for d in groups["stem"] if base[d] == 1.0]
    other_wrong = [d for d in groups["other"] if base[d] == 0.0]
    # STEM collapses, the rest improves by as much: the headline does not move.
    cand = flip(base, to_wrong=stem_right[:20], to_right=other_wrong[:20])
    b = load_runs([write_run(tmp_path / "b", "mmlu", base, groups=groups)])
    c = load_runs([write_run(tmp_path / "c", "mmlu", cand, groups=groups)])
    report = compare(b, c)
    assert report["regressed"] is False
    stem = next(m for m in report["tasks"][0]["metrics"] if m["metric"] == "stem/acc")
    assert stem["beyond_tolerance"] is True and stem["gated"] is False
    assert compare(b, c, gate="all")["regressions"][0]["metric"] == "stem/acc"


def test_perplexity_going_up_is_a_regression(tmp_path):
    def ppl_run(name: str, value: float) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps({
            "task": "arxiv_ppl", "shots": 0, "model": {"name": "tiny"},
            "metrics": {"base/ppl@2048": value}, "headline": {"metric": "base/ppl@2048", "value": value}}))
        return folder
    base = load_runs([ppl_run("b", 4.0)])
    worse = compare(base, load_runs([ppl_run("c", 4.5)]), None)
    assert worse["regressed"] is True and worse["tasks"][0]["flips"]["available"] is False
    better = compare(base, load_runs([ppl_run("d", 3.5)]), None)
    assert better["regressed"] is False


def test_suite_folders_compare_every_common_task_and_warn_on_different_data(tmp_path):
    base, scores = tmp_path / "base", baseline_scores()
    write_run(base / "mmlu", "mmlu", scores)
    write_run(base / "ceval", "ceval", scores)
    write_run(base / "bbh", "bbh", scores)
    cand = tmp_path / "cand"
    write_run(cand / "mmlu", "mmlu", scores)
    write_run(cand / "ceval", "ceval", scores, data_fingerprint="docs-2")
    report = compare(load_runs([base]), load_runs([cand]))
    assert [t["task"] for t in report["tasks"]] == ["ceval", "mmlu"]
    assert report["only_in_baseline"] == ["bbh"]
    assert report["tasks"][0]["warnings"] == ["data.fingerprint differs: baseline 'docs-1', candidate 'docs-2'"]
    assert report["regressed"] is False


@pytest.mark.slow
def test_bad_input_exits_2_with_one_line(tmp_path, runs):
    missing = _run(str(tmp_path / "nope.json"), str(runs["noise"]))
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip().splitlines() == [f"qwen-eval-compare: error: {tmp_path / 'nope.json'}: no such file or folder"]

    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    broken = _run(str(runs["baseline"]), str(tmp_path / "broken.json"))
    assert broken.returncode == 2 and len(broken.stderr.strip().splitlines()) == 1
    assert "broken.json: not valid JSON" in broken.stderr

    other = write_run(tmp_path / "gsm8k", "gsm8k", baseline_scores())
    disjoint = _run(str(runs["baseline"]), str(other))
    assert disjoint.returncode == 2
    assert "no task in common: baseline has mmlu, candidate has gsm8k" in disjoint.stderr

    two = tmp_path / "two"
    shutil.copytree(runs["baseline"], two / "a")
    shutil.copytree(runs["noise"], two / "b")
    with pytest.raises(UserError, match="candidate holds two runs of task 'mmlu'"):
        compare(load_runs([runs["baseline"]]), load_runs([two]))


def test_text_shows_subjects_only_when_they_dropped_too_far_and_nan_fails(tmp_path):
    base = baseline_scores()
    docs = list(base)
    groups = {"subject/algebra": docs[:20], "subject/law": docs[20:120], "subject/art": docs[120:]}
    algebra_right = [d for d in groups["subject/algebra"] if base[d] == 1.0]
    b = load_runs([write_run(tmp_path / "b", "mmlu", base, groups=groups)])
    c = load_runs([write_run(tmp_path / "c", "mmlu", flip(base, to_wrong=algebra_right), groups=groups)])
    text = format_report(compare(b, c))
    assert "subject/algebra/acc" in text and "dropped (not gated)" in text
    assert "subject/law/acc" not in text
    assert "(+2 per-subject metrics within tolerance; --json lists all)" in text

    broken = json.loads((tmp_path / "c" / "results.json").read_text())
    broken["headline"]["value"] = broken["metrics"]["acc"] = float("nan")
    (tmp_path / "c" / "results.json").write_text(json.dumps(broken))
    report = compare(b, load_runs([tmp_path / "c"]))
    assert report["regressed"] is True and report["regressions"][0]["candidate"] is None
    json.dumps(report, allow_nan=False)
