"""`qwen-eval`: the Hydra command line.

    qwen-eval task=mmlu shots=5 model=qwen-14b model.path=/ckpt/Qwen-14B
    qwen-eval -m task=mmlu,ceval shots=0,5                 # multirun (sequential sweep)
    qwen-eval -m hydra/launcher=submitit_slurm model=a,b task=mmlu,gsm8k   # one Slurm job per run
    qwen-eval suite=model_card model=tiny data.source=sample

Bad input (unknown task or model, bad override, a bad option value, missing data, malformed
rows, unreadable checkpoint) prints one line on stderr and exits 2; `debug=true` shows the
traceback instead. Every option is checked (qwen_eval.options) before any data or model is
loaded. In a multirun a failing job is recorded in its folder and the others still run; the
sweep ends with a summary (qwen_eval.sweep). `--help` and `--version` are qwen-eval's own;
`--hydra-help` is Hydra's.
"""

from __future__ import annotations

import itertools
import re
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from qwen_eval import distributed, options, registry
from qwen_eval.errors import UserError

CONFIG_MODULE = "qwen_eval.conf"
PROG = "qwen-eval"
EXIT_USAGE = 2
HELP_FLAGS = ("--help", "-h")
VERSION_FLAGS = ("--version", "-V")
GROUPS = options.GROUPS
_HYDRA_INFO_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--resolve", "--shell-completion",
                     "-sc", "--version", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")


def fail(message: str, code: int = EXIT_USAGE) -> None:
    """One line on stderr, then exit."""
    where = f" (rank {distributed.rank()})" if distributed.rank() > 0 else ""  # under torchrun
    print(f"{PROG}: error{where}: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(code)


# ----------------------------------------------------------------------------------------------
# Third-party tasks have no YAML in our config package: give Hydra a node for each of them.

def register_plugin_tasks() -> None:
    from hydra.core.config_store import ConfigStore

    builtin_yaml = {p.stem for p in Path(str(_conf_dir()), "task").glob("*.yaml")}
    store = ConfigStore.instance()
    for name, target in registry.plugin_tasks().items():
        if name in builtin_yaml:
            continue
        try:
            options = registry.task_class(name).default_options()
        except Exception as e:  # a broken plugin must not break the other tasks
            print(f"{PROG}: warning: task plugin {name} ({target}) failed to load: {e}", file=sys.stderr)
            continue
        store.store(group="task", name=name, node={"name": name, **options})


def _conf_dir() -> Path:
    from importlib import resources

    return Path(str(resources.files(CONFIG_MODULE)))


# ----------------------------------------------------------------------------------------------
# Composition errors become one line before Hydra gets a chance to print a multi-line report.

def _overrides(argv: list[str]) -> list[str]:
    return [a for a in argv if not a.startswith("-")]


def _expand_sweeps(overrides: list[str], limit: int = 64) -> list[list[str]]:
    """The concrete override lists of a multirun sweep (`a=1,2 b=x,y` -> 4 lists)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for ov in parsed:
        key = ov.get_key_element()
        if ov.is_sweep_override():
            choices.append([f"{key}={v}" for v in ov.sweep_string_iterator()])
        else:
            choices.append([f"{key}={ov.get_value_element_as_str()}"] if not ov.is_delete() else [ov.input_line])
    return [list(c) for c in itertools.islice(itertools.product(*choices), limit)]


def _hydra_error_line(e: BaseException) -> str:
    while not str(e).strip() and e.__cause__ is not None:  # Hydra wraps the informative error
        e = e.__cause__
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "Could not find" in text and "Available options" in text:
        wanted = text.split("Could not find '", 1)[1].split("'", 1)[0]
        group, _, name = wanted.rpartition("/")
        raw = text.split("Available options", 1)[1].splitlines()[1:]
        options = [ln.strip() for ln in itertools.takewhile(lambda ln: ln.startswith(("\t", " ")) and ln.strip(), raw)]
        hint = ""
        if group == "hydra/launcher" and name.startswith("submitit"):
            hint = " (the submitit launchers come with pip install -e '.[slurm]', i.e. hydra-submitit-launcher)"
        return f"unknown {group} {name!r}; valid {group}s: {', '.join(options)}{hint}"
    full = _unknown_key(text)
    if full is not None:
        return f"unknown config key {full!r} (see `qwen-eval --cfg job` for every key)"
    return lines[0] if lines else type(e).__name__


def _unknown_key(text: str) -> str | None:
    """The key of Hydra's "no such key" errors, else None."""
    if text.startswith("Could not override '") or ("Key '" in text and "is not in struct" in text):
        marker = "Could not override '" if text.startswith("Could not override '") else "Key '"
        return text.split(marker, 1)[1].split("'", 1)[0]
    return None


def _is_group_choice(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return key in GROUPS or key.startswith("hydra/")


def _unknown_key_line(full: str, overrides: list[str]) -> str:
    """`unknown config key 'shot'; did you mean shots?`: the close matches among the keys beside it."""
    from hydra import compose

    parent, _, leaf = full.rpartition(".")
    try:
        base = compose(config_name="config", overrides=[o for o in overrides if _is_group_choice(o)])
        node = OmegaConf.select(base, parent) if parent else base
    except Exception:  # the group choices themselves are wrong: no hint
        node = None
    keys = [str(k) for k in node] if isinstance(node, DictConfig) else []
    if not parent:
        keys += list(GROUPS)
    return f"unknown config key {full!r}{options.suggest(leaf, keys)} (see `qwen-eval --cfg job` for every key)"


def validate(argv: list[str]) -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    multirun = "-m" in argv or "--multirun" in argv
    try:
        combos = _expand_sweeps(_overrides(argv)) if multirun else [_overrides(argv)]
    except Exception as e:
        fail(f"bad override: {_hydra_error_line(e)}")
    for overrides in combos:
        for override in overrides:
            key, _, value = override.partition("=")
            if key in GROUPS and re.fullmatch(r"(?i)true|false|yes|no|on|off|[-+]?\d+(\.\d*)?", value.strip()):
                names = sorted(p.stem for p in (options._conf_dir() / key).glob("*.yaml"))
                fail(f"{key}={value}: {key} names a config, {key}=<name> (one of: {', '.join(names)}); "
                     f"an option of it is {key}.<option>=<value>")
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        for overrides in combos:
            try:
                cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
                OmegaConf.to_container(cfg, resolve=False)
            except (HydraException, OmegaConfBaseException, ValueError) as e:
                text = str(e.__cause__ if not str(e).strip() and e.__cause__ else e).strip()
                full = _unknown_key(text)
                fail(f"bad override: {_unknown_key_line(full, overrides) if full else _hydra_error_line(e)}")
            choices = cfg.hydra.runtime.choices
            try:
                options.check(cfg, choices.get("task"), choices.get("model"))
            except UserError as e:
                fail(str(e))
    GlobalHydra.instance().clear()


# ----------------------------------------------------------------------------------------------

def hydra_choices() -> dict[str, str]:
    """The config group choices of this Hydra job (task, model, ...); {} outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return dict(HydraConfig.get().runtime.choices)
    except ValueError:
        return {}


def run(cfg: DictConfig) -> dict[str, Any] | list | None:
    """The dispatcher: a suite (qwen_eval.suite) or one task (qwen_eval.evaluation)."""
    from qwen_eval import evaluation
    from qwen_eval.backends import build

    choices = hydra_choices()
    options.check(cfg, choices.get("task"), choices.get("model"))
    if cfg.get("suite"):
        from qwen_eval.suite import run_suite

        return run_suite(cfg)
    task = evaluation.make_task(cfg.task, cfg)
    loaded = evaluation.load_documents(cfg, task)
    cache = evaluation.open_cache(cfg)
    backend = build(OmegaConf.to_container(cfg.model, resolve=True), seed=int(cfg.seed))
    return evaluation.run_task(cfg, task, backend, cache, loaded=loaded)


@hydra.main(config_path="pkg://qwen_eval.conf", config_name="config", version_base="1.3")
def _hydra_entry(cfg: DictConfig) -> None:
    from qwen_eval.evaluation import multirun_job_dir

    job_dir = multirun_job_dir()
    try:
        run(cfg)
    except KeyboardInterrupt:
        fail("interrupted; finished requests are in the cache, rerun the same command to resume", 130)
    except SystemExit as e:  # a suite with a failed task exits 1
        if job_dir is None or e.code in (0, None):
            raise
        if not (job_dir / "suite.json").is_file():  # a suite's own record says which tasks failed
            _job_failed(job_dir, f"exited with status {e.code}", "exit", cfg)
    except UserError as e:
        if cfg.get("debug"):
            traceback.print_exc()
        if job_dir is None:
            fail(str(e))
        _job_failed(job_dir, str(e), "error", cfg)
    except Exception as e:
        if cfg.get("debug") and job_dir is None:
            raise
        if cfg.get("debug"):
            traceback.print_exc()
        if job_dir is None:
            fail(f"{type(e).__name__}: {e} (rerun with debug=true for the traceback)", 1)
        _job_failed(job_dir, f"{type(e).__name__}: {e}", type(e).__name__, cfg)


def _job_failed(job_dir: Path, message: str, kind: str, cfg: DictConfig) -> None:
    """One job of a multirun failed: say so on one line, record it in its folder, let the others run."""
    from qwen_eval import sweep

    line = " ".join(str(message).split())
    print(f"{PROG}: error: {line}", file=sys.stderr)
    if distributed.is_main():
        task = OmegaConf.select(cfg, "task.name", default=None)
        model = OmegaConf.select(cfg, "model.name", default=None)
        sweep.record_failure(job_dir, line, kind, None if task is None else str(task),
                             None if model is None else str(model))


def same_sweep_dir(argv: list[str]) -> list[str]:
    """Under torchrun every rank runs Hydra, and a multirun's sweep folder is named after the
    second each rank resolves it in; pin every rank to rank 0's folder."""
    multirun = "-m" in argv or "--multirun" in argv
    if distributed.world_size() <= 1 or not multirun or any(a.startswith("hydra.sweep.dir=") for a in argv):
        return argv
    sweep_dir = None
    if distributed.is_main():
        from hydra import compose, initialize_config_module
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name="config", overrides=_expand_sweeps(_overrides(argv), 1)[0],
                          return_hydra_config=True)
            sweep_dir = str(cfg.hydra.sweep.dir)
        GlobalHydra.instance().clear()
    sweep_dir = distributed.broadcast(sweep_dir)
    quoted = sweep_dir.replace("\\", "\\\\").replace("'", "\\'")
    return [*argv, f"hydra.sweep.dir='{quoted}'"]


def main() -> None:
    argv = sys.argv[1:]
    if any(a in HELP_FLAGS for a in argv):
        from qwen_eval.usage import help_text

        print(help_text(), end="")
        return
    if any(a in VERSION_FLAGS for a in argv):
        from qwen_eval.usage import version

        print(f"{PROG} {version()}")
        return
    try:
        try:
            distributed.init()  # before Hydra: every rank composes its own config
        except UserError as e:
            fail(str(e))
        register_plugin_tasks()
        if not any(a in _HYDRA_INFO_FLAGS or a.split("=")[0] in _HYDRA_INFO_FLAGS for a in argv):
            validate(argv)
            sys.argv[1:] = same_sweep_dir(argv)
        _hydra_entry()
    finally:
        distributed.shutdown()


if __name__ == "__main__":  # python -m qwen_eval.cli
    main()
