"""CachingBackend: the answer cache in front of any backend (dedupe, hits, one commit per batch,
streamed answers committed as they end)."""

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


class Streaming(Counting):
    """Reports answers one at a time, in reverse order, and can fail after `fail_after` of them."""

    streams = frozenset({"generate"})

    def __init__(self, fail_after: int | None = None):
        super().__init__()
        self.fail_after = fail_after

    def answer_streaming(self, kind, requests, on_done):
        self.batches.append([r.context for r in requests])
        results = [GenerateResult((r.context.upper(),)) for r in requests]
        for n, i in enumerate(reversed(range(len(requests)))):
            if n == self.fail_after:
                raise RuntimeError("killed mid-call")
            on_done(i, results[i])
        return results


def test_streamed_answers_are_committed_as_they_end_and_kept_when_the_call_fails(tmp_path):
    """A streaming call that raises after 3 of 5 answers leaves those 3 in the cache (2 in one
    commit_every=2 commit, the third in the commit on the way out); the rerun computes only the
    other 2, and on_done reaches every requested place, duplicates and stored answers included."""
    cache = AnswerCache(tmp_path / "answers.sqlite")
    asked = [Generate(c) for c in "abcde"]
    first = CachingBackend(Streaming(fail_after=3), cache)
    first.load(asked)
    with pytest.raises(RuntimeError, match="killed mid-call"):
        first.generate_streaming(asked, commit_every=2)
    stored = cache.get_many("counting-fp", [request_key(r) for r in asked])
    assert sorted(r.texts[0] for r in stored.values()) == ["C", "D", "E"]

    inner = Streaming()
    second = CachingBackend(inner, cache)
    again = asked + [Generate("a")]
    second.load(again)
    seen: dict[int, str] = {}
    got = second.generate_streaming(again, lambda i, r: seen.setdefault(i, r.texts[0]), commit_every=2)
    assert inner.batches == [["a", "b"]]  # one call, only what had no answer
    assert [r.texts[0] for r in got] == ["A", "B", "C", "D", "E", "A"]
    assert seen == dict(enumerate(["A", "B", "C", "D", "E", "A"]))
    assert len(cache.get_many("counting-fp", [request_key(r) for r in asked])) == 5


def test_a_backend_that_does_not_stream_reports_after_its_call():
    """The default generate_streaming is generate, then every answer in order."""
    inner = Counting()
    order: list[int] = []
    got = CachingBackend(inner, None).generate_streaming([Generate("x"), Generate("y")], lambda i, r: order.append(i))
    assert [r.texts[0] for r in got] == ["X", "Y"] and order == [0, 1] and inner.batches == [["x", "y"]]
    assert not CachingBackend(inner, None).streams and CachingBackend(Streaming(), None).streams == {"generate"}


def test_the_runner_gives_a_streaming_backend_all_generate_requests_in_one_call(tmp_path):
    """batch_size chunks the calls of a backend that does not stream; one that streams gets the
    run's uncached Generate requests in one call, and batch_size only paces the commits."""
    from qwen_eval.runner import answer_requests

    asked = [Generate(c) for c in "abcdefg"]
    plain, streaming = Counting(), Streaming()
    for backend in (plain, streaming):
        answers, stats = answer_requests(asked, backend, cache=AnswerCache(tmp_path / f"{id(backend)}.sqlite"),
                                         batch_size=3)
        assert [r.texts[0] for r in answers] == list("ABCDEFG") and stats["requests_total"] == 7
    assert [len(b) for b in plain.batches] == [3, 3, 1]
    assert [len(b) for b in streaming.batches] == [7]
