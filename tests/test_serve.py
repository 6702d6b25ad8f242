"""`qwen-eval-serve`: the OpenAI-compatible completions server over the bundled engine, over real HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import pytest

from qwen_eval.serve import text_offsets

pytestmark = pytest.mark.slow  # subprocesses: the command, servers, ranks or sandboxed programs

STARTUP_SECONDS = 180


@contextlib.contextmanager
def served(*args: str) -> Iterator[str]:
    """Start `qwen-eval-serve ARGS --port 0`, yield its base URL (http://127.0.0.1:PORT), stop it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "qwen_eval.serve", *args, "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    found: list[str] = []
    ready = threading.Event()

    def read() -> None:  # keep draining stdout so the server never blocks on a full pipe
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("listening on http://") and not found:
                found.append(line.split("listening on ", 1)[1].strip())
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        ready.wait(STARTUP_SECONDS)
        assert found, f"qwen-eval-serve did not start (exit {proc.poll()}):\n{''.join(lines)}"
        yield found[0]
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http(url: str, payload: Any = None, method: str | None = None) -> tuple[int, dict]:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with served("--model", "tiny", "--device", "cpu", "--max-batch", "8") as url:
        yield url


@pytest.fixture(scope="module")
def engine():
    from qwen_eval.backends.qwen import QwenBackend

    return QwenBackend.from_config({"name": "tiny", "backend": "qwen", "preset": "tiny", "device": "cpu"}).engine


def complete(server: str, **payload: Any) -> dict:
    status, reply = http(f"{server}/v1/completions", payload)
    assert status == 200, reply
    return reply


# ----------------------------------------------------------------------------------------------

def test_health_and_models(server):
    status, health = http(f"{server}/health")
    assert status == 200 and health["status"] == "ok"
    status, models = http(f"{server}/v1/models")
    assert status == 200
    assert [(m["id"], m["max_model_len"]) for m in models["data"]] == [("tiny", 2048)]


def test_echo_logprobs_follow_the_openai_legacy_format_and_the_engine(server, engine):
    prompt = "The capital of France is Paris, and the capital of Japan is"
    reply = complete(server, model="tiny", prompt=prompt, max_tokens=0, echo=True, logprobs=2, temperature=0)
    choice = reply["choices"][0]
    lp = choice["logprobs"]
    ids = engine.tokenizer.encode(prompt)
    assert choice["text"] == prompt
    assert reply["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0, "total_tokens": len(ids)}
    assert lp["tokens"] == [engine.tokenizer.decode([t]) for t in ids]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    # ASCII text: each token's offset is where its text starts
    assert [prompt[o:o + len(t)] for o, t in zip(lp["text_offset"], lp["tokens"])] == lp["tokens"]

    from qwen_eval.model.token_plans import ScoringRow

    reference, greedy = engine.score_rows([ScoringRow(ids, list(range(len(ids) - 1)), ids[1:])])[0]
    assert lp["token_logprobs"][1:] == pytest.approx(reference, abs=1e-4)
    for token, logprob, top, is_greedy in zip(lp["tokens"][1:], lp["token_logprobs"][1:], lp["top_logprobs"][1:],
                                              greedy):
        assert top[token] == logprob  # the actual token is always listed
        assert 2 <= len(top) <= 3
        assert (logprob >= max(top.values())) == is_greedy


def test_generation_equals_the_engine_and_reports_its_tokens(server, engine):
    from qwen_eval.requests import Generate

    prompt = "Question: What is two plus two?\nAnswer:"
    expected = engine.generate([Generate(prompt, max_new_tokens=8)])[0].texts[0]
    reply = complete(server, prompt=prompt, max_tokens=8, temperature=0, logprobs=1)
    choice = reply["choices"][0]
    assert choice["text"] == expected
    assert choice["finish_reason"] == "length"
    assert "".join(choice["logprobs"]["tokens"]) == expected
    assert choice["logprobs"]["text_offset"][0] == len(prompt)  # completion offsets count from the prompt
    assert all(lp is not None for lp in choice["logprobs"]["token_logprobs"])
    # greedy: each generated token is the most likely one (over the decodable vocabulary)
    for token, logprob, top in zip(choice["logprobs"]["tokens"], choice["logprobs"]["token_logprobs"],
                                   choice["logprobs"]["top_logprobs"]):
        assert logprob == max(top.values())

    stop = expected[3:6]
    cut = complete(server, prompt=prompt, max_tokens=8, temperature=0, stop=stop)["choices"][0]
    assert cut["text"] == expected[:expected.index(stop)]
    assert cut["finish_reason"] == "stop"

    echoed = complete(server, prompt=prompt, max_tokens=8, temperature=0, echo=True)["choices"][0]
    assert echoed["text"] == prompt + expected and echoed["logprobs"] is None


def test_seeded_sampling_is_reproducible_and_matches_the_engine(server, engine):
    from qwen_eval.requests import Generate

    prompt = "Once upon a time"
    expected = engine.generate([Generate(prompt, max_new_tokens=6, temperature=0.9, top_p=0.95, n=3, seed=7)])[0]
    body = dict(prompt=[prompt, "Another prompt"], max_tokens=6, temperature=0.9, top_p=0.95, n=3, seed=7)
    reply = complete(server, **body)
    assert [c["index"] for c in reply["choices"]] == list(range(6))  # prompt-major, n per prompt
    assert tuple(c["text"] for c in reply["choices"][:3]) == expected.texts
    assert complete(server, **body)["choices"] == reply["choices"]


def test_concurrent_clients_are_batched_and_answered_alike(server):
    prompts = [f"Item {i}: the quick brown fox" for i in range(12)]
    one_by_one = [complete(server, prompt=p, max_tokens=3, temperature=0, echo=True, logprobs=1)["choices"][0]
                  for p in prompts[:4]]
    before = http(f"{server}/health")[1]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda p: complete(server, prompt=p, max_tokens=3, temperature=0, echo=True,
                                                    logprobs=1)["choices"][0], prompts))
    after = http(f"{server}/health")[1]
    assert after["requests"] - before["requests"] == 12
    assert after["batches"] - before["batches"] < 12  # requests that waited were answered together
    for alone, batched in zip(one_by_one, together):
        assert batched["text"] == alone["text"]
        assert batched["logprobs"]["tokens"] == alone["logprobs"]["tokens"]
        assert batched["logprobs"]["token_logprobs"][1:] == pytest.approx(alone["logprobs"]["token_logprobs"][1:],
                                                                          abs=1e-4)
    assert [c["text"].split(":")[0] for c in together] == [f"Item {i}" for i in range(12)]


@pytest.mark.parametrize("payload, param, words", [
    ({"prompt": [1, 2, 3]}, "prompt", "token-id prompts are not supported"),
    ({"prompt": ""}, "prompt", "must not be empty"),
    ({"prompt": "x", "stream": True}, "stream", "stream=true is not supported"),
    ({"prompt": "x", "logprobs": 50}, "logprobs", "from 0 to 20"),
    ({"prompt": "x", "temperature": "hot"}, "temperature", "must be a number"),
    ({"prompt": "x", "stop": [1]}, "stop", "list of strings"),
    ({"prompt": "x", "max_tokens": 4000}, "prompt", "maximum context length is 2048"),
    ({"prompt": "word " * 3000, "max_tokens": 0}, "prompt", "maximum context length is 2048"),
])
def test_bad_requests_get_400_with_an_openai_error(server, payload, param, words):
    status, reply = http(f"{server}/v1/completions", payload)
    assert status == 400
    assert reply["error"]["param"] == param and words in reply["error"]["message"]
    assert reply["error"]["type"] == "invalid_request_error"


def test_unknown_model_route_and_body(server):
    status, reply = http(f"{server}/v1/completions", {"model": "gpt-4", "prompt": "x"})
    assert status == 404 and "`gpt-4` does not exist" in reply["error"]["message"]
    status, reply = http(f"{server}/v1/chat/completions", {"prompt": "x"})
    assert status == 404 and "POST /v1/completions" in reply["error"]["message"]
    assert http(f"{server}/nowhere")[0] == 404
    req = urllib.request.Request(f"{server}/v1/completions", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == 400 and "not JSON" in json.loads(e.value.read())["error"]["message"]


def test_text_offsets_give_a_split_character_to_the_token_that_completes_it():
    # "é" is two bytes; split over two tokens, it belongs to the second
    pieces = [b"a", b"\xc3", b"\xa9b", b" c"]
    assert text_offsets(pieces) == [0, 1, 1, 3]


def test_a_bad_command_line_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "qwen_eval.serve", "--model", "nonexistent", "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "no such model config" in proc.stderr and "tiny" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "qwen_eval.serve", "--model", "replay", "--port", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "backend: qwen" in proc.stderr
