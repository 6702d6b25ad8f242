"""What every backend is: the three request types, its identity, and the hooks the runner and
the chat layer call (each declared here with its default, so no caller looks a hook up by name).

    choice(requests)   -> list[ChoiceResult]
    generate(requests) -> list[GenerateResult]
    rolling(requests)  -> list[RollingResult]
    generate_streaming(requests, on_done) -> list[GenerateResult]   (on_done(i, result) per answer)

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
    tokens_processed: int = 0  # running count of prompt + generated tokens, for throughput reports
    path: str | None = None  # the checkpoint or file it answers from, if any
    chat_template: str | None = None  # the checkpoint's own chat template (qwen_eval.chat), if it has one
    checkpoint_format: str | None = None  # "tiny", "qwen" (Qwen-1, ChatML without a template) or "qwen2"

    def describe(self) -> dict[str, Any]:
        """name, path, dtype, fingerprint (and anything else worth recording in results.json)."""
        return {"name": self.name, "path": self.path, "fingerprint": self.fingerprint}

    def choice(self, requests: Sequence[Choice]) -> list[ChoiceResult]:
        raise unsupported(self.name, "Choice")

    def generate(self, requests: Sequence[Generate]) -> list[GenerateResult]:
        raise unsupported(self.name, "Generate")

    def rolling(self, requests: Sequence[Rolling]) -> list[RollingResult]:
        raise unsupported(self.name, "Rolling")

    # A backend that batches generation itself (the bundled engine: a token budget, and a decode
    # batch that refills as rows end) takes all of a run's Generate requests in one call and
    # reports each answer as it ends; the others get the runner's batches of batch_size.
    streams_generation: bool = False

    def generate_streaming(self, requests: Sequence[Generate],
                           on_done: Callable[[int, GenerateResult], None]) -> list[GenerateResult]:
        """generate(requests), calling on_done(i, result) for each answer once it is known.
        Default: all of them after generate returns."""
        results = self.generate(requests)
        for i, result in enumerate(results):
            on_done(i, result)
        return results

    def bind_documents(self, doc_requests: Mapping[str, Sequence[Request]]) -> None:
        """Called once per task before any request, with each document's requests (doc id ->
        requests). Requests carry no document ids; a backend that answers by document (replay)
        learns them here. Default: nothing."""

    def special_tokens(self) -> dict[str, str | None]:
        """The tokenizer's bos/eos token strings, as a chat template sees them; default none."""
        return {"bos_token": None, "eos_token": None}
