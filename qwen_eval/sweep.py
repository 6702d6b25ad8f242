"""The end of a multirun: a one-screen summary of every run, and one leaderboard over the sweep.

    qwen-eval -m task=mmlu,gsm8k model=tiny data.source=sample limit=2
    qwen-eval -m hydra/launcher=submitit_slurm hydra.launcher.partition=gpu model=a,b task=mmlu,gsm8k

Hydra calls `SweepSummary.on_multirun_end` (conf/config.yaml, hydra.callbacks) in the launching
process once every job has ended, whichever launcher ran them: in this process (Hydra's basic
launcher), in local subprocesses (submitit_local) or as Slurm jobs (submitit_slurm). The jobs'
run folders are the only channel back, so it works the same when jobs ran on other machines
over shared storage: each job folder holds a results.json (a run), a suite.json (a suite) or an
error.json (a job that failed; the CLI writes it). The summary goes to stdout, the table to
<sweep.dir>/table.md (.csv, .tex, .html, .png), as `qwen-eval-table <sweep.dir>` would build it.
The command exits 1 when a job failed or left nothing.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from qwen_eval import distributed, output
from qwen_eval.errors import UserError
from qwen_eval.run_files import RESULTS_FILE, read_results

ERROR_FILE = "error.json"
SUITE_FILE = "suite.json"
TABLE_STEM = "table"


def record_failure(job_dir: Path, message: str, kind: str, task: str | None = None, model: str | None = None) -> None:
    """What the summary says of a job that failed (written in the job's own folder)."""
    job_dir.mkdir(parents=True, exist_ok=True)
    output.write_json(job_dir / ERROR_FILE, {"error": message, "kind": kind, "task": task, "model": model,
                                             "created": output.now_iso()})


def _job_number(folder: Path) -> tuple[int, str]:
    match = re.match(r"(\d+)", folder.name)
    return (int(match[1]) if match else 1 << 30, folder.name)


def job_folders(sweep_dir: Path) -> list[Path]:
    """The sweep's job folders in job order (hidden ones, such as submitit's logs, left out)."""
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_job_number)


def _run_row(job: str, results: dict[str, Any], folder: Path) -> dict[str, Any]:
    limit = (results.get("config") or {}).get("limit")
    return {"job": job, "task": results["task"], "shots": results.get("shots"), "model": results["model"]["name"],
            "headline": output.headline_text(results), "docs": results.get("n_samples", "")
            if limit is None else f"{results.get('n_samples', '')} (limit={limit})", "folder": str(folder)}


def collect(sweep_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(summary rows, results of finished runs, rows of jobs that failed or left nothing)."""
    rows, records, failed = [], [], []
    for folder in job_folders(sweep_dir):
        job = _job_number(folder)[0]
        job = str(job) if job != 1 << 30 else folder.name
        found = sorted(folder.rglob(RESULTS_FILE))
        for path in found:
            try:
                results = read_results(path)
            except UserError as e:
                row = {"job": job, "task": "?", "headline": f"unreadable: {e}", "folder": str(path.parent)}
                rows.append(row)
                failed.append(row)
                continue
            records.append(results)
            rows.append(_run_row(job, results, path.parent))
        error = folder / ERROR_FILE
        suite = folder / SUITE_FILE
        message, task, model = None, "-", "-"
        if error.is_file():
            record = json.loads(error.read_text(encoding="utf-8"))
            message, task, model = record.get("error", "failed"), record.get("task") or "-", record.get("model") or "-"
        elif suite.is_file():
            tasks = json.loads(suite.read_text(encoding="utf-8")).get("tasks", [])
            bad = [t["task"] for t in tasks if t.get("status") != "ok"]
            message = f"suite: {', '.join(bad)} did not finish" if bad else None
        elif not found:
            message = "no results (the job's log is under .submitit/ when a submitit launcher ran it)"
        if message:
            row = {"job": job, "task": task, "model": model, "headline": f"FAILED: {message}", "folder": str(folder)}
            rows.append(row)
            failed.append(row)
    return rows, records, failed


def write_sweep_table(sweep_dir: Path, records: list[dict[str, Any]]) -> list[Path]:
    from qwen_eval import table_formats
    from qwen_eval.table_cli import build_tables

    written = []
    for kind, table in build_tables(records, stderr=True).items():
        stem = sweep_dir / (TABLE_STEM if kind == "benchmarks" else f"{TABLE_STEM}-long_context")
        written += table_formats.write_table(table, stem, formats=table_formats.FORMATS)
    return written


def summary_text(sweep_dir: Path, rows: list[dict[str, Any]], failed: list[dict[str, Any]],
                 table: Path | None) -> str:
    from tabulate import tabulate

    columns = ("job", "task", "shots", "model", "headline", "docs", "folder")
    body = tabulate([[row.get(c, "") for c in columns] for row in rows], headers=columns, tablefmt="simple",
                    disable_numparse=True)
    runs = len(rows) - len(failed)
    lines = [f"sweep {sweep_dir}: {runs} run{'s' if runs != 1 else ''} finished"
             f"{f', {len(failed)} failed' if failed else ''}", body]
    if table is not None:
        lines.append(f"table: {table}  (rebuild or combine: qwen-eval-table {sweep_dir})")
    return "\n".join(lines) + "\n"


def finish(sweep_dir: Path) -> bool:
    """Print the summary, write the table; True when every job left a result."""
    if not sweep_dir.is_dir():
        print(f"sweep {sweep_dir}: no job ran", file=sys.stdout)
        return False
    rows, records, failed = collect(sweep_dir)
    written = write_sweep_table(sweep_dir, records) if records else []
    table = next((p for p in written if p.name == f"{TABLE_STEM}.md"), None)
    print(summary_text(sweep_dir, rows, failed, table), end="", file=sys.stdout, flush=True)
    return not failed


class SweepSummary(Callback):
    """Hydra callback: the summary and table at the end of a multirun."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not distributed.is_main():
            return
        if not finish(Path(str(config.hydra.sweep.dir)).absolute()):
            raise SystemExit(1)
