"""The Hydra configs (importable as `qwen_eval.conf`): config.yaml and the groups task/, model/,
suite/.

Importing the package (Hydra does, to read it) registers one node per built-in task in Hydra's
ConfigStore, `task_options/<name>`: the task's name and its `default_options()`, the one home of
a task's option defaults. `conf/task/<name>.yaml` selects that node in its defaults list and
explains the options in comments; a key it sets after `_self_` would override the default.
"""

from __future__ import annotations

TASK_OPTIONS_GROUP = "task_options"


def register_task_options() -> None:
    from hydra.core.config_store import ConfigStore

    from qwen_eval import registry

    store = ConfigStore.instance()
    for name in registry.BUILTIN_TASKS:
        try:
            options = registry.task_class(name).default_options()
        except Exception:  # a broken task must not break the others (selecting it fails then)
            continue
        store.store(group=TASK_OPTIONS_GROUP, name=name, node={"name": name, **options})


register_task_options()
