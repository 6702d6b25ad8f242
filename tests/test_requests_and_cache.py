"""Request hashes are stable content hashes; the cache returns exactly what was stored."""

from __future__ import annotations

import dataclasses
from pathlib import Path

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


MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
server:/export/home /home nfs4 rw,relatime,vers=4.2 0 0
/dev/nvme0n1 /home/me/scratch xfs rw 0 0
lustre@tcp:/fs /lustre lustre rw,flock 0 0
/dev/sdb /mnt/my\\040disk ext4 rw 0 0
"""


def test_the_cache_uses_wal_locally_and_the_rollback_journal_on_shared_storage(tmp_path):
    from qwen_eval.cache import filesystem_type, journal_mode

    assert journal_mode(Path("/home/me/.cache/qwen-eval"), MOUNTS) == "DELETE"  # NFS: jobs on other nodes
    assert journal_mode(Path("/lustre/project/cache"), MOUNTS) == "DELETE"
    assert journal_mode(Path("/home/me/scratch/cache"), MOUNTS) == "WAL"  # a local disk mounted inside NFS
    assert journal_mode(Path("/tmp/cache"), MOUNTS) == "WAL"
    assert filesystem_type(Path("/mnt/my disk/cache"), MOUNTS) == "ext4"
    assert filesystem_type(Path("/homework"), MOUNTS) == "ext4"  # /home is not a prefix of /homework

    cache = AnswerCache(tmp_path / "answers.sqlite")  # here: whatever this machine's tmp is, it works
    assert cache.journal_mode in ("WAL", "DELETE")
    mode = cache._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode.upper() == cache.journal_mode
    cache.close()
