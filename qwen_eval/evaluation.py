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
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from qwen_eval import chat, distributed, options, output, provenance, registry
from qwen_eval.backends import Backend
from qwen_eval.cache import AnswerCache
from qwen_eval.errors import UserError
from qwen_eval.runner import EvalResult, evaluate
from qwen_eval.requests import Request
from qwen_eval.run_files import checkpoint_of, protocol_of
from qwen_eval.task import DataSpec, Sample, Task

DATA_SOURCES = options.DATA_SOURCES
PROTOCOLS = options.PROTOCOLS


@dataclass
class Loaded:
    """A task's documents, read before the model is built."""

    spec: DataSpec
    docs: list
    started: float
    code: dict[str, Any]  # provenance.code_identity() when the run started (a long run can span commits)
    data: dict[str, Any]  # results.json `data`: source, path, fingerprint, files read, selection


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


def table_columns(task: Task) -> dict[str, str]:
    """Leaderboard column -> the metric shown there: the model card's column (or the task's name)
    with the headline, then the task's extra columns (MBPP+ also fills "MBPP")."""
    return {task.model_card_column or task.name: task.headline, **dict(task.extra_columns)}


def results_record(task: Task, backend: Backend, result: EvalResult, loaded: Loaded, cfg: DictConfig,
                   prompts_fingerprint: str) -> dict[str, Any]:
    metrics = result.metrics
    headline = task.headline
    missing = [m for m in (headline, *task.extra_columns.values()) if m not in metrics]
    if missing:
        raise RuntimeError(f"task {task.name} reported no {missing[0]!r} metric (has: {', '.join(metrics)})")
    wall = time.time() - loaded.started
    record = {
        "task": task.name,
        "task_version": task.version,
        "shots": task.shots,
        "protocol": task.protocol,
        "model": backend.describe(),
        "metrics": metrics,
        "headline": {"metric": headline, "value": metrics[headline], "stderr": metrics.get(f"{headline}_stderr")},
        "model_card_column": task.model_card_column,
        "table_columns": table_columns(task),
        "n_samples": len(result.samples),
        "requests": {"total": result.requests_total, "cached": result.requests_cached},
        "data": loaded.data,
        "prompt_fingerprint": prompts_fingerprint,
        "task_config": task.describe(),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": output.package_versions(),
        "code": loaded.code,
        "git_commit": loaded.code["commit"],
        "machine": provenance.machine_identity(),
        "timing": {"wall_seconds": wall, "load_seconds": getattr(backend, "load_seconds", None), **{k: v for k, v in result.timing.items()
                                            if k not in ("requests_total", "requests_cached")},
                   "peak_rss_bytes": provenance.peak_rss_bytes()},
        "world_size": distributed.world_size(),
        "created": output.now_iso(),
    }
    record["prompt_protocol"] = protocol_of(record)
    info = task.run_info()
    if info is not None:
        record["extra"] = info
    return record


def record_model_input(sample: Sample, asked: Sequence[Request], seen: Sequence[Request], backend: Backend) -> None:
    """Make a sample's `prompt` the exact text the model received for the document's first
    request (chat template, system turn and pre-filled reply included), keep the turns the task
    asked in under `chat`, and list the other requests' texts where they differ (`model_inputs`)."""
    texts = [r.context for r in seen if r.kind != "rolling"]
    if not texts:
        return  # perplexity: the document's text is the input, windowed by the backend
    sample.prompt = texts[0]
    if len(set(texts)) > 1:
        sample.extra["model_inputs"] = texts
    first = next(r for r in asked if r.kind != "rolling")
    if first.messages:
        template = getattr(backend, "template", None)
        sample.extra["chat"] = {"messages": [list(turn) for turn in first.messages],
                                "system": backend.options.system, "prefill": getattr(first, "prefill", ""),
                                "template": template.origin if template else None}


def load_documents(cfg: DictConfig, task: Task) -> Loaded:
    """The task's documents as `data` and `limit` say (a UserError when there are none), with the
    files they were read from and, for a `limit` run, which documents of how many were kept."""
    started, code = time.time(), provenance.code_identity()
    spec = data_spec(cfg)
    limit = cfg.limit
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit={limit!r} must be a whole number >= 1 (or null for everything)")
    with provenance.files_read() as opened:
        docs = list(task.load(spec, limit))
        every = docs if limit is None else list(task.load(spec, None))
    if not docs:
        raise UserError(f"task {task.name}: no documents loaded from {spec.path or task.source_of(spec)}")
    data = {"source": task.source_of(spec), "path": spec.path, "fingerprint": output.fingerprint(docs),
            "files": provenance.data_files(opened), "n_documents": len(every)}
    if len(docs) < len(every):
        data["selection"] = {"limit": limit, "rule": task.limit_rule, "seed": task.seed,
                             "doc_ids": [d.doc_id for d in docs]}
    return Loaded(spec, docs, started, code, data)


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
    docs = loaded.docs
    backend = chat.wrap(backend, chat.ChatOptions.from_config(cfg.get("chat")), task)
    result = evaluate(task, docs, backend, cache=cache, batch_size=int(cfg.batch_size), progress=bool(cfg.progress))
    if not distributed.is_main():
        return None
    asked = [task.requests_for(d) for d in docs]
    seen = [chat.render_requests(reqs, backend.template, backend.options) if isinstance(backend, chat.ChatBackend)
            else reqs for reqs in asked]  # the requests as the model saw them
    for sample, doc_asked, doc_seen in zip(result.samples, asked, seen):
        record_model_input(sample, doc_asked, doc_seen, backend)
    prompts = output.fingerprint(r.context if r.kind != "rolling" else r.text for reqs in seen for r in reqs)
    record = results_record(task, backend, result, loaded, cfg, prompts)
    out = Path(output_dir or cfg.output_dir or default_output_dir(cfg, task, backend.name)).absolute()
    out.mkdir(parents=True, exist_ok=True)
    output.write_samples(out / "samples.jsonl", result.samples)
    artifacts = task.write_artifacts(out, record)
    if artifacts:
        record.setdefault("artifacts", [str(p.name) for p in artifacts])
    output.write_json(out / "results.json", record)
    from qwen_eval.table_cli import run_table_markdown  # pandas and the tables load only here

    (out / "table.md").write_text(run_table_markdown(record), encoding="utf-8")
    limited = f", limit={cfg.limit}" if cfg.get("limit") is not None else ""
    print(f"{task.name} ({task.shots}-shot, {protocol_of(record)}, {checkpoint_of(record)['name']}): "
          f"{output.headline_text(record)}  "
          f"[{record['n_samples']} docs{limited}, {cache_note(result, cache)}, "
          f"{record['timing']['wall_seconds']:.1f}s] -> {out}", file=sys.stdout, flush=True)
    return record
