"""What every backend is: the three request types, its identity, and the hooks the runner and
the chat layer call (each declared here with its default, so no caller looks a hook up by name).

    choice(requests)   -> list[ChoiceResult]
    generate(requests) -> list[GenerateResult]
    rolling(requests)  -> list[RollingResult]
    answer_streaming(kind, requests, on_done) -> list[...]   (on_done(i, result) per answer)

A backend that cannot answer a request type raises UserError naming the type and the backend
(the defaults here do). `fingerprint` identifies everything that changes answers (weights,
dtype, numerics options); the answer cache is keyed by it.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from qwen_eval.errors import UserError
from qwen_eval.requests import Choice, ChoiceResult, Generate, GenerateResult, Request, Rolling, RollingResult


def unsupported(backend: str, kind: str, hint: str = "") -> UserError:
    return UserError(f"backend {backend} cannot answer {kind} requests{'; ' + hint if hint else ''}")


class Backend:
    """Base class of the backends (qwen, hf, replay, openai; chat and caching wrap any of them)."""

    name: str
    fingerprint: str
    max_length: int
    load_seconds: float | None = None  # how long backends.build took (weights, engine start)
    tokens_processed: int = 0  # running count of prompt + generated tokens, for throughput reports
    path: str | None = None  # the checkpoint or file it answers from, if any
    chat_template: str | None = None  # the checkpoint's own chat template (qwen_eval.chat), if it has one
    checkpoint_format: str | None = None  # "tiny", "qwen" (Qwen-1, ChatML without a template) or "qwen2"
    renders_chat: bool = False  # takes chat turns as messages and applies its own template (a chat API)

    def describe(self) -> dict[str, Any]:
        """name, path, dtype, fingerprint (and anything else worth recording in results.json)."""
        return {"name": self.name, "path": self.path, "fingerprint": self.fingerprint}

    def choice(self, requests: Sequence[Choice]) -> list[ChoiceResult]:
        raise unsupported(self.name, "Choice")

    def generate(self, requests: Sequence[Generate]) -> list[GenerateResult]:
        raise unsupported(self.name, "Generate")

    def rolling(self, requests: Sequence[Rolling]) -> list[RollingResult]:
        raise unsupported(self.name, "Rolling")

    # The request kinds a backend batches itself (the bundled engine's generation: a token budget,
    # and a decode batch that refills as rows end; vLLM and a pool of Ray replicas: every kind).
    # The runner hands it all of a run's requests of such a kind in one answer_streaming call, and
    # it reports each answer as it ends; the other kinds come in the runner's batches of batch_size.
    streams: frozenset[str] = frozenset()

    def answer_streaming(self, kind: str, requests: Sequence[Request],
                         on_done: Callable[[int, Any], None]) -> list[Any]:
        """The answers to `requests` (all of one `kind`), calling on_done(i, result) for each once
        it is known. Default: the kind's method, then every answer in order."""
        results = {"choice": self.choice, "generate": self.generate, "rolling": self.rolling}[kind](requests)
        for i, result in enumerate(results):
            on_done(i, result)
        return results

    def generate_streaming(self, requests: Sequence[Generate],
                           on_done: Callable[[int, GenerateResult], None]) -> list[GenerateResult]:
        return self.answer_streaming("generate", requests, on_done)

    def bind_documents(self, doc_requests: Mapping[str, Sequence[Request]]) -> None:
        """Called once per task before any request, with each document's requests (doc id ->
        requests). Requests carry no document ids; a backend that answers by document (replay)
        learns them here. Default: nothing."""

    def special_tokens(self) -> dict[str, str | None]:
        """The tokenizer's bos/eos token strings, as a chat template sees them; default none."""
        return {"bos_token": None, "eos_token": None}
