"""The answer cache: SQLite, keyed by (model fingerprint, request hash).

Finished answers are committed chunk by chunk as a run goes, so a run killed at any moment
(SIGKILL included) resumes where it stopped. The key depends only on the model and the request,
never on batch size, order or world size, so any later run — another task, another rank count —
reuses every answer it can.

On a local disk the database runs in WAL mode. WAL needs memory shared by every process that
opens the file, which processes on different machines do not have, so on network storage (NFS,
Lustre, GPFS, CIFS, ...: a sweep's Slurm jobs sharing one cache_dir) it uses the rollback journal
with POSIX locks instead, which those filesystems serialise across machines.
"""

from __future__ import annotations

import os
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
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs",
                       "fuse.glusterfs", "fuse.sshfs", "fuse.cephfs", "9p", "afs", "pvfs2", "orangefs", "wekafs")


def filesystem_type(path: Path, mounts: str | None = None) -> str | None:
    """The type of the filesystem holding `path` (the longest mount point above it in /proc/mounts)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text(encoding="utf-8")
        except OSError:  # not Linux
            return None
    target = os.path.realpath(path)
    best, kind = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def journal_mode(path: Path, mounts: str | None = None) -> str:
    """WAL on a local disk; the rollback journal (DELETE) on network storage."""
    kind = filesystem_type(path, mounts)
    return "DELETE" if kind is not None and kind.lower() in NETWORK_FILESYSTEMS else "WAL"


class AnswerCache:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit mode; each put_many is one explicit transaction
            self._db = sqlite3.connect(str(self.path), timeout=120, isolation_level=None)
            self.journal_mode = journal_mode(self.path.parent)
            self._db.execute(f"PRAGMA journal_mode={self.journal_mode}")
            self._db.execute("PRAGMA synchronous=NORMAL" if self.journal_mode == "WAL" else "PRAGMA synchronous=FULL")
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
