"""model=openai against real HTTP servers on loopback: `qwen-eval-serve` over the tiny model, and
small stdlib servers that fail, stall or omit logprobs on purpose."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

import pytest
from cli_helpers import read_results, read_samples, run_cli
from test_serve import served

from qwen_eval.backends import build
from qwen_eval.backends.openai import OpenAIBackend
from qwen_eval.errors import UserError
from qwen_eval.requests import Choice, Generate, LongContext, Rolling


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with served("--model", "tiny", "--device", "cpu") as url:  # float32, like `local`
        yield url


@pytest.fixture(scope="module")
def remote(server) -> OpenAIBackend:
    return build({"backend": "openai", "base_url": f"{server}/v1", "model": None, "max_length": None,
                  "timeout": 120, "max_retries": 0, "concurrency": 4})


@pytest.fixture(scope="module")
def local():
    return build({"name": "tiny", "backend": "qwen", "preset": "tiny", "device": "cpu"})


def mmlu_requests(n_docs: int = 3) -> list[Choice]:
    from qwen_eval import registry
    from qwen_eval.task import DataSpec

    task = registry.task_class("mmlu")({}, shots=1, protocol="qwen", seed=1234)
    docs = task.load(DataSpec("sample", None), 1)[:n_docs]
    return [r for doc in docs for r in task.requests(doc)]


# ----------------------------------------------------------------------------------------------
# Against qwen-eval-serve

def test_build_asks_the_server_for_its_model_and_context(remote, server):
    assert (remote.model, remote.name, remote.max_length) == ("tiny", "tiny", 2048)
    described = remote.describe()
    assert described["backend"] == "openai" and described["path"] == f"{server}/v1"
    other_model = OpenAIBackend(f"{server}/v1", "tiny-2")
    other_server = OpenAIBackend("http://127.0.0.1:1/v1", "tiny")
    assert len({remote.fingerprint, other_model.fingerprint, other_server.fingerprint}) == 3
    assert OpenAIBackend(f"{server}/v1/", "tiny").fingerprint == remote.fingerprint
    with pytest.raises(UserError, match=r"model.model='gpt-4' is not served by .*; it serves: tiny"):
        build({"backend": "openai", "base_url": f"{server}/v1", "model": "gpt-4"})


def test_choice_equals_the_bundled_engine(remote, local):
    requests = mmlu_requests() + [Choice("The capital of France is", (" Paris", " a large city in Europe", ""))]
    expected, got = local.choice(requests), remote.choice(requests)
    for e, g in zip(expected, got):
        assert g.logprobs == pytest.approx(e.logprobs, abs=1e-4)
        assert g.is_greedy == e.is_greedy
        assert max(range(len(g.logprobs)), key=g.logprobs.__getitem__) == \
            max(range(len(e.logprobs)), key=e.logprobs.__getitem__)
    assert got[-1].logprobs[2] == 0.0  # an empty continuation costs nothing


def test_generate_equals_the_bundled_engine_and_cuts_at_stop_strings(remote, local):
    greedy = Generate("Question: What is the largest planet?\nAnswer:", max_new_tokens=10)
    free = local.generate([greedy])[0].texts[0]
    stop = free[4:7]
    requests = [greedy, Generate(greedy.context, stop=(stop, "\u00a7never"), max_new_tokens=10),
                Generate("Once upon a time", max_new_tokens=5, temperature=0.8, top_k=50, n=2, seed=3)]
    got = remote.generate(requests)
    assert got == local.generate(requests)
    assert got[1].texts == (free[:free.index(stop)],)
    assert len(got[2].texts) == 2


def test_rolling_equals_the_bundled_engine(remote, local):
    text = "The quick brown fox jumps over the lazy dog. " * 4
    requests = [Rolling(text), Rolling(text, first_tokens=20), Rolling("short", first_tokens=1000)]
    for e, g in zip(local.rolling(requests), remote.rolling(requests)):
        assert (g.n_tokens, g.text_tokens) == (e.n_tokens, e.text_tokens)
        assert g.loglikelihood == pytest.approx(e.loglikelihood, abs=1e-3)
    with pytest.raises(UserError, match="needs windows of 10 tokens"):
        remote.rolling([Rolling(text, max_length=10)])
    with pytest.raises(UserError, match="backend openai cannot answer Rolling requests with long-context"):
        remote.rolling([Rolling(text, long_context=LongContext(use_dynamic_ntk=True))])


def test_concurrent_callers_get_the_same_answers(remote):
    requests = [Choice(f"Question {i}: is {i} even?\nAnswer:", (" yes", " no")) for i in range(4)]
    alone = remote.choice(requests)
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda _: remote.choice(requests), range(3)))
    for answers in together:
        for a, b in zip(answers, alone):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


def test_a_400_surfaces_as_one_line(remote):
    with pytest.raises(UserError) as e:
        remote.generate([Generate("hello " * 3000, max_new_tokens=4)])
    message = str(e.value)
    assert "HTTP 400" in message and "maximum context length is 2048" in message and "\n" not in message


@pytest.mark.slow
def test_end_to_end_run_matches_the_bundled_model(server, tmp_path):
    common = ["task=mmlu", "shots=1", "data.source=sample", "limit=1", "progress=false", f"cache_dir={tmp_path / 'cache'}"]
    remote_run = run_cli(*common, "model=openai", f"model.base_url={server}/v1", f"output_dir={tmp_path / 'remote'}",
                         cwd=tmp_path, env={"OPENAI_API_KEY": "sk-test-secret"})
    assert remote_run.returncode == 0, remote_run.stderr
    local_run = run_cli(*common, "model=tiny", "model.device=cpu", f"output_dir={tmp_path / 'local'}", cwd=tmp_path)
    assert local_run.returncode == 0, local_run.stderr

    remote_results, local_results = read_results(tmp_path / "remote"), read_results(tmp_path / "local")
    assert remote_results["model"]["backend"] == "openai" and remote_results["model"]["model"] == "tiny"
    assert "sk-test-secret" not in (tmp_path / "remote" / "results.json").read_text()
    assert remote_results["metrics"] == local_results["metrics"]
    assert [s["prediction"] for s in read_samples(tmp_path / "remote")] == \
        [s["prediction"] for s in read_samples(tmp_path / "local")]
    assert remote_results["requests"]["cached"] == 0

    again = run_cli(*common, "model=openai", f"model.base_url={server}/v1", f"output_dir={tmp_path / 'again'}",
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert read_results(tmp_path / "again")["requests"]["cached"] == remote_results["requests"]["total"]


# ----------------------------------------------------------------------------------------------
# Against servers that misbehave on purpose

@contextmanager
def fake_server(respond: Callable[[BaseHTTPRequestHandler, int], tuple[int, dict, dict]]) -> Iterator[tuple[str, list]]:
    """A loopback server whose answer to the n-th POST is respond(handler, n) -> (status, body, headers)."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            status, body, headers = respond(self, len(seen))
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def completion(text: str, logprobs: dict | None = None) -> dict:
    return {"object": "text_completion", "choices": [{"index": 0, "text": text, "logprobs": logprobs,
                                                      "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def test_retries_503_and_429_with_backoff(tmp_path):
    def flaky(handler, n):
        if n == 1:
            return 503, {"error": {"message": "overloaded"}}, {}
        if n == 2:
            return 429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}
        return 200, completion(" four\nQuestion"), {}

    with fake_server(flaky) as (url, seen):
        backend = OpenAIBackend(url, "m", max_retries=3, retry_backoff=0.01)
        assert backend.generate([Generate("2+2=", stop=("\n",), max_new_tokens=5)])[0].texts == (" four",)
    assert len(seen) == 3
    assert seen[-1] == {"model": "m", "prompt": "2+2=", "max_tokens": 5, "temperature": 0.0, "top_p": 1.0, "n": 1,
                        "seed": 0, "stop": ["\n"]}
    assert backend.tokens_processed == 5

    with fake_server(lambda h, n: (502, {"detail": "bad gateway"}, {})) as (url, seen):
        with pytest.raises(UserError, match=r"failed after 3 tries: HTTP 502: bad gateway"):
            OpenAIBackend(url, "m", max_retries=2, retry_backoff=0.01).generate([Generate("x")])
    assert len(seen) == 3


def test_timeouts_are_retried_then_reported():
    def stall(handler, n):
        time.sleep(1.5)
        return 200, completion("late"), {}

    with fake_server(stall) as (url, seen):
        backend = OpenAIBackend(url, "m", timeout=0.3, max_retries=1, retry_backoff=0.01)
        start = time.monotonic()
        with pytest.raises(UserError, match=r"failed after 2 tries: no answer within 0.3 s \(model.timeout\)"):
            backend.generate([Generate("x")])
        assert time.monotonic() - start < 1.4  # it did not wait for the stalled answers
    assert len(seen) == 2


def test_connection_refused_is_a_clear_error():
    with fake_server(lambda h, n: (200, completion(""), {})) as (url, _):
        pass  # the port is closed again
    with pytest.raises(UserError, match=r"failed after 2 tries: cannot connect .*is the server up\?"):
        OpenAIBackend(url, "m", max_retries=1, retry_backoff=0.01).generate([Generate("x")])


def test_servers_without_prompt_logprobs_are_refused_for_choice():
    generated_only = {"tokens": [" B"], "token_logprobs": [-0.5], "top_logprobs": [{" B": -0.5}], "text_offset": [8]}
    for logprobs in (None, generated_only):
        with fake_server(lambda h, n, lp=logprobs: (200, completion("Answer: B", lp), {})) as (url, seen):
            with pytest.raises(UserError, match=r"does not return prompt logprobs \(echo=true\); Choice .* vLLM"):
                OpenAIBackend(url, "m").choice([Choice("Answer:", (" A", " B"))])
        # first the next token's top log-probabilities, then echo requests for the letters not
        # among them (" A" at least; both when the reply had no logprobs), sent concurrently
        assert "echo" not in seen[0] and seen[0]["logprobs"] == 20 and seen[0]["prompt"] == "Answer:"
        echoed = seen[1:]
        assert echoed and all(s["echo"] is True and s["logprobs"] == 1 and s["max_tokens"] == 1 for s in echoed)
        assert "Answer: A" in {s["prompt"] for s in echoed} <= {"Answer: A", "Answer: B"}


def test_first_token_scores_are_the_same_read_from_top_logprobs_or_echoed(server, local):
    """Answer letters read from the next token's top log-probabilities, where they are there, and
    echo requests for the others, give the bundled engine's scores; top_logprobs=0 echoes every
    letter. (The random tiny model rarely ranks a letter in its top 20; tests/test_vllm_server.py
    checks one request per question on the real model.)"""
    requests = mmlu_requests(4) + [Choice("Answer:", (" the", " a"))]
    expected = local.choice(requests)
    counts = {}
    for top in (20, 0):
        backend = build({"backend": "openai", "base_url": f"{server}/v1", "model": "tiny", "max_length": 2048,
                         "top_logprobs": top, "max_retries": 0})
        got = backend.choice(requests)
        counts[top] = backend.echo_requests
        for e, g in zip(expected, got):
            assert g.logprobs == pytest.approx(e.logprobs, abs=1e-4) and g.is_greedy == e.is_greedy
    assert counts[0] == sum(len(r.continuations) for r in requests) and counts[20] <= counts[0]


def test_api_key_goes_in_the_header_and_never_in_the_config(monkeypatch):
    keys = []

    def record(handler, n):
        keys.append(handler.headers.get("Authorization"))
        return 200, completion("ok"), {}

    monkeypatch.setenv("MY_SERVER_KEY", "sk-abc")
    with fake_server(record) as (url, _):
        backend = build({"backend": "openai", "base_url": url, "model": "m", "max_length": 4096,
                         "api_key_env": "MY_SERVER_KEY"})
        backend.generate([Generate("x")])
    assert keys == ["Bearer sk-abc"]
    assert "sk-abc" not in json.dumps(backend.describe())
    with pytest.raises(UserError, match="do not put the key in the config"):
        build({"backend": "openai", "base_url": url, "model": "m", "api_key": "sk-abc"})
    with pytest.raises(UserError, match=r"needs model.base_url=http://HOST:PORT/v1"):
        build({"backend": "openai", "base_url": "localhost:8000", "model": "m"})
