"""The request types: the only contract between tasks and backends.

Tasks turn documents into requests; backends answer them. A request is a frozen dataclass
with a stable content hash (`request_key`), which is what the cache stores answers under, so
the same question asked by two tasks, two runs, or two ranks is computed once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence, Union


# `LongContext.window_attn` value meaning "the serving model's default layer-wise windows"
# (qwen_eval.model.model.window_schedule): a task cannot know the model's depth or seq_length.
WINDOW_SCHEDULE = "schedule"


@dataclass(frozen=True)
class LongContext:
    """Per-request override of the bundled model's long-context switches (arXiv PPL variants).

    `window_attn` is a per-layer tuple of window sizes (0 = full attention), WINDOW_SCHEDULE for
    the model's default schedule (the backend resolves it), or None for none.
    """

    use_dynamic_ntk: bool = False
    use_logn_attn: bool = False
    window_attn: tuple[int, ...] | str | None = None


@dataclass(frozen=True)
class Choice:
    """Log-probability of each continuation given the context.

    Backends left-truncate a context longer than their `max_length` to its last
    `max_length - 1` tokens (the rule of Qwen's evaluation scripts).
    """

    context: str
    continuations: tuple[str, ...]
    # a chat request: (role, content) turns rendered into `context` by the runner (see Generate)
    messages: tuple[tuple[str, str], ...] = ()
    kind: ClassVar[str] = "choice"


DEFAULT_MAX_LENGTH = 2048  # context in tokens where neither the checkpoint, the config nor the server says


@dataclass(frozen=True)
class Generate:
    """Text generated after the context, cut at the first stop string (the stop string is removed).

    temperature 0 means greedy decoding; `n` samples are drawn with a generator seeded from `seed`
    and the request itself, so answers do not depend on batch size, order or rank.
    """

    context: str
    stop: tuple[str, ...] = ()
    max_new_tokens: int = 512
    # context + generated tokens at most this many (None: no such cap): vLLM's `max_model_len`,
    # which Qwen2.5-Coder's evaluation sets below max_new_tokens (qwencoder-eval/instruct)
    max_length: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    seed: int = 0
    # a chat request: (role, content) turns, and the start of the reply written for the model;
    # the runner renders them with the model's chat template into `context` (qwen_eval.chat)
    messages: tuple[tuple[str, str], ...] = ()
    prefill: str = ""
    kind: ClassVar[str] = "generate"


@dataclass(frozen=True)
class Rolling:
    """Summed log-likelihood of a text (perplexity).

    first_tokens: score only the first N tokens of the text; a text with fewer tokens is not
        scored (the answer has n_tokens == 0 and says how many tokens the text has).
    max_length: window length in tokens (None: the backend's limit); stride: tokens a window
        advances (None: max_length, i.e. disjoint windows).
    long_context: the bundled model's long-context switches for this request (None: as configured).
    """

    text: str
    first_tokens: int | None = None
    max_length: int | None = None
    stride: int | None = None
    long_context: LongContext | None = None
    kind: ClassVar[str] = "rolling"


Request = Union[Choice, Generate, Rolling]


@dataclass(frozen=True)
class ChoiceResult:
    logprobs: tuple[float, ...]  # sum of token log-probabilities of each continuation
    is_greedy: tuple[bool, ...]  # whether each continuation is the greedy one, token by token


@dataclass(frozen=True)
class GenerateResult:
    texts: tuple[str, ...]  # n completions, each cut at the first stop string


@dataclass(frozen=True)
class RollingResult:
    loglikelihood: float  # summed over scored tokens (natural log)
    n_tokens: int  # tokens scored (0 when the text was shorter than first_tokens)
    text_tokens: int  # tokens in the whole text


Response = Union[ChoiceResult, GenerateResult, RollingResult]

RESULT_TYPES: dict[str, type] = {"choice": ChoiceResult, "generate": GenerateResult, "rolling": RollingResult}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def request_key(request: Request) -> str:
    """Stable content hash of a request: sha256 of its kind and fields as canonical JSON."""
    payload = {"kind": request.kind, **_plain(request)}
    for chat_field in ("messages", "prefill"):  # rendered into the context before any request is keyed
        if not payload.get(chat_field, True):
            del payload[chat_field]
    if request.kind == "generate" and payload.get("max_length") is None:
        del payload["max_length"]  # the keys of requests without the cap stay what they were
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def result_to_json(result: Response) -> str:
    return json.dumps(_plain(result), ensure_ascii=False, separators=(",", ":"))


def result_from_json(kind: str, text: str) -> Response:
    fields = json.loads(text)
    return RESULT_TYPES[kind](**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def new_token_budget(request: Generate, context_tokens: int) -> int:
    """The tokens `request` may generate after a context of `context_tokens` tokens."""
    if request.max_length is None:
        return request.max_new_tokens
    return max(0, min(request.max_new_tokens, request.max_length - context_tokens))


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the earliest occurrence of any stop string (the Generate contract)."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1 and i < cut:
                cut = i
    return text[:cut]
