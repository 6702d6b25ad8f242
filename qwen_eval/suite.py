"""Suites: several tasks against one loaded model, then one table of them all.

    qwen-eval suite=model_card model=qwen-14b model.path=DIR data.path=DATA_ROOT

A suite is a YAML file in conf/suite/ (or in a folder added with hydra.searchpath=[file://DIR]):
`name`, and `tasks`, a list of {task, shots, options} where options override the task's defaults
and shots, when left out, is the task's own default (the model card's count).

The backend (and its weights) is built once, after the first task's data loaded. A task that
fails is recorded with its one-line error and the others still run; the command exits 1 when
anything failed. The table (and suite.json) is rewritten after every task, so a suite that is
stopped midway (Ctrl-C, a Slurm time limit, a kill) leaves the table of what finished, `-` for
the rest.
"""

from __future__ import annotations

import sys
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from qwen_eval import distributed, options, output, registry
from qwen_eval.backends import Backend, build
from qwen_eval.errors import UserError
from qwen_eval.evaluation import load_documents, make_task, multirun_job_dir, open_cache, run_task, slug


def _task_config(name: str) -> dict[str, Any]:
    """A task's config node as `task=<name>` would compose it (YAML, or a plugin's defaults)."""
    found = options.task_defaults(name)
    if found is None:
        registry.task_class(name)  # an unknown task: the error lists the valid ones
        raise UserError(f"task {name}: no conf/task/{name}.yaml and no default options")
    return found


def _task_run_config(cfg: DictConfig, entry: DictConfig, data_root: Path | None) -> DictConfig:
    run_cfg = cfg.copy()
    with open_dict(run_cfg):
        run_cfg.task = _task_config(entry.task)
        for key, value in (entry.get("options") or {}).items():  # {task: gsm8k, options: {max_new_tokens: 256}}
            if key not in run_cfg.task:
                raise UserError(f"suite {cfg.suite.name}: task {entry.task} has no option {key!r} "
                                f"(options: {', '.join(k for k in run_cfg.task if k != 'name') or 'none'})")
            run_cfg.task[key] = value
        options.check_options("task", str(entry.task), OmegaConf.to_container(run_cfg.task, resolve=True),
                              _task_config(entry.task))
        run_cfg.shots = entry.get("shots")
        del run_cfg["suite"]
        if data_root is not None:
            folder = data_root / entry.task
            run_cfg.data.path = str(folder) if folder.is_dir() else None
            if not folder.is_dir() and run_cfg.data.source == "local":
                run_cfg.data.source = "auto"
    return run_cfg


def _shots(entry: DictConfig) -> int | None:
    """The entry's shots, else its task's default (None for a task that does not load)."""
    if entry.get("shots") is not None:
        return entry.shots
    try:
        return registry.task_class(entry.task).default_shots
    except Exception:  # an unknown or broken task fails in its turn, with its one-line error
        return None


def suite_root(cfg: DictConfig, model_name: str) -> Path:
    """output_dir, else Hydra's job folder in a multirun, else results/runs/suite-<name>-<model>-<time>."""
    if cfg.output_dir:
        return Path(str(cfg.output_dir)).absolute()
    job_dir = multirun_job_dir()
    if job_dir is not None:
        return job_dir
    stamp = datetime.now().strftime('%Y%m%d-%H%M%S')
    return Path("results").absolute() / "runs" / f"suite-{cfg.suite.name}-{model_name}-{stamp}"


def write_suite_table(root: Path, suite_name: str, model: dict[str, Any] | None, records: list[dict[str, Any]],
                      status: list[dict[str, Any]]) -> None:
    """table.md/.csv/.tex/.html/.png and suite.json of what has finished so far."""
    from qwen_eval import table_formats, tables

    root.mkdir(parents=True, exist_ok=True)
    table = tables.build_table(records, stderr=True)
    written = table_formats.write_table(table, root / "table", formats=("md", "csv", "tex", "html"))
    if records:
        written.append(table_formats.plot_table(table, root / "table.png"))
    output.write_json(root / "suite.json", {"suite": suite_name, "model": model, "tasks": status,
                                            "files": [p.name for p in written], "created": output.now_iso()})


def run_suite(cfg: DictConfig) -> list[dict[str, Any]]:
    suite = cfg.suite
    data_root = Path(str(cfg.data.path)).expanduser() if cfg.data.get("path") else None
    if data_root is not None and not data_root.is_dir():
        raise UserError(f"suite {suite.name}: data.path {data_root} is not a folder (it should hold one "
                        f"folder per task: mmlu/, ceval/, ...)")
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    backend: Backend | None = None
    cache = open_cache(cfg)
    root = suite_root(cfg, slug(str(model_cfg.get("name") or model_cfg.get("backend"))))

    records: list[dict[str, Any]] = []
    status = [{"task": e.task, "shots": _shots(e), "status": "pending"} for e in suite.tasks]
    main = distributed.is_main()
    for i, entry in enumerate(suite.tasks):
        try:
            run_cfg = _task_run_config(cfg, entry, data_root)
            task = make_task(run_cfg.task, run_cfg)
            loaded = load_documents(run_cfg, task)
            if backend is None:  # after the first task's data: a wrong data path fails in seconds
                backend = build(model_cfg, seed=int(cfg.seed))
            record = run_task(run_cfg, task, backend, cache, output_dir=root / entry.task, loaded=loaded)
            if record is not None:
                records.append(record)
            status[i] = {**status[i], "status": "ok", "output_dir": str(root / entry.task)}
        except KeyboardInterrupt:
            status[i] = {**status[i], "status": "interrupted"}
            if main:
                write_suite_table(root, suite.name, backend and backend.describe(), records, status)
                print(f"suite {suite.name}: interrupted; the table of the {len(records)} finished tasks is in "
                      f"{root / 'table.md'}", file=sys.stderr)
            raise
        except (UserError, Exception) as e:  # one task's failure must not lose the others
            if cfg.get("debug"):
                traceback.print_exc()
            line = " ".join(str(e).split()) or type(e).__name__
            kind = "error" if isinstance(e, UserError) else type(e).__name__
            print(f"qwen-eval: suite {suite.name}: task {entry.task} failed: {line}", file=sys.stderr)
            status[i] = {**status[i], "status": "failed", "kind": kind, "error": line}
        if main:
            write_suite_table(root, suite.name, backend and backend.describe(), records, status)

    if not main:
        return records
    failed = [s["task"] for s in status if s["status"] != "ok"]
    print(f"suite {suite.name}: {len(status) - len(failed)}/{len(status)} tasks finished"
          f"{' (failed: ' + ', '.join(failed) + ')' if failed else ''} -> {root / 'table.md'}", file=sys.stdout,
          flush=True)
    if failed:
        raise SystemExit(1)
    return records
