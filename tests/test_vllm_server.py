"""model=openai against a real vLLM server (`python -m vllm.entrypoints.openai.api_server`) serving
the real Qwen2.5-Coder-0.5B-Instruct, answers compared with the bundled engine on the same GGUF.

Needs vLLM (docs/vllm.md) and the real model; the server is started once for the module (about a
minute and a half on two cores) on the folder model/hf_export.py writes from the GGUF.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from qwen_eval.requests import Choice, Generate, Rolling
from test_vllm import gguf_path  # noqa: F401  (the module-scoped fixture: vLLM present, the real model fetched)

pytestmark = [pytest.mark.real_model, pytest.mark.slow, pytest.mark.vllm]
STARTUP_SECONDS = 600
SERVED_NAME = "qwen2.5-coder-0.5b-instruct"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(gguf_path, tmp_path_factory):
    from qwen_eval.backends.vllm import cpu_environment
    from qwen_eval.model.hf_export import hf_folder_for

    folder = hf_folder_for(gguf_path, torch.float32)
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = {**os.environ, **cpu_environment({"kv_cache_gib": 2})}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
                                 "--served-model-name", SERVED_NAME, "--dtype", "float32", "--max-model-len", "4096",
                                 "--host", "127.0.0.1", "--port", str(port), "--max-logprobs", "20"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=5) as reply:
                    json.loads(reply.read())
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the vLLM server did not start (exit {proc.poll()}):\n"
                                         f"{log.read_text()[-3000:]}") from None
                time.sleep(2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def ours(gguf_path):
    from qwen_eval.backends import build

    return build({"backend": "qwen", "name": "qwen", "path": str(gguf_path), "dtype": "float32", "device": "cpu",
                  "max_length": 4096})


def client(url: str, **options):
    from qwen_eval.backends import build

    return build({"backend": "openai", "base_url": url, "model": None, "max_length": None, "timeout": 300,
                  "max_retries": 0, "concurrency": 4, **options})


@pytest.mark.shared_data
def test_mmlu_letters_take_one_request_per_question_with_the_bundled_engines_scores(server, ours, shared_data):
    from qwen_eval.task import DataSpec
    from qwen_eval.tasks.mmlu import MMLU

    backend = client(server)
    assert (backend.model, backend.max_length) == (SERVED_NAME, 4096)  # from GET /models
    task = MMLU(shots=5)
    docs = task.load(DataSpec("local", str(shared_data / "mmlu")), 1)[:8]
    requests = [r for d in docs for r in task.requests(d)]
    got, want = backend.choice(requests), ours.choice(requests)
    assert backend.echo_requests == 0  # every letter was among the next token's top 20
    for a, b in zip(got, want):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) <= 1e-3
        assert a.is_greedy == b.is_greedy
        assert a.logprobs.index(max(a.logprobs)) == b.logprobs.index(max(b.logprobs))


def test_echo_scoring_and_rolling_equal_the_bundled_engine(server, ours):
    backend = client(server)
    choices = [Choice("def add(a, b):\n    return", (" a + b", " a - b", ""))]
    for a, b in zip(backend.choice(choices), ours.choice(choices)):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) <= 1e-3 and a.is_greedy == b.is_greedy
    assert backend.echo_requests == 2  # the two multi-token continuations
    text = "import numpy as np\n\n" + "".join(f"def f{i}(x):\n    return np.sum(x) * {i}\n\n" for i in range(30))
    [a], [b] = backend.rolling([Rolling(text)]), ours.rolling([Rolling(text)])
    assert (a.n_tokens, a.text_tokens) == (b.n_tokens, b.text_tokens) and a.n_tokens > 300
    assert abs(a.loglikelihood - b.loglikelihood) / a.n_tokens <= 1e-3


def test_completions_and_chat_completions_generate_the_bundled_engines_texts(server, ours):
    """Greedy texts through /completions equal the bundled engine's; a chat request sent as
    messages to /chat/completions (the server's template: the checkpoint's, exported with it)
    equals the bundled engine's answer to the same turns rendered by the harness."""
    from qwen_eval.chat import ChatBackend, ChatOptions, resolve_template

    plain = [Generate("def is_prime(n):", stop=("\n\n",), max_new_tokens=64),
             Generate("Question: What is 12 * 7?\nAnswer:", stop=("\n",), max_new_tokens=20)]
    assert [r.texts for r in client(server).generate(plain)] == [r.texts for r in ours.generate(plain)]

    chat = [Generate("", messages=(("user", "Write a Python one-liner that reverses a string s."),),
                     max_new_tokens=48)]
    options = ChatOptions()
    served_chat = ChatBackend(client(server, chat_completions=True), None, options)
    local_chat = ChatBackend(ours, resolve_template(options, ours), options)
    got, want = served_chat.generate(chat), local_chat.generate(chat)
    assert got[0].texts == want[0].texts and got[0].texts[0].strip()
