"""The answer cache: SQLite in WAL mode, keyed by (model fingerprint, request hash).

Finished answers are committed chunk by chunk as a run goes, so a run killed at any moment
(SIGKILL included) resumes where it stopped. The key depends only on the model and the request,
never on batch size, order or world size, so any later run — another task, another rank count —
reuses every answer it can.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Iterable, Sequence

from qwen_eval.errors import UserError
from qwen_eval.requests import Response, result_from_json, result_to_json

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    model TEXT NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    result TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (model, key)
) WITHOUT ROWID
"""

_QUERY_CHUNK = 500  # SQLite's bound-parameter limit is well above this


class AnswerCache:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit mode; each put_many is one explicit transaction
            self._db = sqlite3.connect(str(self.path), timeout=120, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise UserError(f"cannot open the answer cache {self.path} ({e}); set cache_dir=DIR "
                            f"to a writable folder or cache_dir=null to run without one") from None

    def get_many(self, model: str, keys: Sequence[str]) -> dict[str, Response]:
        found: dict[str, Response] = {}
        for start in range(0, len(keys), _QUERY_CHUNK):
            chunk = list(keys[start:start + _QUERY_CHUNK])
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT key, kind, result FROM answers WHERE model = ? AND key IN ({marks})",
                [model, *chunk])
            for key, kind, result in rows:
                found[key] = result_from_json(kind, result)
        return found

    def put_many(self, model: str, items: Iterable[tuple[str, str, Response]]) -> None:
        """Store (key, kind, result) triples in one transaction."""
        now = time.time()
        rows = [(model, key, kind, result_to_json(result), now) for key, kind, result in items]
        with self._db:  # BEGIN ... COMMIT
            self._db.executemany(
                "INSERT OR REPLACE INTO answers (model, key, kind, result, created) VALUES (?, ?, ?, ?, ?)",
                rows)

    def count(self, model: str | None = None) -> int:
        if model is None:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM answers WHERE model = ?", [model]).fetchone()[0]

    def close(self) -> None:
        self._db.close()
