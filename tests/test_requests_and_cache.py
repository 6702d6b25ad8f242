"""Request hashes are stable content hashes; the cache returns exactly what was stored."""

from __future__ import annotations

import dataclasses

import pytest

from qwen_eval.cache import AnswerCache
from qwen_eval.requests import (Choice, ChoiceResult, Generate, GenerateResult, LongContext, Rolling, RollingResult,
                                cut_at_stop, request_key)


def test_request_key_is_a_stable_content_hash():
    # Pinned values: changing how requests hash silently invalidates every user's cache.
    assert request_key(Choice("Q: 1+1?\nAnswer:", (" A", " B"))) == \
        "df567fb3cd3891f787337ee5d8d4ca1e31467e53191630528883f8e5d5bfdff9"
    assert request_key(Generate("hello", stop=("\n",), max_new_tokens=4)) == \
        "8b7a9918c51513aef505a66f1457561317361042c163caf53c82dcc008850eb2"
    a = Choice("ctx", (" A", " B"))
    assert request_key(a) == request_key(Choice("ctx", (" A", " B")))
    assert request_key(a) != request_key(Choice("ctx", (" B", " A")))
    assert request_key(a) != request_key(Choice("ctx ", (" A", " B")))
    g = Generate("ctx", stop=("\n",), max_new_tokens=5)
    assert request_key(g) != request_key(dataclasses.replace(g, max_new_tokens=6))
    assert request_key(g) != request_key(dataclasses.replace(g, temperature=0.5))
    r = Rolling("text", first_tokens=8)
    assert request_key(r) != request_key(dataclasses.replace(r, long_context=LongContext(True, True, None)))
    # a Generate and a Rolling with the same text are different requests
    assert request_key(Generate("x")) != request_key(Rolling("x"))


def test_requests_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Choice("a", ("b",)).context = "c"  # type: ignore[misc]


def test_cut_at_stop_uses_the_earliest_stop():
    assert cut_at_stop("a\n\nb Question: c", ("Question:", "\n\n")) == "a"
    assert cut_at_stop("no stop here", ("\n\n",)) == "no stop here"
    assert cut_at_stop("x[DONE]y", ("", "[DONE]")) == "x"


def test_cache_round_trip_and_isolation_by_model(tmp_path):
    cache = AnswerCache(tmp_path / "c" / "answers.sqlite")
    items = [("k1", "choice", ChoiceResult((-1.5, -0.25), (False, True))),
             ("k2", "generate", GenerateResult(("a", "b"))),
             ("k3", "rolling", RollingResult(-12.5, 7, 9))]
    cache.put_many("model-a", items)
    got = cache.get_many("model-a", ["k1", "k2", "k3", "missing"])
    assert got == {k: v for k, _, v in items}
    assert cache.get_many("model-b", ["k1"]) == {}
    assert cache.count("model-a") == 3
    cache.close()
    reopened = AnswerCache(tmp_path / "c" / "answers.sqlite")  # persisted
    assert reopened.get_many("model-a", ["k2"]) == {"k2": GenerateResult(("a", "b"))}


def test_cache_handles_more_keys_than_one_query(tmp_path):
    cache = AnswerCache(tmp_path / "answers.sqlite")
    cache.put_many("m", [(f"k{i}", "rolling", RollingResult(float(i), i, i)) for i in range(1200)])
    got = cache.get_many("m", [f"k{i}" for i in range(1200)])
    assert len(got) == 1200 and got["k1199"] == RollingResult(1199.0, 1199, 1199)
