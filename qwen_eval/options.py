"""Checking a composed config before any data or model is loaded.

    check(cfg, task_choice, model_choice)   # the first bad option -> UserError (one line)

Hydra takes any value for any key (`batch_size=abc` is the string "abc"), so the values are
checked here: the top-level keys by explicit rules, the `task.` and `model.` options against the
types of their defaults (a task's `default_options()`, a model preset's composed YAML; an option
they do not have is an unknown key, with a `did you mean` hint). Structured-config typing is not
used for this on purpose: OmegaConf would coerce `model.dtype=16` to "16" and `2` to true.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from omegaconf import DictConfig, OmegaConf

from qwen_eval import registry
from qwen_eval.errors import UserError

DATA_SOURCES = ("auto", "local", "hub", "sample")
PROTOCOLS = ("qwen", "clean")
GROUPS = ("task", "model", "suite")
# task./model. options that count something: a whole number >= 1 when set (max_retries: >= 0)
COUNT_OPTIONS = ("max_new_tokens", "n", "max_length", "max_batch_tokens", "concurrency", "workers", "memory_mb",
                 "replicas", "replica_chunk", "tensor_parallel_size", "pipeline_parallel_size")
NONNEGATIVE_OPTIONS = ("max_retries", "replica_restarts")
SECONDS_OPTIONS = ("timeout",)  # a whole number of seconds by default, a fraction allowed


def suggest(word: str, choices: Iterable[str]) -> str:
    """`; did you mean X?` for a close match among `choices`, else ''."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {match[0]}?" if match else ""


def _conf_dir() -> Path:
    return Path(str(resources.files("qwen_eval.conf")))


def top_level_keys() -> list[str]:
    """The keys of conf/config.yaml (and the config groups): anything else is a typo."""
    raw = OmegaConf.load(_conf_dir() / "config.yaml")
    return [*GROUPS, *(str(k) for k in raw if k not in ("defaults", "hydra"))]


def task_defaults(name: str) -> dict[str, Any] | None:
    """A task's options as `task=<name>` composes them: the task's default_options (the node its
    conf/task YAML selects, see qwen_eval/conf/__init__.py) and what the YAML sets besides, or a
    plugin's defaults; None when neither is known (a task YAML from a user's hydra.searchpath)."""
    path = _conf_dir() / "task" / f"{name}.yaml"
    if path.is_file():
        own = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        own.pop("defaults", None)
        return {"name": name, **registry.task_class(name).default_options(), **own}
    if name in registry.plugin_tasks():
        return {"name": name, **registry.task_class(name).default_options()}
    return None


def composed_yaml(path: Path) -> dict[str, Any]:
    """A group's YAML as Hydra composes it: the files its defaults list places here
    (`/<group>/<name>@_here_`, e.g. conf/model_base/bundled.yaml), then its own keys."""
    own = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    merged: dict[str, Any] = {}
    for entry in own.pop("defaults", None) or []:
        if isinstance(entry, str) and entry.startswith("/") and entry.endswith("@_here_"):
            base = _conf_dir() / f"{entry[1:-len('@_here_')]}.yaml"
            if base.is_file():
                merged.update(composed_yaml(base))
    merged.update(own)
    return merged


def model_defaults(name: str) -> dict[str, Any] | None:
    """A model preset's options as `model=<name>` composes them (None: no such YAML here)."""
    path = _conf_dir() / "model" / f"{name}.yaml"
    return composed_yaml(path) if path.is_file() else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(key: str, value: Any, minimum: int, hint: str, allow_none: bool = True) -> None:
    if (value is None and allow_none) or (_is_int(value) and value >= minimum):
        return
    raise UserError(f"{key}={value!r} must be a whole number >= {minimum} ({hint})")


def option_blocks() -> dict[str, list[str]]:
    """The top-level keys of conf/config.yaml that hold options rather than a value (data, chat),
    with the options each has."""
    raw = OmegaConf.to_container(OmegaConf.load(_conf_dir() / "config.yaml"), resolve=False)
    return {str(k): [str(o) for o in v] for k, v in raw.items() if k not in ("defaults", "hydra") and isinstance(v, dict)}


def check_blocks(cfg: Mapping[str, Any]) -> None:
    """`chat=true` or `data=x` replaces a whole block of options with one value: name the option
    that was meant instead of failing later on the value."""
    for key, options in option_blocks().items():
        value = cfg.get(key)
        if isinstance(value, Mapping):
            continue
        example = {"chat": "chat.enabled=true", "data": "data.source=sample"}.get(key, f"{key}.{options[0]}=...")
        raise UserError(f"{key}={value!r}: {key} is a group of options ({', '.join(options)}), not a value; "
                        f"set one of them, e.g. {example}")
    for group in GROUPS:
        value = cfg.get(group)
        if value is not None and not isinstance(value, Mapping):
            raise UserError(f"{group}={value!r}: {group} names a config ({group}=<name>, see `qwen-eval --help`)")


def check_top_level(cfg: Mapping[str, Any]) -> None:
    known = top_level_keys()
    for key in cfg:
        if key not in known:
            raise UserError(f"unknown config key {key!r}{suggest(str(key), known)} (see `qwen-eval --help` for the keys)")
    check_blocks(cfg)
    _count("batch_size", cfg.get("batch_size"), 1, "requests per backend call", allow_none=False)
    _count("limit", cfg.get("limit"), 1, "or null for everything")
    _count("shots", cfg.get("shots"), 0, "or null for the model card's count")
    if not _is_int(cfg.get("seed")):
        raise UserError(f"seed={cfg.get('seed')!r} must be a whole number, e.g. seed=1234")
    if cfg.get("protocol") not in PROTOCOLS:
        raise UserError(f"protocol={cfg.get('protocol')!r} is not a protocol; valid: {', '.join(PROTOCOLS)}")
    for key in ("progress", "debug"):
        if not isinstance(cfg.get(key), bool):
            raise UserError(f"{key}={cfg.get(key)!r} must be true or false")
    for key in ("output_dir", "cache_dir"):
        if cfg.get(key) is not None and not isinstance(cfg.get(key), str):
            raise UserError(f"{key}={cfg.get(key)!r} must be a folder path (or null)")
    data = cfg["data"]
    if data.get("source") not in DATA_SOURCES:
        raise UserError(f"data.source={data.get('source')!r} is not a source; valid: {', '.join(DATA_SOURCES)}")
    if data.get("path") is not None and not isinstance(data.get("path"), str):
        raise UserError(f"data.path={data.get('path')!r} must be a path (or null)")


def _type_name(default: Any) -> str:
    if isinstance(default, bool):
        return "true or false"
    if _is_int(default):
        return "a whole number"
    if isinstance(default, float):
        return "a number"
    if isinstance(default, str):
        return "a string"
    if isinstance(default, Mapping):
        return "a mapping of options"
    return "a list"


def _same_type(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if _is_int(default):
        return _is_int(value)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, Mapping):
        return isinstance(value, Mapping)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return True


def check_options(group: str, choice: str, values: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """`group.<key>` values against the defaults of the group's YAML (recursing into mappings)."""
    for key, value in values.items():
        full = f"{group}.{key}"
        if key not in defaults:
            known = [k for k in defaults if k != "name"]
            has = f"has: {', '.join(known)}" if known else "has no options"
            raise UserError(f"unknown config key {full!r}{suggest(str(key), known)} ({group} {choice} {has})")
        default = defaults[key]
        if value is not None and default is None and key in COUNT_OPTIONS + NONNEGATIVE_OPTIONS:
            _count(full, value, 0 if key in NONNEGATIVE_OPTIONS else 1, "or null for the default")
        if value is None or default is None:  # null: the code's default; a null default takes any other value
            continue
        seconds = key in SECONDS_OPTIONS and isinstance(value, float)
        if not seconds and not _same_type(value, default):
            shown = "true" if default is True else "false" if default is False else repr(default)
            raise UserError(f"{full}={value!r} must be {_type_name(default)} (the default is {shown})")
        if isinstance(default, Mapping):
            check_options(full, choice, value, default)
        elif _is_int(value) and key in COUNT_OPTIONS and value < 1:
            raise UserError(f"{full}={value} must be a whole number >= 1")
        elif _is_int(value) and key in NONNEGATIVE_OPTIONS and value < 0:
            raise UserError(f"{full}={value} must be a whole number >= 0")


def check(cfg: DictConfig, task_choice: str | None = None, model_choice: str | None = None) -> None:
    """Raise a UserError naming the first bad option of a composed config (interpolations resolved)."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)  # Hydra's own node has values only a running job can resolve
    plain = OmegaConf.to_container(OmegaConf.create(plain), resolve=True)
    check_top_level(plain)
    task, model = plain.get("task") or {}, plain.get("model") or {}
    task_choice = task_choice or task.get("name")
    model_choice = model_choice or model.get("name")
    for group, choice, values, defaults in (
            ("task", task_choice, task, task_defaults(str(task_choice)) if task_choice else None),
            ("model", model_choice, model, model_defaults(str(model_choice)) if model_choice else None)):
        if defaults is not None:
            check_options(group, str(choice), values, defaults)
