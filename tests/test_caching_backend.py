"""CachingBackend: the answer cache in front of any backend (dedupe, hits, one commit per batch)."""

from __future__ import annotations

import pytest

from qwen_eval.backends import Backend
from qwen_eval.backends.caching import CachingBackend
from qwen_eval.cache import AnswerCache
from qwen_eval.errors import UserError
from qwen_eval.requests import Choice, Generate, GenerateResult, request_key


class Counting(Backend):
    name, fingerprint, max_length = "counting", "counting-fp", 64

    def __init__(self):
        self.batches: list[list[str]] = []
        self.bound = None

    def generate(self, requests):
        self.batches.append([r.context for r in requests])
        return [GenerateResult((r.context.upper(),)) for r in requests]

    def bind_documents(self, doc_requests):
        self.bound = dict(doc_requests)


def test_duplicates_are_computed_once_and_answers_align():
    inner = Counting()
    cached = CachingBackend(inner, None)
    asked = [Generate("a"), Generate("b"), Generate("a")]
    assert cached.load(asked) == [request_key(Generate("a")), request_key(Generate("b"))]
    assert [r.texts[0] for r in cached.generate(asked)] == ["A", "B", "A"]
    assert inner.batches == [["a", "b"]]
    assert [r.texts[0] for r in cached.answers_for(asked)] == ["A", "B", "A"]


def test_stored_answers_are_not_recomputed_and_each_batch_is_committed(tmp_path):
    cache = AnswerCache(tmp_path / "answers.sqlite")
    first = CachingBackend(Counting(), cache)
    first.load([Generate("a")])
    first.generate([Generate("a")])
    inner = Counting()
    second = CachingBackend(inner, cache)  # a new run on the same cache
    assert second.load([Generate("a"), Generate("b")]) == [request_key(Generate("b"))]
    assert second.n_cached == 1
    assert [r.texts[0] for r in second.generate([Generate("a"), Generate("b")])] == ["A", "B"]
    assert inner.batches == [["b"]]  # only what had no answer reaches the backend
    assert cache.get_many("counting-fp", [request_key(Generate("b"))])  # committed at once


def test_the_wrapper_is_the_inner_backend_to_the_outside():
    inner = Counting()
    cached = CachingBackend(inner, None)
    assert (cached.name, cached.fingerprint, cached.max_length) == ("counting", "counting-fp", 64)
    cached.bind_documents({"d0": [Generate("a")]})
    assert inner.bound == {"d0": [Generate("a")]}
    with pytest.raises(UserError, match="backend counting cannot answer Choice requests"):
        cached.choice([Choice("x", (" A", " B"))])


def test_a_backend_returning_too_few_answers_is_an_error():
    class Short(Counting):
        def generate(self, requests):
            return []

    with pytest.raises(RuntimeError, match="returned 0 answers for 1 generate requests"):
        CachingBackend(Short(), None).generate([Generate("a")])
