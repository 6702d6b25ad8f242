"""Any backend with the answer cache in front of it (the idea of lm-eval's CachingLM).

    cached = CachingBackend(backend, cache)        # cache: an AnswerCache, or None (memory only)
    todo = cached.load(requests)                   # dedupe; read stored answers; the keys still to compute
    cached.generate(batch)                         # computes only what has no answer, stores it, returns all
    cached.answer_streaming(kind, requests, on_done)  # the same for a streaming backend, stored as answers end
    cached.answers_for(requests)                   # every answer, aligned with the requests

Answers are keyed by (the inner backend's fingerprint, `request_key(request)`): the same request
asked twice, by two tasks or two runs, is computed once. Each batch the inner backend answers is
committed to the cache at once, so a run killed at any moment resumes where it stopped; a streaming
call is committed every `commit_every` answers as they end, and whatever ended when it raises.
The wrapper never reorders or regroups what it is given: the batches the inner backend sees are
the caller's batches less their answered requests (the runner passes only unanswered ones).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from qwen_eval.backends.base import Backend
from qwen_eval.cache import AnswerCache
from qwen_eval.requests import Generate, GenerateResult, Request, Response, request_key


class CachingBackend(Backend):
    def __init__(self, inner: Backend, cache: AnswerCache | None):
        self.inner = inner
        self.cache = cache
        self.requests: dict[str, Request] = {}  # every request seen, by key, in first-seen order
        self.answers: dict[str, Response] = {}  # every answer known (stored or computed)
        self.computed: dict[str, Response] = {}  # the answers this process computed
        self.n_cached = 0  # requests whose answer came from the cache

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def fingerprint(self) -> str:
        return self.inner.fingerprint

    @property
    def max_length(self) -> int:
        return self.inner.max_length

    @property
    def tokens_processed(self) -> int:
        return self.inner.tokens_processed

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def bind_documents(self, doc_requests: Mapping[str, Sequence[Request]]) -> None:
        self.inner.bind_documents(doc_requests)

    # -- the cache ------------------------------------------------------------------------------

    def load(self, requests: Sequence[Request]) -> list[str]:
        """Learn `requests` (deduplicated by key) and read their stored answers; the keys of the
        new ones still unanswered, in first-seen order."""
        new = []
        for r in requests:
            key = request_key(r)
            if key not in self.requests:
                self.requests[key] = r
                new.append(key)
        if self.cache is not None and new:
            found = self.cache.get_many(self.fingerprint, new)
            self.answers.update(found)
            self.n_cached += len(found)
        return [k for k in new if k not in self.answers]

    def reread(self, keys: Sequence[str]) -> None:
        """Read `keys` from the cache again (answers another process has written since)."""
        if self.cache is not None and keys:
            self.answers.update(self.cache.get_many(self.fingerprint, list(keys)))

    def add(self, answers: Mapping[str, Response]) -> None:
        """Answers computed elsewhere (another rank), already in the cache."""
        self.answers.update(answers)

    def answers_for(self, requests: Sequence[Request]) -> list[Response]:
        return [self.answers[request_key(r)] for r in requests]

    # -- answering ------------------------------------------------------------------------------

    def _answer(self, kind: str, requests: Sequence[Request]) -> list[Response]:
        keys = [request_key(r) for r in requests]
        missing = {k: r for k, r in zip(keys, requests) if k not in self.answers}
        if missing:
            batch = list(missing.values())
            method = {"choice": self.inner.choice, "generate": self.inner.generate, "rolling": self.inner.rolling}[kind]
            results = method(batch)
            if len(results) != len(batch):
                raise RuntimeError(f"backend {self.name} returned {len(results)} answers for {len(batch)} "
                                   f"{kind} requests")
            fresh = dict(zip(missing, results))
            if self.cache is not None:
                self.cache.put_many(self.fingerprint, [(k, kind, r) for k, r in fresh.items()])
            self.answers.update(fresh)
            self.computed.update(fresh)
        return [self.answers[k] for k in keys]

    def choice(self, requests):
        return self._answer("choice", requests)

    def generate(self, requests):
        return self._answer("generate", requests)

    def rolling(self, requests):
        return self._answer("rolling", requests)

    @property
    def streams(self) -> frozenset[str]:
        return self.inner.streams

    def generate_streaming(self, requests: Sequence[Generate],
                           on_done: Callable[[int, GenerateResult], None] | None = None, *,
                           commit_every: int = 16) -> list[GenerateResult]:
        return self.answer_streaming("generate", requests, on_done, commit_every=commit_every)

    def answer_streaming(self, kind: str, requests: Sequence[Request],
                         on_done: Callable[[int, Response], None] | None = None, *,
                         commit_every: int = 16) -> list[Response]:
        """Like the kind's method, in one call to the inner backend's answer_streaming: each answer is
        kept as it ends and committed every `commit_every` answers (and at the end, or when the
        call raises), so a killed run keeps all but the last few finished answers.
        on_done(i, result) follows each answer, i indexing `requests`."""
        keys = [request_key(r) for r in requests]
        places: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            places.setdefault(k, []).append(i)
        missing = {k: r for k, r in zip(keys, requests) if k not in self.answers}
        missing_keys = list(missing)
        pending: list[tuple[str, str, Response]] = []

        def commit() -> None:
            if self.cache is not None and pending:
                self.cache.put_many(self.fingerprint, pending)
            pending.clear()

        def done(j: int, result: Response) -> None:
            key = missing_keys[j]
            self.answers[key] = self.computed[key] = result
            pending.append((key, kind, result))
            if len(pending) >= commit_every:
                commit()
            if on_done is not None:
                for i in places[key]:
                    on_done(i, result)

        if on_done is not None:
            for i, k in enumerate(keys):
                if k in self.answers:
                    on_done(i, self.answers[k])
        if missing:
            try:
                results = self.inner.answer_streaming(kind, list(missing.values()), done)
            finally:
                commit()
            if len(results) != len(missing):
                raise RuntimeError(f"backend {self.name} returned {len(results)} answers for {len(missing)} "
                                   f"{kind} requests")
            unreported = [k for k in missing_keys if k not in self.answers]
            if unreported:
                raise RuntimeError(f"backend {self.name} did not report {len(unreported)} of its "
                                   f"{len(missing)} {kind} answers as they ended")
        return [self.answers[k] for k in keys]
