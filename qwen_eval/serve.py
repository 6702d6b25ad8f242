"""`qwen-eval-serve`: a small OpenAI-compatible completions server over the bundled engine.

    qwen-eval-serve --model tiny --port 8000
    qwen-eval-serve --model qwen-14b --model-path /ckpt/Qwen-14B --max-batch 32
    qwen-eval task=mmlu model=openai model.base_url=http://127.0.0.1:8000/v1

Routes:
  POST /v1/completions   the legacy completions API: model, prompt (a string or a list of strings),
                         max_tokens (default 16), temperature (default 1), top_p, top_k, n, stop,
                         seed, logprobs (k top alternatives per token, at most 20), echo
  GET  /v1/models        the one served model, with its context length (max_model_len)
  GET  /health           {"status": "ok", "requests": answered so far, "batches": engine calls}

The engine is not thread-safe, so HTTP threads only parse, validate and tokenize; one worker
thread takes whatever requests are waiting (up to --max-batch prompts), answers them through the
engine in one go, and hands each reply back to its thread. Generation is the engine's own
(`Engine.generate`), so a greedy or seeded completion equals what `model=<same model>` produces.

`logprobs` are computed by the engine's scoring path over prompt + completion tokens (the completion
re-tokenized from its text, like any client would; `Engine.next_token_scores`): each position's
log-probability (as `Engine.score_rows` scores it) and its top-k alternatives over the tokenizer's
vocabulary. With `echo` the prompt's tokens are reported too, the first one with a null
log-probability, as OpenAI and vLLM do; `text_offset` counts characters of the returned text and a
token's offset is where its first whole character begins (a character split over two tokens
belongs to the one that completes it, as in vLLM).

Bad requests get HTTP 400 with an OpenAI-style {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import argparse
import codecs
import json
import queue
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Sequence

from qwen_eval.errors import UserError
from qwen_eval.requests import Generate

MAX_LOGPROBS = 20  # alternatives per position, vLLM's default cap
MAX_N = 128


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param = param
        self.status = status


# ----------------------------------------------------------------------------------------------
# Requests

@dataclass
class Completion:
    """One validated POST /v1/completions body."""

    prompts: list[str]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int = 0
    logprobs: int | None = None
    echo: bool = False


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise BadRequest(f"{name} must be a number from {low:g} to {high:g}, not {value!r}", name)
    return float(value)


def _integer(body: dict, name: str, default: int | None, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f">= {low}"
        raise BadRequest(f"{name} must be a whole number {bounds}, not {value!r}", name)
    return value


def parse_completion(body: Any, served_model: str) -> Completion:
    """A Completion from a request body, or BadRequest naming the offending field."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if body.get("model") not in (None, served_model):
        raise BadRequest(f"The model `{body['model']}` does not exist; this server serves `{served_model}`",
                         "model", status=404)
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("prompt must be a string or a non-empty list of strings (token-id prompts are not "
                         "supported)", "prompt")
    if any(not p for p in prompts):
        raise BadRequest("prompt must not be empty", "prompt")
    if body.get("stream"):
        raise BadRequest("stream=true is not supported; send stream=false", "stream")
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise BadRequest(f"{name} is not supported (only 0)", name)
    if body.get("logit_bias"):
        raise BadRequest("logit_bias is not supported", "logit_bias")
    if body.get("suffix"):
        raise BadRequest("suffix is not supported", "suffix")
    n = _integer(body, "n", 1, 1, MAX_N)
    if body.get("best_of") not in (None, n):
        raise BadRequest("best_of is not supported (only best_of = n)", "best_of")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("stop must be a string or a list of strings", "stop")
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise BadRequest(f"echo must be true or false, not {echo!r}", "echo")
    top_k = _integer(body, "top_k", 0, -1)  # vLLM's extension; -1 and 0 both mean off
    return Completion(prompts=prompts, max_tokens=_integer(body, "max_tokens", 16, 0),
                      temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
                      top_p=_number(body, "top_p", 1.0, 1e-9, 1.0), top_k=max(top_k, 0), n=n,
                      stop=tuple(s for s in stop if s), seed=_integer(body, "seed", 0, -(1 << 63), (1 << 63) - 1),
                      logprobs=_integer(body, "logprobs", None, 0, MAX_LOGPROBS), echo=echo)


def text_offsets(token_bytes: Sequence[bytes]) -> list[int]:
    """Character offset of each token in the decoded text: the characters completed before it."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    offsets, chars = [], 0
    for piece in token_bytes:
        offsets.append(chars)
        chars += len(decoder.decode(piece))
    return offsets


# ----------------------------------------------------------------------------------------------
# The worker: one thread owns the engine

@dataclass
class Job:
    request: Completion
    prompt_ids: list[list[int]]
    done: threading.Event = field(default_factory=threading.Event)
    reply: dict | None = None
    error: BaseException | None = None


class CompletionWorker:
    """Answers Jobs through one QwenBackend, batching whatever is waiting (up to max_batch prompts)."""

    def __init__(self, backend, served_model: str, max_batch: int = 32):
        self.backend = backend
        self.engine = backend.engine
        self.tokenizer = self.engine.tokenizer
        self.served_model = served_model
        self.max_batch = max_batch
        self.max_length = self.engine.max_length
        self.jobs: queue.Queue[Job] = queue.Queue()
        self.answered = {"requests": 0, "batches": 0}  # shown by GET /health
        self.thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self.thread.start()

    def submit(self, request: Completion) -> dict:
        """Tokenize and check lengths here (any HTTP thread), then wait for the worker's reply."""
        prompt_ids = [self.tokenizer.encode(p) for p in request.prompts]
        for ids in prompt_ids:
            if len(ids) + request.max_tokens > self.max_length:
                raise BadRequest(f"This model's maximum context length is {self.max_length} tokens. However, you "
                                 f"requested {len(ids) + request.max_tokens} tokens ({len(ids)} in the prompt, "
                                 f"{request.max_tokens} for the completion). Please reduce the prompt or "
                                 f"max_tokens.", "prompt")
        job = Job(request, prompt_ids)
        self.jobs.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.reply  # type: ignore[return-value]

    def _loop(self) -> None:
        while True:
            batch = [self.jobs.get()]
            size = len(batch[0].prompt_ids) * batch[0].request.n
            while size < self.max_batch:
                try:
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    break
                batch.append(job)
                size += len(job.prompt_ids) * job.request.n
            try:
                self._answer(batch)
                self.answered["requests"] += len(batch)
                self.answered["batches"] += 1
            except Exception as e:  # one failure answers the whole batch with HTTP 500
                for job in batch:
                    job.error = e
            for job in batch:
                job.done.set()

    def _answer(self, jobs: list[Job]) -> None:
        items = [(job, p) for job in jobs for p in range(len(job.prompt_ids))]
        wanted = [(job, p) for job, p in items if job.request.max_tokens > 0]
        generated = self.engine.generate([
            Generate(job.request.prompts[p], stop=job.request.stop, max_new_tokens=job.request.max_tokens,
                     temperature=job.request.temperature, top_p=job.request.top_p, top_k=job.request.top_k,
                     n=job.request.n, seed=job.request.seed)
            for job, p in wanted])
        texts = {(id(job), p): result.texts for (job, p), result in zip(wanted, generated)}

        # every (job, prompt, sample): its completion text and token ids
        samples = []
        for job, p in items:
            for text in texts.get((id(job), p), ("",) * job.request.n):
                samples.append((job, p, text, self.tokenizer.encode(text) if text else []))
        scored_rows = [i for i, (job, *_rest) in enumerate(samples) if job.request.logprobs is not None]
        top_k = max((samples[i][0].request.logprobs for i in scored_rows), default=0)
        scores = self.engine.next_token_scores([samples[i][0].prompt_ids[samples[i][1]] + samples[i][3]
                                                for i in scored_rows], top_k)
        row_scores = dict(zip(scored_rows, scores))

        choices: dict[int, list[dict]] = {id(job): [] for job in jobs}
        usage = {id(job): [0, 0] for job in jobs}
        for i, (job, p, text, ids) in enumerate(samples):
            r = job.request
            prompt_ids = job.prompt_ids[p]
            if len(choices[id(job)]) % r.n == 0:
                usage[id(job)][0] += len(prompt_ids)
            usage[id(job)][1] += len(ids)
            choice = {"index": len(choices[id(job)]), "text": (r.prompts[p] if r.echo else "") + text,
                      "logprobs": None,
                      "finish_reason": "length" if len(ids) >= r.max_tokens else "stop"}
            if r.logprobs is not None:
                choice["logprobs"] = self._logprobs(prompt_ids + ids, row_scores[i], r.logprobs,
                                                    first=0 if r.echo else len(prompt_ids))
            choices[id(job)].append(choice)
        for job in jobs:
            prompt_tokens, completion_tokens = usage[id(job)]
            job.reply = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                         "model": self.served_model, "choices": choices[id(job)],
                         "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                   "total_tokens": prompt_tokens + completion_tokens}}

    def _logprobs(self, ids: list[int], scores: list[tuple[float, list[tuple[int, float]]]], k: int,
                  first: int) -> dict:
        """The OpenAI legacy logprobs object for tokens ids[first:] (position 0 has no logprob)."""
        pieces = [self.tokenizer.decode_bytes([t]) for t in ids]
        offsets = text_offsets(pieces)
        tokens, token_logprobs, top_logprobs = [], [], []
        for pos in range(first, len(ids)):
            tokens.append(pieces[pos].decode("utf-8", errors="replace"))
            if pos == 0:
                token_logprobs.append(None)
                top_logprobs.append(None)
                continue
            logprob, alternatives = scores[pos - 1]
            token_logprobs.append(logprob)
            top = {self.tokenizer.decode_bytes([t]).decode("utf-8", errors="replace"): lp
                   for t, lp in alternatives[:k]}
            top.setdefault(tokens[-1], logprob)  # the actual token is always listed, as in vLLM
            top_logprobs.append(top)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
                "text_offset": offsets[first:]}


# ----------------------------------------------------------------------------------------------
# HTTP

class CompletionServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], worker: CompletionWorker, *, verbose: bool = False):
        super().__init__(address, _Handler)
        self.worker = worker
        self.verbose = verbose


class _Handler(BaseHTTPRequestHandler):
    server: CompletionServer
    server_version = "qwen-eval-serve"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, param: str | None = None) -> None:
        kind = "invalid_request_error" if status < 500 else "server_error"
        self._send(status, {"error": {"message": message, "type": kind, "param": param, "code": status}})

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    def do_GET(self) -> None:
        worker = self.server.worker
        path = self._path()
        if path == "/health":
            self._send(200, {"status": "ok", **worker.answered})
        elif path == "/v1/models":
            self._send(200, {"object": "list", "data": [
                {"id": worker.served_model, "object": "model", "created": 0, "owned_by": "qwen-eval",
                 "max_model_len": worker.max_length}]})
        elif path == "/v1/completions":
            self._error(405, "use POST for /v1/completions")
        else:
            self._error(404, f"no route {path or '/'}; this server has POST /v1/completions, GET /v1/models "
                             f"and GET /health")

    def do_POST(self) -> None:
        path = self._path()
        if path != "/v1/completions":
            self._error(404, f"no route POST {path or '/'}; this server has POST /v1/completions")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise BadRequest(f"the request body is not JSON ({e})") from None
            reply = self.server.worker.submit(parse_completion(body, self.server.worker.served_model))
        except BadRequest as e:
            self._error(e.status, str(e), e.param)
        except UserError as e:
            self._error(400, str(e))
        except Exception as e:
            self._error(500, f"internal error: {type(e).__name__}: {e}")
        else:
            self._send(200, reply)


# ----------------------------------------------------------------------------------------------
# Command line

def model_config(model: str | None, model_path: str | None) -> dict[str, Any]:
    """A model config as `model=<name>` composes it, or a bare one for a checkpoint folder."""
    if model is None:
        if model_path is None:
            model = "tiny"
        else:
            return {"name": Path(model_path).expanduser().name, "backend": "qwen", "path": model_path}
    from importlib import resources

    from qwen_eval.options import model_defaults

    folder = Path(str(resources.files("qwen_eval.conf"))) / "model"
    cfg = model_defaults(model)
    if cfg is None:
        names = sorted(p.stem for p in folder.glob("*.yaml"))
        raise UserError(f"--model {model}: no such model config; valid: {', '.join(names)}")
    if cfg.get("backend") != "qwen":
        raise UserError(f"--model {model} uses backend {cfg.get('backend')}; qwen-eval-serve serves the bundled "
                        f"engine (a model config with backend: qwen)")
    if model_path is not None:
        cfg["path"] = model_path
    return cfg


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="qwen-eval-serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a model config name (conf/model/NAME.yaml: tiny, qwen-14b, ...); default tiny")
    p.add_argument("--model-path", help="a local checkpoint folder (overrides the config's path)")
    p.add_argument("--served-model-name", help="the name clients send as `model` (default: the config's name)")
    p.add_argument("--dtype", help="auto, float32, bfloat16 or float16 (default: the config's)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the config's)")
    p.add_argument("--max-length", type=int, help="context length in tokens, prompt + completion")
    p.add_argument("--max-batch", type=int, default=32, help="prompts answered together by one engine call")
    p.add_argument("--seed", type=int, default=1234, help="the engine's sampling seed (as qwen-eval's seed=)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--verbose", action="store_true", help="log every HTTP request on stderr")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if args.max_batch < 1:
            raise UserError(f"--max-batch {args.max_batch} must be >= 1")
        cfg = model_config(args.model, args.model_path)
        for key in ("dtype", "device", "max_length"):
            if getattr(args, key) is not None:
                cfg[key] = getattr(args, key)
        from qwen_eval.backends.qwen import QwenBackend

        backend = QwenBackend.from_config(cfg, seed=args.seed)
        worker = CompletionWorker(backend, args.served_model_name or backend.name, max_batch=args.max_batch)
        server = CompletionServer((args.host, args.port), worker, verbose=args.verbose)
    except UserError as e:
        print(f"qwen-eval-serve: error: {' '.join(str(e).split())}", file=sys.stderr)
        raise SystemExit(2)
    except OSError as e:  # the port is taken, the host does not exist
        print(f"qwen-eval-serve: error: cannot listen on {args.host}:{args.port} ({e.strerror or e})", file=sys.stderr)
        raise SystemExit(2)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leave serve_forever through `finally`
    host, port = server.server_address[:2]
    print(f"serving {worker.served_model} ({backend.describe()['device']}, {backend.dtype}, "
          f"max_model_len {worker.max_length})", flush=True)
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
