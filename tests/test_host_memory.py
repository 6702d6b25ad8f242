"""model/host_memory.py: the kernel caches' capacities and the heap handed back between engine calls."""

from __future__ import annotations

import os
import sys

import pytest

from helpers_checkpoints import random_model, tiny_config
from qwen_eval.backends import qwen as qwen_backend
from qwen_eval.backends.qwen import QwenBackend
from qwen_eval.model import host_memory
from qwen_eval.model.engine import Engine
from qwen_eval.model.tokenizer import load_tokenizer
from qwen_eval.requests import Choice, Generate

CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def test_both_matmul_caches_are_capped_unless_the_user_set_one(monkeypatch):
    for variable in CACHE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "64")  # the user's choice stands
    host_memory.bound_kernel_caches()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(host_memory.KERNEL_CACHE_CAPACITY)
    assert os.environ["LRU_CACHE_CAPACITY"] == "64"


def rss_mib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 >> 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's; RSS read from /proc")
def test_free_heap_pages_go_back_to_the_system():
    """200 MiB of 64 KiB buffers (glibc serves them from the heap), all freed but the last, which
    pins the heap's top: glibc keeps the pages until release_free_memory hands them back."""
    blocks = [bytearray(64 << 10) for _ in range(3200)]
    del blocks[:-1]
    held = rss_mib()
    assert host_memory.release_free_memory() is True
    assert held - rss_mib() > 100


def test_the_bundled_backend_releases_memory_after_each_call_and_each_streamed_answer(monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(qwen_backend, "release_free_memory", lambda: calls.append("released"))
    engine = Engine(random_model(tiny_config(), seed=2), load_tokenizer(None), max_length=256)
    backend = QwenBackend(engine, name="tiny", path=None, fingerprint="test")
    assert (backend.device, backend.dtype) == ("cpu", "float32")
    backend.choice([Choice("2 + 2 =", (" 4", " 5"))])
    assert calls == ["released"]
    answered: list[int] = []
    backend.generate_streaming([Generate("Once upon a time", max_new_tokens=3),
                                Generate("The Moon", max_new_tokens=2)],
                               lambda index, result: answered.append(index))
    assert sorted(answered) == [0, 1] and calls == ["released"] * 3
