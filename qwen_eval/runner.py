"""Answering a task's requests: sort, batch, shard over ranks, progress; dedupe and the answer
cache are the CachingBackend wrapped around the backend (qwen_eval/backends/caching.py).

    evaluate(task, docs, backend, cache=...)   # requests -> answers -> samples -> metrics

Requests are sorted by their text before batching. Sorting lexicographically (rather than by
length alone) keeps requests that share a few-shot prefix — every question of one MMLU subject,
every GSM8K question — next to each other, so a batch shares one long prefix that the bundled
engine computes once; the engine then orders each batch by length for padding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from tqdm.auto import tqdm

from qwen_eval import distributed
from qwen_eval.backends import Backend
from qwen_eval.backends.caching import CachingBackend
from qwen_eval.cache import AnswerCache
from qwen_eval.requests import Request, Response, result_from_json, result_to_json
from qwen_eval.task import Doc, Sample, Task


@dataclass
class EvalResult:
    samples: list[Sample]
    metrics: dict[str, float]
    requests_total: int
    requests_cached: int
    timing: dict[str, float] = field(default_factory=dict)


def _sort_text(request: Request) -> str:
    return request.text if request.kind == "rolling" else request.context


def answer_requests(requests: Sequence[Request], backend: Backend, *, cache: AnswerCache | None = None,
                    batch_size: int = 16, progress: bool = False) -> tuple[list[Response], dict[str, float]]:
    """Answers aligned with `requests`, and run statistics (counts, seconds, tokens/s).

    Under torchrun every rank calls this with the same requests; each answers its share of the
    uncached batches and all ranks return the full list.
    """
    start = time.perf_counter()
    store = CachingBackend(backend, cache)
    todo = store.load(requests)  # deduplicated, stored answers read: the keys still to compute
    unique, n_cached = store.requests, store.n_cached

    todo = sorted(todo, key=lambda k: (unique[k].kind, _sort_text(unique[k])))
    # Every rank must split the same list. Each reads the cache at its own moment, and a rank that
    # starts late can see answers another rank has already written: all take rank 0's list.
    todo = distributed.broadcast(todo)
    batches: list[tuple[str, list[str]]] = []
    for kind in ("choice", "generate", "rolling"):
        kind_keys = [k for k in todo if unique[k].kind == kind]
        batches += [(kind, kind_keys[i:i + batch_size]) for i in range(0, len(kind_keys), batch_size)]
    my_batches = batches[distributed.rank()::distributed.world_size()]

    tokens_before = backend.tokens_processed
    to_compute = sum(len(b) for _, b in batches)  # a bar only for real work: none when all is cached
    bar = tqdm(total=sum(len(b) for _, b in my_batches), desc=f"{backend.name}", unit="req",
               disable=not progress or not distributed.is_main() or to_compute == 0, dynamic_ncols=True)

    def advance(n: int) -> None:
        bar.update(n)
        elapsed = max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(tok_s=f"{(backend.tokens_processed - tokens_before) / elapsed:.0f}", refresh=False)

    answer = {"choice": store.choice, "generate": store.generate, "rolling": store.rolling}
    for kind in ("choice", "generate", "rolling"):
        mine = [batch_keys for k, batch_keys in my_batches if k == kind]
        if mine and kind in store.streams:
            # all of them in one call: the engine's decode batch refills as rows end, so no
            # batch_size chunk waits alone for its longest answer; committed every batch_size answers
            store.answer_streaming(kind, [unique[k] for batch_keys in mine for k in batch_keys],
                                   lambda i, result: advance(1), commit_every=batch_size)
            continue
        for batch_keys in mine:
            answer[kind]([unique[k] for k in batch_keys])  # computed, committed to the cache, kept in store
            advance(len(batch_keys))
    bar.close()

    if distributed.world_size() > 1:
        shared = {k: (unique[k].kind, result_to_json(r)) for k, r in store.computed.items()}
        for part in distributed.all_gather(shared):
            store.add({k: result_from_json(kind, text) for k, (kind, text) in part.items()})
        # cached when rank 0 read the cache, not yet when this rank did
        store.reread([k for k in unique if k not in store.answers])

    seconds = time.perf_counter() - start
    tokens = backend.tokens_processed - tokens_before
    stats = {"requests_total": len(unique), "requests_cached": n_cached, "answer_seconds": seconds,
             "tokens": tokens, "tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
             "requests_per_second": (len(unique) - n_cached) / seconds if seconds > 0 else 0.0}
    return store.answers_for(requests), stats


def evaluate(task: Task, docs: Sequence[Doc], backend: Backend, *, cache: AnswerCache | None = None,
             batch_size: int = 16, progress: bool = False) -> EvalResult:
    """Run one task over `docs`: build requests, answer them, score every document, aggregate.

    Under torchrun only rank 0 scores (scoring may execute code in the sandbox); other ranks
    return an EvalResult with no samples.
    """
    per_doc = [list(task.requests_for(doc)) for doc in docs]
    backend.bind_documents({doc.doc_id: reqs for doc, reqs in zip(docs, per_doc)})
    flat = [r for reqs in per_doc for r in reqs]
    responses, stats = answer_requests(flat, backend, cache=cache, batch_size=batch_size, progress=progress)
    if not distributed.is_main():
        return EvalResult([], {}, int(stats["requests_total"]), int(stats["requests_cached"]), stats)

    score_start = time.perf_counter()
    grouped, offset = [], 0
    for reqs in per_doc:
        grouped.append(responses[offset:offset + len(reqs)])
        offset += len(reqs)
    samples = list(task.score_many(docs, grouped))  # default: task.score per document
    if len(samples) != len(docs):
        raise RuntimeError(f"task {task.name}: score_many returned {len(samples)} samples for {len(docs)} documents")
    metrics = task.aggregate(samples)
    stats["scoring_seconds"] = time.perf_counter() - score_start
    return EvalResult(samples, metrics, int(stats["requests_total"]), int(stats["requests_cached"]), stats)
