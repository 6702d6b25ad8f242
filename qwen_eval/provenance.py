"""What a result was measured with: the code, the machine, the checkpoint's files and the data files read.

    code_identity()              {"version", "commit", "dirty", "source"}: the checkout, a build stamp, or "unknown"
    machine_identity()           CPU model and flags, cores, torch threads, accelerator, memory, OS, torch
    checkpoint_identity(...)     the name, format, quantization and sha256 of each weight file
    files_read()                 a context manager: every file opened for reading inside it
    file_record(path)            {"path", "bytes", "sha256"} (sha256 memoized by path, size and mtime)
    peak_rss_bytes()             the process's peak resident memory so far

results.json carries these under `code`, `machine`, `model.checkpoint`, `data.files` and `timing`
(qwen_eval/evaluation.py), so a reader can tell from the file alone what produced a number.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import resource
import subprocess
import sys
import threading
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

PACKAGE = "qwen-eval"
BUILD_STAMP = Path(__file__).with_name("_build_info.json")  # written by setup.py's build_py when a wheel is built
UNKNOWN = "unknown"


# ---------------------------------------------------------------------------------------------
# The code


def _git(here: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(folder: Path) -> tuple[str, bool] | None:
    """(commit, dirty) of the git checkout holding `folder`, None outside one. Dirty = tracked
    files differ from the commit (untracked files, such as run outputs, do not count)."""
    commit = _git(folder, "rev-parse", "HEAD")
    if not commit:
        return None
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    return commit, bool(status)


def package_version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return UNKNOWN


def code_identity() -> dict[str, Any]:
    """The code that ran: the git checkout the package is imported from (an editable install or a
    checkout on sys.path), else the commit stamped into an installed wheel when it was built, else
    commit "unknown" said so explicitly."""
    version = package_version()
    state = git_state(Path(__file__).resolve().parent)
    if state is not None:
        return {"version": version, "commit": state[0], "dirty": state[1], "source": "git checkout"}
    if BUILD_STAMP.is_file():
        try:
            stamp = json.loads(BUILD_STAMP.read_text(encoding="utf-8"))
            return {"version": version, "commit": str(stamp["commit"]), "dirty": bool(stamp["dirty"]),
                    "source": "build stamp"}
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return {"version": version, "commit": UNKNOWN, "dirty": None, "source": "not a git checkout, no build stamp"}


# ---------------------------------------------------------------------------------------------
# The machine

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")  # what decides a CPU kernel's speed


def _cpuinfo() -> tuple[str, list[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or UNKNOWN, []
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    present = set(flags.group(1).split()) if flags else set()
    return (model.group(1).strip() if model else platform.processor() or UNKNOWN), [f for f in CPU_FLAGS if f in present]


def _memory_bytes() -> int | None:
    try:
        found = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


def machine_identity() -> dict[str, Any]:
    """The machine a run measured on (timings and bf16 results depend on it)."""
    import torch

    cpu, flags = _cpuinfo()
    accelerator = None
    if torch.cuda.is_available():
        accelerator = {"kind": "cuda", "name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
                       "cuda": torch.version.cuda}
    return {"cpu": cpu, "cpu_flags": flags, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "accelerator": accelerator, "memory_bytes": _memory_bytes(), "os": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "hostname": platform.node()}


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


# ---------------------------------------------------------------------------------------------
# Files

def digest_cache_path() -> Path:
    base = os.environ.get("QWEN_EVAL_CACHE") or "~/.cache/qwen-eval"
    return Path(base).expanduser() / "file-digests.json"


_digest_lock = threading.Lock()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, memoized in the cache folder by (real path, size, mtime) so a 28 GB
    checkpoint is hashed once, not at every run."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    memo_path = digest_cache_path()
    with _digest_lock:
        memo = _read_memo(memo_path)
        if key in memo:
            return memo[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    digest = h.hexdigest()
    with _digest_lock:
        memo = _read_memo(memo_path)
        memo[key] = digest
        try:
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo_path.with_name(f"{memo_path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(memo, indent=0, sort_keys=True), encoding="utf-8")
            tmp.replace(memo_path)
        except OSError:  # a read-only cache folder: the digest is still right, only not memoized
            pass
    return digest


def _read_memo(path: Path) -> dict[str, str]:
    try:
        memo = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def file_record(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    return {"path": str(p), "bytes": p.stat().st_size, "sha256": file_sha256(p)}


# Opened while loading a task's documents, but code, not data.
_NOT_DATA = re.compile(r"\.(py|pyc|pyi|so|pth|typed)$|/dist-info/|/__pycache__/|^/(proc|sys|dev)/")
_recorders: list[list[str]] = []


def _audit(event: str, args: tuple) -> None:
    if event != "open" or not _recorders:
        return
    path, mode, flags = (args + (None, None, None))[:3]
    if not isinstance(path, (str, bytes, os.PathLike)) or isinstance(path, int):
        return
    writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
        isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
    if writing:
        return
    text = os.fsdecode(path)
    if _NOT_DATA.search(text):
        return
    for found in _recorders:
        found.append(text)


_hook_installed = False


@contextmanager
def files_read() -> Iterator[list[str]]:
    """The files opened for reading inside the block (by Python code, pandas and `datasets`
    included), in order, code files left out; through an audit hook installed once."""
    global _hook_installed
    if not _hook_installed:
        sys.addaudithook(_audit)
        _hook_installed = True
    found: list[str] = []
    _recorders.append(found)
    try:
        yield found
    finally:
        _recorders.remove(found)


def data_files(paths: Sequence[str]) -> list[dict[str, Any]]:
    """A record of each distinct regular file in `paths` (real paths, first-read order)."""
    seen: dict[str, None] = {}
    for p in paths:
        try:
            real = os.path.realpath(p)
        except (OSError, ValueError):
            continue
        if os.path.isfile(real):
            seen.setdefault(real, None)
    return [file_record(p) for p in seen]


# ---------------------------------------------------------------------------------------------
# Checkpoints

_WRAPPER_TAGS = {"gguf", "awq", "gptq", "int4", "int8", "fp8", "bnb", "4bit", "8bit", "exl2", "mlx"}


def base_model_name(name: str) -> str:
    """The model a checkpoint is a copy of: its name without packaging and quantization tags
    ("Qwen2.5-Coder-1.5B-Instruct-GGUF" -> "Qwen2.5-Coder-1.5B-Instruct")."""
    parts = re.split(r"[-_ ]", name)
    while len(parts) > 1 and parts[-1].lower() in _WRAPPER_TAGS | {"q4_k_m", "q4", "q8_0", "q5_k_m", "f16", "bf16"}:
        parts.pop()
    return "-".join(parts)


def same_model(a: str, b: str) -> bool:
    """Whether two names denote one model, spelled either way ("Qwen2.5 Coder 0.5B Instruct" =
    "qwen2.5-coder-0.5b-instruct")."""
    def key(name: str) -> str:
        return re.sub(r"[^a-z0-9.]", "", base_model_name(name).lower())

    return key(a) == key(b)


def gguf_identity(path: Path, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A GGUF file's identity from its own metadata: general.basename + size_label + finetune
    (llama.cpp's naming), its file type (Q4_K_M, ...) and what it was converted from."""
    from gguf import LlamaFileType

    parts = [metadata.get("general.basename"), metadata.get("general.size_label"), metadata.get("general.finetune")]
    named = "-".join(str(p) for p in parts if p) or metadata.get("general.name") or path.stem
    file_type = metadata.get("general.file_type")
    try:
        quant = LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (TypeError, ValueError):
        quant = f"file type {file_type}" if file_type is not None else "unknown"
    tags = [t for t in re.split(r"[-_ ]", str(metadata.get("general.finetune") or "")) if t.lower() in _WRAPPER_TAGS - {"gguf"}]
    quantization = f"GGUF {quant}" + (f" (converted from {'/'.join(tags)})" if tags else "")
    return checkpoint_identity([path], name=base_model_name(str(named)), source_name=str(named), format="gguf",
                               quantization=quantization)


def folder_identity(directory: Path, config: Mapping[str, Any] | None, format: str) -> dict[str, Any]:
    """A checkpoint folder's identity: named by the folder (a hub snapshot by its repository),
    quantization from config.json's quantization_config, the weight files hashed."""
    name = directory.name
    if directory.parent.name == "snapshots":  # ~/.cache/huggingface/hub/models--Org--Name/snapshots/<rev>
        name = directory.parent.parent.name.split("--")[-1]
    quant = ((config or {}).get("quantization_config") or {}).get("quant_method")
    files = sorted(p for p in directory.iterdir()
                   if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".gguf", ".json", ".tiktoken"))
    return checkpoint_identity(files, name=base_model_name(name), source_name=name, format=format,
                               quantization=str(quant) if quant else None)


def checkpoint_identity(files: Sequence[Path], *, name: str, source_name: str, format: str,
                        quantization: str | None) -> dict[str, Any]:
    records = [file_record(f) for f in files]
    digest = hashlib.sha256("".join(f"{Path(r['path']).name}:{r['sha256']}\n" for r in records).encode()).hexdigest()
    return {"name": name, "source_name": source_name, "format": format, "quantization": quantization,
            "files": [{"name": Path(r["path"]).name, "bytes": r["bytes"], "sha256": r["sha256"]} for r in records],
            "sha256": digest}
