"""Replay: answer Generate requests with completions saved elsewhere (OpenCompass's idea).

    qwen-eval task=gsm8k model=replay model.path=completions.jsonl

Each line of the file is {"doc_id": ..., "completion": "..."} (or "completions": [...] for n > 1
samples). A request is answered with the completion of the document it came from, cut at the
request's stop strings exactly as a model backend would, so saved raw outputs are scored under
the same protocol.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from qwen_eval.backends.base import Backend, unsupported
from qwen_eval.errors import UserError
from qwen_eval.provenance import file_record
from qwen_eval.requests import Choice, ChoiceResult, Generate, GenerateResult, Request, Rolling, RollingResult, cut_at_stop


class ReplayBackend(Backend):
    name = "replay"
    max_length = 1 << 30

    def __init__(self, completions: Mapping[str, str | Sequence[str]], source: str = "<memory>"):
        self.completions = {str(k): ([v] if isinstance(v, str) else list(v)) for k, v in completions.items()}
        self.source = source
        digest = hashlib.sha256(json.dumps(self.completions, sort_keys=True, ensure_ascii=False).encode())
        self.fingerprint = "replay-" + digest.hexdigest()[:16]
        self.tokens_processed = 0
        self._by_context: dict[str, str] = {}  # request context -> doc_id, from bind_documents

    @classmethod
    def from_jsonl(cls, path: str | Path) -> "ReplayBackend":
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"model=replay: completions file {p} not found; set model.path=FILE.jsonl "
                            f"with lines {{\"doc_id\": ..., \"completion\": ...}}")
        completions: dict[str, Any] = {}
        with open(p, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    doc_id = str(row["doc_id"])
                    value = row["completions"] if "completions" in row else row["completion"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise UserError(f"{p}:{lineno}: expected a JSON object with \"doc_id\" and "
                                    f"\"completion\" (or \"completions\": [...])") from None
                completions[doc_id] = value
        return cls(completions, source=str(p))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "ReplayBackend":
        if not cfg.get("path"):
            raise UserError("model=replay needs model.path=FILE.jsonl (lines {\"doc_id\", \"completion\"})")
        return cls.from_jsonl(cfg["path"])

    def describe(self) -> dict[str, Any]:
        # saved completions say nothing of the model that wrote them: the file is the identity
        files = [] if self.source == "<memory>" else [file_record(self.source)]
        checkpoint = {"name": f"replay of {Path(self.source).stem}", "source_name": self.source,
                      "format": "replayed completions", "quantization": None,
                      "files": [{"name": Path(f["path"]).name, "bytes": f["bytes"], "sha256": f["sha256"]} for f in files],
                      "sha256": files[0]["sha256"] if files else self.fingerprint}
        return {"name": self.name, "backend": "replay", "path": self.source, "dtype": None,
                "fingerprint": self.fingerprint, "checkpoint": checkpoint}

    def bind_documents(self, doc_requests: Mapping[str, Sequence[Request]]) -> None:
        """Learn which document each request belongs to (requests carry no doc ids)."""
        for doc_id, requests in doc_requests.items():
            for r in requests:
                if isinstance(r, Generate):
                    self._by_context.setdefault(r.context, doc_id)

    def generate(self, requests: Sequence[Generate]) -> list[GenerateResult]:
        results = []
        for r in requests:
            doc_id = self._by_context.get(r.context)
            if doc_id is None or doc_id not in self.completions:
                name = doc_id if doc_id is not None else "(unknown document)"
                raise UserError(f"model=replay: no completion for doc_id {name!r} in {self.source}; "
                                f"add a line {{\"doc_id\": \"{name}\", \"completion\": ...}}")
            saved = self.completions[doc_id]
            if len(saved) < r.n:
                raise UserError(f"model=replay: doc_id {doc_id!r} has {len(saved)} completions in "
                                f"{self.source} but the task asks for n={r.n}")
            results.append(GenerateResult(tuple(cut_at_stop(t, r.stop) for t in saved[:r.n])))
        return results

    def choice(self, requests: Sequence[Choice]) -> list[ChoiceResult]:
        raise unsupported("replay", "Choice", "replay only scores saved generations; use a model backend")

    def rolling(self, requests: Sequence[Rolling]) -> list[RollingResult]:
        raise unsupported("replay", "Rolling", "replay only scores saved generations; use a model backend")
