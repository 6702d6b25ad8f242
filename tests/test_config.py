"""The Hydra configs: every YAML under conf/ composes, each task's node is its class's defaults
(the one home of them), and a bad option is one clear error before anything loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from qwen_eval import options, registry
from qwen_eval.errors import UserError
from qwen_eval.tasks.scoring.confinement import Limits
from qwen_eval.tasks.scoring.sandbox import SandboxOptions

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def composer():
    with initialize_config_module(config_module="qwen_eval.conf", version_base="1.3"):
        yield lambda *overrides: compose(config_name="config", overrides=list(overrides))


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_builtin_task_has_a_yaml_and_every_yaml_a_task():
    assert _names("task") == sorted(registry.BUILTIN_TASKS)


@pytest.mark.parametrize("name", _names("task"))
def test_a_task_yaml_composes_into_its_class_defaults(composer, name):
    cfg = OmegaConf.to_container(composer(f"task={name}").task, resolve=True)
    assert cfg == {"name": name, **registry.task_class(name).default_options()}
    assert list(cfg) == ["name", *registry.task_class(name).default_options()]  # results.json keeps the order
    assert options.task_defaults(name) == cfg
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "task" / f"{name}.yaml"))
    assert set(raw) == {"defaults"}, "a task YAML selects its defaults node; it defines no value itself"


@pytest.mark.parametrize("name", _names("model"))
def test_a_model_yaml_composes(composer, name):
    cfg = OmegaConf.to_container(composer(f"model={name}").model, resolve=True)
    from qwen_eval.backends import BACKENDS

    assert cfg["backend"] in BACKENDS
    assert options.model_defaults(name) == cfg


@pytest.mark.parametrize("name", _names("suite"))
def test_a_suite_yaml_composes_and_names_known_tasks(composer, name):
    suite = OmegaConf.to_container(composer(f"suite={name}").suite, resolve=True)
    assert {entry["task"] for entry in suite["tasks"]} <= set(registry.BUILTIN_TASKS)


def test_the_sandbox_block_is_defined_once(composer):
    block = SandboxOptions().as_dict()
    assert (block["timeout"], block["memory_mb"]) == (Limits().timeout, Limits().memory_mb)
    for task in ("humaneval", "mbpp"):
        assert OmegaConf.to_container(composer(f"task={task}").task.sandbox) == block


@pytest.mark.parametrize("overrides, message", [
    (["batch_size=0"], "batch_size=0 must be a whole number >= 1 (requests per backend call)"),
    (["batch_size=abc"], "batch_size='abc' must be a whole number >= 1 (requests per backend call)"),
    (["task=gsm8k", "task.max_new_tokens=x"], "task.max_new_tokens='x' must be a whole number (the default is 512)"),
    (["task=humaneval", "task.sandbox.timeout=soon"], "task.sandbox.timeout='soon' must be a whole number (the default is 10)"),
    (["task=mbpp", "task.sandbox.memory_mb=0"], "task.sandbox.memory_mb=0 must be a whole number >= 1"),
    # options whose default is null (the code's default) are still counts when set
    (["model=qwen", "model.max_batch_tokens=abc"],
     "model.max_batch_tokens='abc' must be a whole number >= 1 (or null for the default)"),
    (["model=hf", "model.max_length=0"], "model.max_length=0 must be a whole number >= 1 (or null for the default)"),
    (["model=replay", "model.max_new_tokens=many"],
     "model.max_new_tokens='many' must be a whole number >= 1 (or null for the default)"),
])
def test_bad_options_are_one_clear_error_at_composition(composer, overrides, message):
    with pytest.raises(UserError) as error:
        options.check(composer(*overrides))
    assert str(error.value) == message


BUNDLED = [n for n in _names("model") if "/model_base/bundled@_here_" in (CONF / "model" / f"{n}.yaml").read_text()]


def test_the_bundled_presets_share_one_base_and_restate_none_of_it():
    assert set(BUNDLED) == {"tiny", "qwen", "qwen-7b", "qwen-14b"}
    base = OmegaConf.to_container(OmegaConf.load(CONF / "model_base" / "bundled.yaml"))
    for name in BUNDLED:
        own = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{name}.yaml"))
        own.pop("defaults")
        assert [k for k, v in own.items() if k in base and base[k] == v] == [], name


def test_no_model_preset_restates_what_its_bases_define():
    """conf/model_base/every_backend.yaml holds what every backend has (max_new_tokens, the Ray
    replica options), bundled.yaml
    what the bundled engine's presets share; a preset sets only keys its bases lack or changes."""
    def keys(path: Path) -> dict:
        own = OmegaConf.to_container(OmegaConf.load(path))
        own.pop("defaults", None)
        return own

    every = keys(CONF / "model_base" / "every_backend.yaml")
    assert list(every) == ["max_new_tokens", "replicas", "ray_address", "replica_gpus", "replica_cpus",
                           "replica_chunk", "replica_restarts"]
    assert not set(every) & set(keys(CONF / "model_base" / "bundled.yaml"))
    for name in _names("model"):
        text = (CONF / "model" / f"{name}.yaml").read_text()
        assert "/model_base/every_backend@_here_" in text or "/model_base/bundled@_here_" in text, name
        assert not set(every) & set(keys(CONF / "model" / f"{name}.yaml")) or name == "tiny", name


def test_the_engine_defaults_live_in_the_engine(composer):
    """The bundled engine's batch budget is null in the YAML: Engine's own default, one number."""
    from qwen_eval.model.engine import DEFAULT_MAX_BATCH_TOKENS, Engine
    from qwen_eval.requests import DEFAULT_MAX_LENGTH

    assert composer("model=qwen").model.max_batch_tokens is None
    assert composer("model=hf").model.max_length is None
    defaults = Engine.__init__.__kwdefaults__
    assert (defaults["max_batch_tokens"], defaults["max_length"]) == (DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_LENGTH)


def test_each_tasks_default_shots_are_the_model_cards(composer):
    from qwen_eval.reference import load_model_card

    card = load_model_card().shots
    suite = OmegaConf.to_container(composer("suite=model_card").suite)
    assert [entry["task"] for entry in suite["tasks"]] == ["mmlu", "ceval", "gsm8k", "math", "humaneval", "mbpp",
                                                           "bbh", "cmmlu"]
    for entry in suite["tasks"]:
        cls = registry.task_class(entry["task"])
        assert "shots" not in entry and cls.default_shots == card[cls.model_card_column], entry["task"]
