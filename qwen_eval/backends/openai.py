"""An OpenAI-compatible completions server as a backend: vLLM, SGLang, qwen-eval-serve.

    qwen-eval task=mmlu model=openai model.base_url=http://127.0.0.1:8000/v1 model.model=Qwen/Qwen-14B

The path for models that need tensor parallelism: the server shards the model, we send requests.

  Generate  POST /completions with the request's stop strings, max_tokens, temperature, top_p,
            top_k (only when set: a vLLM extension), n and seed; each text is cut at the stop
            strings again here, since servers differ in where they stop.
  Choice    Answer letters first (Qwen's first-token protocol): one POST /completions per question
            with prompt = context, max_tokens=1, temperature 0 and logprobs=`top_logprobs`; a
            continuation that is one of the next token's top log-probabilities is scored from
            them (greedy when it is the generated token). That is the bundled engine's
            single-token score, in one request instead of one echo request per letter. Any
            continuation not found there (longer than one token, or outside the top k) is asked:
            POST /completions with prompt = context + continuation, echo=true, logprobs=1 and
            max_tokens=1 (vLLM rejects 0; the one generated token is ignored). The server
            tokenizes; the continuation's log-probability is the sum over the prompt tokens that
            cover its characters (by `text_offset`), and it is greedy when each of those tokens is
            the most likely one in its `top_logprobs`. A token that straddles the context/
            continuation boundary counts for the continuation.
  Rolling   the same echo request over the whole text; token 0 has no context and is not scored,
            like the bundled engine. A text must fit the server's context in one window: the
            server tokenizes, so windows (and the bundled model's long-context switches) cannot be
            sent, and such requests stop with a clear error.

  Chat      with `chat_completions=true` a chat request (a task's turns, or chat.enabled) is sent
            to POST /chat/completions as messages, and the server applies its own template; a
            task's reply prefix goes as a final assistant message continued by the server
            (vLLM's continue_final_message). Off by default: the harness renders the template and
            sends /completions, so the server sees the bundled engine's bytes.

One prompt per HTTP request, `concurrency` requests in flight (the server batches them). Connection
errors, timeouts, HTTP 429 and 5xx are retried with exponential backoff (Retry-After honoured);
other 4xx stop the run with the server's message on one line. The API key is read from the
environment variable named by `api_key_env`, never from the config, which results.json records.
Choice results match the bundled engine only as far as the server's tokenizer splits context +
continuation the way the engine splits them separately (true for " A"-style answer letters).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping, Sequence

from qwen_eval.backends.base import Backend, unsupported
from qwen_eval.errors import UserError
from qwen_eval.provenance import base_model_name
from qwen_eval.requests import (DEFAULT_MAX_LENGTH, Choice, ChoiceResult, Generate, GenerateResult, Rolling,
                                RollingResult, cut_at_stop)

NO_ECHO_HINT = ("this server does not return prompt logprobs (echo=true); Choice and Rolling requests need them "
                "— vLLM, SGLang and qwen-eval-serve do; use one of them, or a local backend (model=hf, model=qwen)")


class RetryableError(Exception):
    """A failure worth another try: connection refused or reset, timeout, HTTP 429 or 5xx."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class OpenAIBackend(Backend):
    def __init__(self, base_url: str, model: str, *, name: str | None = None, api_key: str | None = None,
                 timeout: float = 600.0, max_retries: int = 5, retry_backoff: float = 1.0, concurrency: int = 8,
                 max_length: int | None = None, top_logprobs: int = 20, chat_completions: bool = False):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._name = name
        self.api_key = api_key
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.retry_backoff = float(retry_backoff)
        self.concurrency = int(concurrency)
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout <= 0:
            raise UserError(f"model=openai: concurrency ({concurrency}) must be >= 1, max_retries ({max_retries}) "
                            f">= 0 and timeout ({timeout}) > 0")
        self.max_length = int(max_length or DEFAULT_MAX_LENGTH)
        self.top_logprobs = int(top_logprobs)
        self.renders_chat = bool(chat_completions)
        self.tokens_processed = 0
        self.echo_requests = 0  # Choice continuations that needed an echo request of their own
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="openai")

    @property
    def name(self) -> str:
        return self._name or self.model

    @property
    def fingerprint(self) -> str:
        """The server and the model it serves: another server or model never reuses cached answers."""
        identity = json.dumps({"base_url": self.base_url, "model": self.model,
                               **({"chat_completions": True} if self.renders_chat else {})}, sort_keys=True)
        return "openai-" + hashlib.sha256(identity.encode()).hexdigest()[:16]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "OpenAIBackend":
        """Asks the server's GET /models for the model name (when model.model is null) and its
        context length (when model.max_length is null), which also checks that it is reachable."""
        if cfg.get("api_key"):
            raise UserError("model.api_key: do not put the key in the config (results.json records the config); "
                            "export it in an environment variable and name it with model.api_key_env")
        base_url = cfg.get("base_url")
        if not base_url or not str(base_url).startswith(("http://", "https://")):
            raise UserError(f"model=openai needs model.base_url=http://HOST:PORT/v1 (got {base_url!r})")

        def option(key: str, default: Any, kind: type) -> Any:
            value = cfg.get(key)
            try:
                return default if value is None else kind(value)
            except (TypeError, ValueError):
                raise UserError(f"model.{key}={value!r} is not a {kind.__name__}") from None

        backend = cls(str(base_url), str(cfg.get("model") or ""), name=cfg.get("name"),
                      api_key=os.environ.get(cfg.get("api_key_env") or "OPENAI_API_KEY"),
                      timeout=option("timeout", 600.0, float), max_retries=option("max_retries", 5, int),
                      retry_backoff=option("retry_backoff", 1.0, float), concurrency=option("concurrency", 8, int),
                      max_length=option("max_length", None, int), top_logprobs=option("top_logprobs", 20, int),
                      chat_completions=bool(cfg.get("chat_completions", False)))
        if backend.model and cfg.get("max_length"):
            return backend
        served = backend.list_models()
        if not served:
            raise UserError(f"{backend.base_url}/models lists no models; set model.model=NAME")
        backend.model = backend.model or str(served[0]["id"])
        entry = next((m for m in served if m["id"] == backend.model), None)
        if entry is None:
            raise UserError(f"model.model={backend.model!r} is not served by {backend.base_url}; it serves: "
                            f"{', '.join(str(m['id']) for m in served)}")
        if not cfg.get("max_length") and entry.get("max_model_len"):
            backend.max_length = int(entry["max_model_len"])
        return backend

    def describe(self) -> dict[str, Any]:
        # the server's own name for the model is all a client can know of the weights behind it
        checkpoint = {"name": base_model_name(str(self.model or self.name)), "source_name": self.model,
                      "format": f"served at {self.base_url}", "quantization": None, "files": [], "sha256": None}
        return {"name": self.name, "backend": "openai", "path": self.base_url, "model": self.model, "dtype": None,
                "fingerprint": self.fingerprint, "max_length": self.max_length, "top_logprobs": self.top_logprobs,
                "chat_completions": self.renders_chat, "checkpoint": checkpoint}

    # ------------------------------------------------------------------------------------------
    # HTTP

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _once(self, method: str, path: str, payload: dict | None) -> dict:
        url = f"{self.base_url}{path}"
        data = json.dumps(payload).encode("utf-8") if payload is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers=self._headers())
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            message = _error_message(e.read())
            if e.code == 429 or e.code >= 500:
                retry_after = e.headers.get("Retry-After") if e.headers else None
                raise RetryableError(f"HTTP {e.code}: {message}",
                                     float(retry_after) if retry_after and retry_after.isdigit() else None) from None
            raise UserError(f"model=openai: {method} {url} answered HTTP {e.code}: {message}") from None
        except (socket.timeout, TimeoutError):
            raise RetryableError(f"no answer within {self.timeout:g} s (model.timeout)") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise RetryableError(f"no answer within {self.timeout:g} s (model.timeout)") from None
            raise RetryableError(f"cannot connect ({reason})") from None
        except (OSError, http.client.HTTPException) as e:  # reset or closed mid-response
            raise RetryableError(f"connection failed ({e})") from None
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"model=openai: {method} {url} answered something that is not JSON: "
                            f"{body[:200]!r}") from None

    def _call(self, method: str, path: str, payload: dict | None = None) -> dict:
        """One request with retries; a UserError once they are used up."""
        for attempt in range(self.max_retries + 1):
            try:
                return self._once(method, path, payload)
            except RetryableError as e:
                if attempt == self.max_retries:
                    raise UserError(f"model=openai: {method} {self.base_url}{path} failed after "
                                    f"{attempt + 1} tries: {e}; is the server up? (model.base_url, "
                                    f"model.timeout, model.max_retries)") from None
                delay = e.retry_after if e.retry_after is not None else self.retry_backoff * 2 ** attempt
                time.sleep(min(delay, 60.0))
        raise AssertionError("unreachable")

    def list_models(self) -> list[dict]:
        reply = self._call("GET", "/models")
        data = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(data, list):
            raise UserError(f"model=openai: GET {self.base_url}/models did not answer an OpenAI model list")
        return [m for m in data if isinstance(m, dict) and "id" in m]

    def complete(self, payload: dict, endpoint: str = "/completions") -> dict:
        """POST /completions (or /chat/completions) for one prompt; the reply's choices, checked,
        in index order."""
        reply = self._call("POST", endpoint, {"model": self.model, **payload})
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
            raise UserError(f"model=openai: {self.base_url}{endpoint} answered without choices: "
                            f"{json.dumps(reply)[:200]}")
        usage = reply.get("usage") or {}
        self.tokens_processed += int(usage.get("total_tokens") or 0)
        reply["choices"] = sorted(choices, key=lambda c: c.get("index", 0))
        return reply

    def _map(self, fn: Callable, items: Sequence) -> list:
        return list(self._pool.map(fn, items))

    # ------------------------------------------------------------------------------------------
    # Requests

    def generate(self, requests: Sequence[Generate]) -> list[GenerateResult]:
        return self._map(self._generate_one, requests)

    def _generate_one(self, r: Generate) -> GenerateResult:
        if r.max_length is not None:
            raise UserError(f"model=openai cannot cap context + generated tokens at {r.max_length} (the request's "
                            f"max_length): it does not count the server's tokens; serve the model with that context "
                            f"length (vLLM: --max-model-len {r.max_length}) and set task.max_length=null")
        payload: dict[str, Any] = {"max_tokens": r.max_new_tokens, "temperature": r.temperature,
                                   "top_p": r.top_p, "n": r.n, "seed": r.seed}
        if r.stop:
            payload["stop"] = list(r.stop)
        if r.top_k:
            payload["top_k"] = r.top_k
        if r.messages:
            if not self.renders_chat:
                raise UserError("model=openai: a chat request reached the completions API unrendered; "
                                "set model.chat_completions=true, or let the harness render it (the default)")
            messages = [{"role": role, "content": content} for role, content in r.messages]
            if r.prefill:  # the reply's first words, continued by the server (vLLM's extension)
                messages.append({"role": "assistant", "content": r.prefill})
                payload.update(add_generation_prompt=False, continue_final_message=True)
            choices = self.complete({"messages": messages, **payload}, "/chat/completions")["choices"]
            texts = [str((c.get("message") or {}).get("content") or "") for c in choices]
        else:
            choices = self.complete({"prompt": r.context, **payload})["choices"]
            texts = [str(c.get("text") or "") for c in choices]
        if len(texts) != r.n:
            raise UserError(f"model=openai: asked {self.base_url} for n={r.n} completions, got {len(texts)}")
        return GenerateResult(tuple(cut_at_stop(text, r.stop) for text in texts))

    def _prompt_logprobs(self, prompt: str) -> tuple[list[float | None], list[bool], list[int]]:
        """Per prompt token: its log-probability (None for the first), whether it is the most
        likely token there, and its character offset in `prompt`."""
        choice = self.complete({"prompt": prompt, "max_tokens": 1, "temperature": 0.0, "echo": True,
                                "logprobs": 1})["choices"][0]
        lp = choice.get("logprobs")
        if not isinstance(lp, dict) or not lp.get("token_logprobs") or not lp.get("text_offset"):
            raise UserError(NO_ECHO_HINT)
        offsets, logprobs = lp["text_offset"], lp["token_logprobs"]
        tops = lp.get("top_logprobs") or [None] * len(logprobs)
        n = sum(1 for o in offsets if o < len(prompt))  # the generated token starts at len(prompt)
        if n == 0 or len(logprobs) < n or len(tops) < n or logprobs[0] is not None:
            raise UserError(NO_ECHO_HINT)  # an echoed prompt's first token has a null log-probability
        greedy = [top is not None and lp_ is not None and lp_ >= max(top.values())
                  for lp_, top in zip(logprobs[:n], tops[:n])]
        return logprobs[:n], greedy, offsets[:n]

    def choice(self, requests: Sequence[Choice]) -> list[ChoiceResult]:
        if any(r.messages for r in requests):
            raise unsupported("openai", "chat Choice requests with model.chat_completions=true",
                              "a chat API cannot score continuations; set model.chat_completions=false")
        first = self._map(self._next_token_scores, requests)  # per request: continuation -> (lp, greedy)
        jobs = [(r, c) for r, known in zip(requests, first) for c in r.continuations if c not in known]
        self.echo_requests += sum(1 for _, c in jobs if c)  # an empty continuation costs no request
        asked = iter(self._map(lambda job: self._continuation_score(*job), jobs))  # in the order of `jobs`
        results = []
        for r, known in zip(requests, first):
            pairs = [known[c] if c in known else next(asked) for c in r.continuations]
            results.append(ChoiceResult(tuple(lp for lp, _ in pairs), tuple(g for _, g in pairs)))
        return results

    def _next_token_scores(self, request: Choice) -> dict[str, tuple[float, bool]]:
        """The continuations found among the next token's top log-probabilities, each with its
        log-probability and whether it is the greedy token; {} when none can be read that way."""
        if self.top_logprobs <= 0 or not request.context or not all(request.continuations):
            return {}
        choice = self.complete({"prompt": request.context, "max_tokens": 1, "temperature": 0.0,
                                "logprobs": self.top_logprobs})["choices"][0]
        lp = choice.get("logprobs")
        tops = lp.get("top_logprobs") if isinstance(lp, dict) else None
        if not tops or not isinstance(tops[0], dict):
            return {}
        top, greedy = tops[0], (lp.get("tokens") or [None])[0]
        return {c: (float(top[c]), c == greedy) for c in request.continuations if c in top}

    def _continuation_score(self, request: Choice, continuation: str) -> tuple[float, bool]:
        if not continuation:
            return 0.0, True
        prompt = request.context + continuation
        logprobs, greedy, offsets = self._prompt_logprobs(prompt)
        start, end = len(request.context), len(prompt)
        ends = offsets[1:] + [end]
        covering = [i for i in range(len(offsets)) if offsets[i] < end and (offsets[i] >= start or ends[i] > start)]
        if not covering or covering[0] == 0 or any(logprobs[i] is None for i in covering):
            raise UserError(f"model=openai: cannot score continuation {continuation!r}: it covers the prompt's first "
                            f"token, which has no log-probability (the context is empty)")
        return float(sum(logprobs[i] for i in covering)), all(greedy[i] for i in covering)

    def rolling(self, requests: Sequence[Rolling]) -> list[RollingResult]:
        for r in requests:
            if r.long_context is not None:
                raise unsupported("openai", "Rolling requests with long-context switches (dynamic NTK, LogN, "
                                  "window attention)", "the server's own configuration decides those; use model=qwen")
        return self._map(self._rolling_one, requests)

    def _rolling_one(self, r: Rolling) -> RollingResult:
        logprobs, _, _ = self._prompt_logprobs(r.text)
        total = len(logprobs)
        n = total
        if r.first_tokens is not None:
            if total < r.first_tokens:
                return RollingResult(0.0, 0, total)
            n = r.first_tokens
        window = r.max_length or self.max_length
        if n > window:
            raise UserError(f"model=openai: a Rolling text of {n} tokens needs windows of {window} tokens, which "
                            f"cannot be sent to a server that tokenizes itself; use a local backend (model=qwen, "
                            f"model=hf) or max_length >= the text")
        return RollingResult(float(sum(lp for lp in logprobs[1:n])), max(n - 1, 0), total)


def _error_message(body: bytes) -> str:
    """The server's error message on one line: OpenAI's {"error": {"message"}}, FastAPI's
    {"detail"}, or the body's first line."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            text = error if isinstance(error, str) else json.dumps(error)
    return " ".join(text.split())[:500] or "(empty body)"
