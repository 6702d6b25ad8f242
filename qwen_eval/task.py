"""The task plugin API: what every benchmark implements.

A task reads like its benchmark's appendix: `load` (where the data lives), `requests` (the
prompt), `score` (answer extraction), `aggregate` (the metric). Tasks never see a model.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence, TypeVar

from qwen_eval.errors import UserError
from qwen_eval.requests import Request, Response

R = TypeVar("R")
D = TypeVar("D")


class Doc(Protocol):
    """A benchmark document: any object with a stable string id."""

    doc_id: str


@dataclass(frozen=True)
class DataSpec:
    """Where a task's documents come from (the `data` config group).

    source: "local" reads `path` in the upstream on-disk layout; "hub" loads the task's Hugging
    Face dataset through `datasets`; "sample" the small copy shipped in the package; "auto" is
    local when `path` is set, else the hub.
    """

    source: str = "auto"
    path: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)



@dataclass
class Sample:
    """One scored document: a line of samples.jsonl.

    `extra` holds task-specific fields (subject, probabilities, per-extractor predictions...).
    """

    doc_id: str
    prompt: str
    target: Any
    response: Any
    prediction: Any
    score: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "doc_id": self.doc_id,
            "prompt": self.prompt,
            "target": self.target,
            "response": self.response,
            "prediction": self.prediction,
            "score": self.score,
            **self.extra,
        }


@dataclass(frozen=True)
class FewShot:
    """A k-shot prompt in its parts, the way lm-eval models one: the one source of a task's
    k-shot prompt. As plain text (`Task.prompt`) it is `description`, then each shot's question +
    target_delimiter + answer + shot_delimiter, then `question`. As chat turns
    (`chat.fewshot_as_multiturn`) the description is a system turn, each shot a user turn and an
    assistant turn, and the question the last user turn; the delimiters go, as lm-eval's
    `--fewshot_as_multiturn` drops them."""

    description: str
    shots: tuple[tuple[str, str], ...]
    question: str
    target_delimiter: str = " "
    shot_delimiter: str = "\n\n"

    def text(self) -> str:
        return self.description + "".join(q + self.target_delimiter + a + self.shot_delimiter
                                          for q, a in self.shots) + self.question

    def messages(self, system: str | None = None) -> tuple[tuple[str, str], ...]:
        """The chat turns; `system` (chat.system) and the description share one system turn,
        joined by the shot delimiter unless one of them already has whitespace at the join."""
        head = _joined(system, self.description, self.shot_delimiter)
        turns = [("system", head)] if head else []
        for q, a in self.shots:
            turns += [("user", q), ("assistant", a)]
        return tuple(turns + [("user", self.question)])


def stratified_subset(docs: Sequence[D], stratum: Callable[[D], Any], limit: int, seed: int) -> list[D]:
    """`limit` of `docs` drawn across the strata `stratum(doc)` names, each stratum's share in
    proportion to its size (largest remainders get the leftover places, ties to the larger
    stratum, then the first seen), each stratum's picks a seeded random sample; returned in the
    documents' order. The same docs, limit and seed give the same subset on every machine."""
    if limit >= len(docs):
        return list(docs)
    groups: dict[Any, list[int]] = {}
    for i, doc in enumerate(docs):
        groups.setdefault(stratum(doc), []).append(i)
    keys = list(groups)
    quotas = {k: limit * len(groups[k]) / len(docs) for k in keys}
    counts = {k: int(quotas[k]) for k in keys}
    order = sorted(range(len(keys)), key=lambda j: (-(quotas[keys[j]] - counts[keys[j]]), -len(groups[keys[j]]), j))
    for j in order[:limit - sum(counts.values())]:
        counts[keys[j]] += 1
    chosen: list[int] = []
    for k in keys:
        digest = hashlib.sha256(f"{seed}:{k!r}".encode()).digest()
        chosen += random.Random(int.from_bytes(digest[:8], "little")).sample(groups[k], counts[k])
    return [docs[i] for i in sorted(chosen)]


def _joined(first: str | None, second: str | None, delimiter: str) -> str:
    if not first or not second:
        return first or second or ""
    return first + second if first[-1].isspace() or second[0].isspace() else first + delimiter + second


class Task(ABC):
    """Base class of every benchmark.

    Class attributes:
      name: the registry name (`task=<name>`).
      default_shots: shots when the config says `shots: null`.
      headline: the metric the model card reports, a key of `aggregate`'s result.
      model_card_column: the column of the model card's table this task reproduces (or None).
      version: bump when prompts, extraction or metrics change, so results are not mixed up.

    The constructor receives the task's config options (everything under `task:` but `name`),
    the number of shots, the protocol (`qwen` or `clean`) and the seed. `self.options` is
    `default_options()` overridden by the options given (the one merge; a plain dict).
    """

    name: ClassVar[str]
    default_shots: ClassVar[int] = 0
    headline: ClassVar[str] = "acc"
    model_card_column: ClassVar[str | None] = None
    version: ClassVar[str] = "1"
    max_shots: ClassVar[int | None] = None
    # leaderboard columns this task fills besides model_card_column (which shows `headline`):
    # column name -> metric name (MBPP+ also fills "MBPP" with its base tests' pass@1)
    extra_columns: ClassVar[Mapping[str, str]] = {}
    # chat.fewshot_as_multiturn: the shots asked as chat turns (make_task sets it; see requests_for)
    fewshot_as_multiturn: bool = False
    chat_system: str | None = None  # chat.system, which shares the system turn with a description

    def __init__(self, options: Mapping[str, Any] | None = None, *, shots: int | None = None,
                 protocol: str = "qwen", seed: int = 1234):
        self.options = {**self.default_options(), **dict(options or {})}
        self.shots = self.default_shots if shots is None else int(shots)
        self.protocol = protocol
        self.seed = seed

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        """The task's config options with their defaults: the one home of them. `task=<name>`
        composes this node (conf/task/<name>.yaml selects it, see qwen_eval/conf/__init__.py)."""
        return {}

    @abstractmethod
    def load(self, data: DataSpec, limit: int | None = None) -> list[Doc]:
        """The documents to evaluate, in a stable order; `limit` as the `limit` config key says."""

    # How `limit=N` picks documents (results.json records it with the ids of those scored).
    limit_rule: ClassVar[str] = "the first N documents"

    # -- data sources: one dispatch; a task implements the readers it has -------------------------

    auto_source: ClassVar[str] = "hub"  # what data.source=auto reads when data.path is not set

    def source_of(self, data: DataSpec) -> str:
        """The source `data` reads for this task: `data.source`, with auto resolved (local when
        data.path is set, else `auto_source`). The one place "auto" is decided."""
        if data.source == "auto":
            return "local" if data.path else self.auto_source
        return data.source

    def read_source(self, data: DataSpec) -> Any:
        """What `read_local(path)`, `read_hub()` or `read_sample()` returns, as `source_of(data)` says."""
        source = self.source_of(data)
        if source == "local":
            return self.read_local(data.path)
        if source == "hub":
            return self.read_hub()
        if source == "sample":
            return self.read_sample()
        raise UserError(f"data.source={data.source!r} is not a source; valid: auto, local, hub, sample")

    def read_local(self, path: str | None) -> Any:
        raise UserError(f"task {self.name} cannot read a local copy; use data.source=hub or data.source=sample")

    def read_hub(self) -> Any:
        raise UserError(f"task {self.name} has no hub dataset; give data.path=DIR (a local copy) or data.source=sample")

    def read_sample(self) -> Any:
        raise UserError(f"task {self.name} ships no sample; give data.path=DIR (a local copy) or data.source=hub")

    # -- answers ---------------------------------------------------------------------------------

    def response(self, doc: Doc, responses: Sequence[Response], kind: type[R], index: int = 0,
                 count: int = 1) -> R:
        """Answer `index` of the `count` answers to `requests(doc)`, checked to be a `kind` (a
        RuntimeError naming the task, the document and the request otherwise: a backend bug)."""
        if len(responses) != count or not isinstance(responses[index], kind):
            got = ", ".join(type(r).__name__ for r in responses) or "no answer"
            raise RuntimeError(f"task {self.name} {doc.doc_id}: request {index} of {count} needs a {kind.__name__}, "
                               f"the backend returned {got}")
        return responses[index]

    @abstractmethod
    def requests(self, doc: Doc) -> list[Request]:
        """The requests one document needs (usually one)."""

    def fewshot(self, doc: Doc) -> FewShot | None:
        """The k-shot prompt of `doc` in its parts, the one place a task builds it: `prompt(doc)`
        is its text and chat.fewshot_as_multiturn asks its turns. None: the task's prompt is no
        k-shot text (it defines `prompt` itself)."""
        return None

    def prompt(self, doc: Doc) -> str:
        """The text the model is asked for `doc` (samples.jsonl's `prompt`): `fewshot(doc).text()`.
        A task whose prompt is no k-shot text overrides this."""
        parts = self.fewshot(doc)
        if parts is None:
            raise NotImplementedError(f"task {self.name} has no k-shot prompt: it defines prompt() itself")
        return parts.text()

    def requests_for(self, doc: Doc) -> list[Request]:
        """`requests(doc)` as this run asks them: with `fewshot_as_multiturn`, each request that
        asks in text (a task with FewShot parts asks its `prompt(doc)` so) is asked in the parts'
        chat turns instead (the backend renders them)."""
        requests = self.requests(doc)
        if not self.fewshot_as_multiturn:
            return requests
        parts = self.fewshot(doc)
        asks = [r.kind != "rolling" and bool(r.context) for r in requests]
        if parts is None or not any(asks):
            raise UserError(f"chat.fewshot_as_multiturn=true: task {self.name} has no few-shot text prompt to "
                            f"split into turns; leave chat.fewshot_as_multiturn false for it")
        turns = parts.messages(self.chat_system)
        return [replace(r, context="", messages=turns) if ask else r for r, ask in zip(requests, asks)]

    @abstractmethod
    def score(self, doc: Doc, responses: Sequence[Response]) -> Sample:
        """Turn the backend's answers to `requests(doc)` into a scored sample."""

    @abstractmethod
    def aggregate(self, samples: Sequence[Sample]) -> dict[str, float]:
        """Metrics (fractions in [0, 1]), each with a `<name>_stderr` entry where it has one."""

    def describe(self) -> dict[str, Any]:
        """Provenance written to results.json: what a reader needs to compare two runs."""
        return {"name": self.name, "version": self.version, "shots": self.shots,
                "protocol": self.protocol, "options": self.options}

    # -- hooks the harness calls; override what the task needs -------------------------------------

    @property
    def prompt_protocol(self) -> str:
        """The prompt protocol the task asks in (its `prompt` option: "base", "instruct",
        "qwen_chat"); leaderboards never put two protocols in one row or column."""
        return str(self.options.get("prompt", "base"))

    @property
    def uses_chat(self) -> bool:
        """True when the task asks in chat turns (then the backend is wrapped in qwen_eval.chat)."""
        return False

    def score_many(self, docs: Sequence[Doc], responses_per_doc: Sequence[Sequence[Response]]) -> list[Sample]:
        """Score every document at once (the runner calls this); default: `score` one by one. A
        task whose scoring runs in parallel (code in the sandbox) overrides it."""
        return [self.score(doc, responses) for doc, responses in zip(docs, responses_per_doc)]

    def run_info(self) -> dict[str, Any] | None:
        """Facts about how the run was scored (e.g. the sandbox's protections), written to
        results.json as `extra`; None (the default) writes nothing."""
        return None

    def write_artifacts(self, out_dir: Path, record: Mapping[str, Any]) -> list[Path]:
        """Extra files for the run folder, given the results record; their names go into
        results.json as `artifacts` (default: none, and no `artifacts` key)."""
        return []
