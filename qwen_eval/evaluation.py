"""One run, from a composed config to the files in its run folder (docs/architecture.md).

    options.check(cfg)                 every option, before anything is loaded (qwen_eval.cli.run)
    task    = registry.task_class(cfg.task.name)(options, shots, protocol, seed)
    docs    = task.load(cfg.data, cfg.limit)      before the model: bad data fails in seconds
    backend = backends.build(cfg.model)
    result  = runner.evaluate(task, docs, backend, cache)
    write     results.json, samples.jsonl, table.md; the result line on stdout
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from qwen_eval import chat, distributed, options, output, registry
from qwen_eval.backends import Backend
from qwen_eval.cache import AnswerCache
from qwen_eval.errors import UserError
from qwen_eval.runner import EvalResult, evaluate
from qwen_eval.task import DataSpec, Task

DATA_SOURCES = options.DATA_SOURCES
PROTOCOLS = options.PROTOCOLS


@dataclass
class Loaded:
    """A task's documents, read before the model is built."""

    spec: DataSpec
    docs: list
    started: float
    commit: str | None  # the checkout's commit when the run started (a long run can span commits)


def make_task(task_cfg: Mapping[str, Any], cfg: DictConfig, shots: Any = None) -> Task:
    """The task of the `task` node; the one place its options become plain Python (dicts, lists)."""
    if isinstance(task_cfg, DictConfig):
        task_cfg = OmegaConf.to_container(task_cfg, resolve=True)
    name = task_cfg["name"]
    cls = registry.task_class(name)
    task_options = {k: v for k, v in task_cfg.items() if k != "name"}
    budget = (cfg.get("model") or {}).get("max_new_tokens")
    if budget is not None and task_options.get("max_new_tokens") is not None:
        # the model's own generation budget (model=tiny never stops by itself) caps the task's
        task_options["max_new_tokens"] = min(int(task_options["max_new_tokens"]), int(budget))
    shots = cfg.shots if shots is None else shots
    if shots is not None:
        if not isinstance(shots, int) or isinstance(shots, bool) or shots < 0:
            raise UserError(f"shots={shots!r} is not a whole number >= 0")
        if cls.max_shots is not None and shots > cls.max_shots:
            raise UserError(f"task {name} supports shots from 0 to {cls.max_shots}, not {shots}")
    if cfg.protocol not in PROTOCOLS:
        raise UserError(f"protocol={cfg.protocol!r} is not a protocol; valid: {', '.join(PROTOCOLS)}")
    task = cls(task_options, shots=shots, protocol=cfg.protocol, seed=int(cfg.seed))
    chat_options = chat.ChatOptions.from_config(cfg.get("chat"))
    task.fewshot_as_multiturn, task.chat_system = chat_options.fewshot_as_multiturn, chat_options.system
    return task


def data_spec(cfg: DictConfig) -> DataSpec:
    data = OmegaConf.to_container(cfg.data, resolve=True)
    source = data.pop("source", "auto")
    if source not in DATA_SOURCES:
        raise UserError(f"data.source={source!r} is not a source; valid: {', '.join(DATA_SOURCES)}")
    path = data.pop("path", None)
    return DataSpec(source=source, path=str(path) if path is not None else None, options=data)


def open_cache(cfg: DictConfig) -> AnswerCache | None:
    if not cfg.get("cache_dir"):
        return None
    return AnswerCache(Path(str(cfg.cache_dir)).expanduser() / "answers.sqlite")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def multirun_job_dir() -> Path | None:
    """Hydra's folder for this job of a multirun, <sweep.dir>/<num>-<task>-<model> (absolute);
    None outside a multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except ValueError:  # not inside a Hydra app (tests, the Python API)
        return None
    return Path(hc.runtime.output_dir) if hc.mode == RunMode.MULTIRUN else None


def default_output_dir(cfg: DictConfig, task: Task, model_name: str) -> Path:
    stem = slug(f"{task.name}-{task.shots}shot-{model_name}")
    job_dir = multirun_job_dir()
    if job_dir is not None:
        return job_dir
    base = Path("results").absolute() / "runs" / f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 2
    while out.exists():
        out, n = base.with_name(f"{base.name}-{n}"), n + 1
    return out


def results_record(task: Task, backend: Backend, result: EvalResult, spec: DataSpec, docs, cfg: DictConfig,
                   prompts_fingerprint: str, started: float, commit: str | None) -> dict[str, Any]:
    metrics = result.metrics
    headline = task.headline
    if headline not in metrics:
        raise RuntimeError(f"task {task.name} reported no {headline!r} metric (has: {', '.join(metrics)})")
    record = {
        "task": task.name,
        "task_version": task.version,
        "shots": task.shots,
        "protocol": task.protocol,
        "model": backend.describe(),
        "metrics": metrics,
        "headline": {"metric": headline, "value": metrics[headline], "stderr": metrics.get(f"{headline}_stderr")},
        "model_card_column": task.model_card_column,
        "n_samples": len(result.samples),
        "requests": {"total": result.requests_total, "cached": result.requests_cached},
        "data": {"source": spec.resolved_source(), "path": spec.path, "fingerprint": output.fingerprint(docs)},
        "prompt_fingerprint": prompts_fingerprint,
        "task_config": task.describe(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": output.package_versions(),
        "git_commit": commit,
        "timing": {"wall_seconds": time.time() - started, **{k: v for k, v in result.timing.items()
                                                              if k not in ("requests_total", "requests_cached")}},
        "world_size": distributed.world_size(),
        "created": output.now_iso(),
    }
    info = task.run_info()
    if info is not None:
        record["extra"] = info
    return record


def load_documents(cfg: DictConfig, task: Task) -> Loaded:
    """The task's documents as `data` and `limit` say (a UserError when there are none)."""
    started, commit = time.time(), output.git_commit()
    spec = data_spec(cfg)
    limit = cfg.limit
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit={limit!r} must be a whole number >= 1 (or null for everything)")
    docs = task.load(spec, limit)
    if not docs:
        raise UserError(f"task {task.name}: no documents loaded from {spec.path or spec.resolved_source()}")
    return Loaded(spec, list(docs), started, commit)


def cache_note(result: EvalResult, cache: AnswerCache | None) -> str:
    """Where the answers came from, for the result line."""
    total, cached = result.requests_total, result.requests_cached
    if cache is None or cached == 0:
        return f"{total} answer{'s' if total != 1 else ''} computed" + (", no cache" if cache is None else "")
    where = str(cache.path.parent)
    if cached == total:
        return f"all {total} answers from the cache ({where})"
    return f"{cached}/{total} answers from the cache ({where}), {total - cached} computed"


def run_task(cfg: DictConfig, task: Task, backend: Backend, cache: AnswerCache | None,
             output_dir: Path | None = None, loaded: Loaded | None = None) -> dict[str, Any] | None:
    """Evaluate one task and write its run folder; the results record (None on ranks > 0)."""
    loaded = loaded or load_documents(cfg, task)
    spec, docs, started = loaded.spec, loaded.docs, loaded.started
    backend = chat.wrap(backend, chat.ChatOptions.from_config(cfg.get("chat")), task)
    result = evaluate(task, docs, backend, cache=cache, batch_size=int(cfg.batch_size), progress=bool(cfg.progress))
    if not distributed.is_main():
        return None
    requests = [r for d in docs for r in task.requests_for(d)]
    if isinstance(backend, chat.ChatBackend):  # the prompts as the model saw them
        requests = chat.render_requests(requests, backend.template, backend.options)
    prompts = output.fingerprint(r.context if r.kind != "rolling" else r.text for r in requests)
    record = results_record(task, backend, result, spec, docs, cfg, prompts, started, loaded.commit)
    out = Path(output_dir or cfg.output_dir or default_output_dir(cfg, task, backend.name)).absolute()
    out.mkdir(parents=True, exist_ok=True)
    output.write_samples(out / "samples.jsonl", result.samples)
    artifacts = task.write_artifacts(out, record)
    if artifacts:
        record.setdefault("artifacts", [str(p.name) for p in artifacts])
    output.write_json(out / "results.json", record)
    (out / "table.md").write_text(output.run_table_markdown(record), encoding="utf-8")
    limited = f", limit={cfg.limit}" if cfg.get("limit") is not None else ""
    print(f"{task.name} ({task.shots}-shot, {backend.name}): {output.headline_text(record)}  "
          f"[{record['n_samples']} docs{limited}, {cache_note(result, cache)}, "
          f"{record['timing']['wall_seconds']:.1f}s] -> {out}", file=sys.stdout, flush=True)
    return record
