"""Data parallel on a local Ray cluster: two replicas of the tiny bundled engine answer exactly what
one engine answers, a replica killed mid-run is replaced without losing or repeating answers, and
`qwen-eval ... model.replicas=2` writes the same records as a single-engine run."""

from __future__ import annotations

import json

import pytest

from cli_helpers import read_samples, run_cli
from qwen_eval.requests import Choice, Generate, Rolling

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[test]' (or '.[ray]')")
pytestmark = pytest.mark.slow  # starts a local Ray cluster and two engine processes

TINY = {"backend": "qwen", "name": "tiny", "preset": "tiny", "device": "cpu", "dtype": "float32"}


@pytest.fixture(scope="module")
def pool():
    from qwen_eval.backends import build

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield build({**TINY, "replicas": 2, "replica_chunk": 2, "replica_cpus": 1})
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def single():
    from qwen_eval.backends import build

    return build(TINY)


def requests_of_every_kind():
    choices = [Choice(f"Question {i}: which letter?\nAnswer:", (" A", " B", " C", " D")) for i in range(9)]
    choices.append(Choice("2 + 2 =", (" 4", " four", "")))
    generates = [Generate(f"Once upon a time {i}", stop=("\n",), max_new_tokens=6) for i in range(7)]
    rollings = [Rolling("The quick brown fox jumps over the lazy dog. " * (i + 2), max_length=16) for i in range(5)]
    return choices, generates, rollings


def same_choices(got, want) -> bool:
    """Equal up to float rounding (a replica batches its chunk of 2, the single engine all 10 at
    once: other GEMM shapes), with the same greedy flags and the same best continuation."""
    return all(max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) <= 1e-5 and a.is_greedy == b.is_greedy
               and a.logprobs.index(max(a.logprobs)) == b.logprobs.index(max(b.logprobs)) for a, b in zip(got, want)
               ) and len(got) == len(want)


def test_two_replicas_answer_what_one_engine_answers(pool, single):
    assert pool.fingerprint == single.fingerprint and pool.describe()["replicas"] == 2
    choices, generates, rollings = requests_of_every_kind()
    assert same_choices(pool.choice(choices), single.choice(choices))
    assert pool.generate(generates) == single.generate(generates)
    for a, b in zip(pool.rolling(rollings), single.rolling(rollings), strict=True):
        assert (a.n_tokens, a.text_tokens) == (b.n_tokens, b.text_tokens)
        assert abs(a.loglikelihood - b.loglikelihood) <= 1e-4 * a.n_tokens
    assert pool.tokens_processed > 0


def test_a_killed_replica_is_replaced_and_nothing_is_lost_or_repeated(pool, single):
    choices, _, _ = requests_of_every_kind()
    reported: list[int] = []
    killed = []

    def on_done(i, result):
        reported.append(i)
        if not killed:  # the first answer back: kill the other replica while it holds chunks
            killed.append(pool.actors[1])
            ray.kill(pool.actors[1], no_restart=True)

    restarts = pool.restarts
    got = pool.answer_streaming("choice", choices, on_done)
    assert pool.restarts == restarts + 1 and pool.actors[1] is not killed[0]
    assert sorted(reported) == list(range(len(choices)))  # each answer reported exactly once
    assert same_choices(got, single.choice(choices))


def test_the_cli_with_two_replicas_writes_the_records_of_one_engine(tmp_path):
    runs = {}
    for replicas in (1, 2):
        out = tmp_path / f"r{replicas}"
        done = run_cli("task=gsm8k", "model=tiny", "limit=4", "model.max_new_tokens=8", f"model.replicas={replicas}",
                       "model.replica_chunk=1", "data.source=sample", f"output_dir={out}", "progress=false", cwd=tmp_path,
                       env={"QWEN_EVAL_CACHE": str(tmp_path / f"cache{replicas}")}, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        runs[replicas] = [(s["doc_id"], s["prompt"], s["response"]) for s in read_samples(out)]
        if replicas == 2:
            model = json.loads((out / "results.json").read_text(encoding="utf-8"))["model"]
            assert model["replicas"] == 2 and model["ray"]["restarts"] == 0
    assert runs[1] == runs[2] and len(runs[1]) == 4
