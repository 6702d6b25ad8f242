"""The task plugin API: what every benchmark implements.

A task reads like its benchmark's appendix: `load` (where the data lives), `requests` (the
prompt), `score` (answer extraction), `aggregate` (the metric). Tasks never see a model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Protocol, Sequence

from qwen_eval.requests import Request, Response


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

    def resolved_source(self) -> str:
        if self.source == "auto":
            return "local" if self.path else "hub"
        return self.source


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


class Task(ABC):
    """Base class of every benchmark.

    Class attributes:
      name: the registry name (`task=<name>`).
      default_shots: shots when the config says `shots: null`.
      headline: the metric the model card reports, a key of `aggregate`'s result.
      model_card_column: the column of the model card's table this task reproduces (or None).
      version: bump when prompts, extraction or metrics change, so results are not mixed up.

    The constructor receives the task's config options (everything under `task:` but `name`),
    the number of shots, the protocol (`qwen` or `clean`) and the seed.
    """

    name: ClassVar[str]
    default_shots: ClassVar[int] = 0
    headline: ClassVar[str] = "acc"
    model_card_column: ClassVar[str | None] = None
    version: ClassVar[str] = "1"
    max_shots: ClassVar[int | None] = None

    def __init__(self, options: Mapping[str, Any] | None = None, *, shots: int | None = None,
                 protocol: str = "qwen", seed: int = 1234):
        self.options = dict(options or {})
        self.shots = self.default_shots if shots is None else int(shots)
        self.protocol = protocol
        self.seed = seed

    @classmethod
    def default_options(cls) -> dict[str, Any]:
        """The task's config options with their defaults (used for tasks without a YAML file)."""
        return {}

    @abstractmethod
    def load(self, data: DataSpec, limit: int | None = None) -> list[Doc]:
        """The documents to evaluate, in a stable order; `limit` as the `limit` config key says."""

    @abstractmethod
    def requests(self, doc: Doc) -> list[Request]:
        """The requests one document needs (usually one)."""

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
