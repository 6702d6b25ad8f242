"""Suites: several tasks against one loaded model, then one table of them all.

    qwen-eval suite=model_card model=qwen-14b model.path=DIR data.path=DATA_ROOT

A suite is a YAML file in conf/suite/ (or in a folder added with hydra.searchpath=[file://DIR]):
`name`, and `tasks`, a list of {task, shots, options} where options override the task's YAML.

The backend (and its weights) is built once. A task that fails is recorded with its one-line
error and the others still run; the table at the end shows what finished, `-` for the rest, and
the command exits 1 when anything failed.
"""

from __future__ import annotations

import sys
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from qwen_eval import distributed, output, registry
from qwen_eval.backends import build
from qwen_eval.errors import UserError


def _task_config(name: str) -> dict[str, Any]:
    """A task's config node as `task=<name>` would compose it (YAML, or a plugin's defaults)."""
    from importlib import resources

    path = Path(str(resources.files("qwen_eval.conf"))) / "task" / f"{name}.yaml"
    if path.is_file():
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return {"name": name, **registry.task_class(name).default_options()}


def _task_run_config(cfg: DictConfig, entry: DictConfig, data_root: Path | None) -> DictConfig:
    run_cfg = cfg.copy()
    with open_dict(run_cfg):
        run_cfg.task = _task_config(entry.task)
        for key, value in (entry.get("options") or {}).items():  # {task: gsm8k, options: {max_new_tokens: 256}}
            if key not in run_cfg.task:
                raise UserError(f"suite {cfg.suite.name}: task {entry.task} has no option {key!r} "
                                f"(options: {', '.join(k for k in run_cfg.task if k != 'name') or 'none'})")
            run_cfg.task[key] = value
        run_cfg.shots = entry.get("shots")
        del run_cfg["suite"]
        if data_root is not None:
            folder = data_root / entry.task
            run_cfg.data.path = str(folder) if folder.is_dir() else None
            if not folder.is_dir() and run_cfg.data.source == "local":
                run_cfg.data.source = "auto"
    return run_cfg


def run_suite(cfg: DictConfig) -> list[dict[str, Any]]:
    from qwen_eval.evaluation import make_task, open_cache, run_task
    from qwen_eval import tables

    suite = cfg.suite
    data_root = Path(str(cfg.data.path)).expanduser() if cfg.data.get("path") else None
    if data_root is not None and not data_root.is_dir():
        raise UserError(f"suite {suite.name}: data.path {data_root} is not a folder (it should hold one "
                        f"folder per task: mmlu/, ceval/, ...)")
    backend = build(OmegaConf.to_container(cfg.model, resolve=True), seed=int(cfg.seed))
    cache = open_cache(cfg)
    root = Path(str(cfg.output_dir)) if cfg.output_dir else (
        Path("results") / "runs" / f"suite-{suite.name}-{backend.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")

    records, status = [], []
    for entry in suite.tasks:
        try:
            run_cfg = _task_run_config(cfg, entry, data_root)
            task = make_task(run_cfg.task, run_cfg)
            record = run_task(run_cfg, task, backend, cache, output_dir=root / entry.task)
            if record is not None:
                records.append(record)
            status.append({"task": entry.task, "shots": entry.get("shots"), "status": "ok",
                           "output_dir": str(root / entry.task)})
        except (UserError, Exception) as e:  # one task's failure must not lose the others
            if cfg.get("debug"):
                traceback.print_exc()
            line = " ".join(str(e).split()) or type(e).__name__
            kind = "error" if isinstance(e, UserError) else type(e).__name__
            print(f"qwen-eval: suite {suite.name}: task {entry.task} failed: {line}", file=sys.stderr)
            status.append({"task": entry.task, "shots": entry.get("shots"), "status": "failed", "kind": kind,
                           "error": line})

    if not distributed.is_main():
        return records
    root.mkdir(parents=True, exist_ok=True)
    table = tables.build_table(records, stderr=True)
    written = tables.write_table(table, root / "table", formats=("md", "csv", "tex", "html"))
    if records:
        written.append(tables.plot_table(table, root / "table.png"))
    output.write_json(root / "suite.json", {"suite": suite.name, "model": backend.describe(), "tasks": status,
                                            "files": [p.name for p in written], "created": output.now_iso()})
    failed = [s["task"] for s in status if s["status"] != "ok"]
    print(f"suite {suite.name}: {len(status) - len(failed)}/{len(status)} tasks finished"
          f"{' (failed: ' + ', '.join(failed) + ')' if failed else ''} -> {root / 'table.md'}", file=sys.stderr)
    if failed:
        raise SystemExit(1)
    return records
