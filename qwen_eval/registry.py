"""Finding task classes: the built-in ones in `qwen_eval.tasks`, third-party ones by entry point.

A third-party package registers a task with
    [project.entry-points."qwen_eval.tasks"]
    mytask = "my_package.my_module:MyTask"
and `qwen-eval task=mytask` finds it (its config comes from `MyTask.default_options()`).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from qwen_eval.errors import UserError
from qwen_eval.task import Task

ENTRY_POINT_GROUP = "qwen_eval.tasks"

# name -> "module:Class" inside qwen_eval.tasks; imported lazily so one broken task never
# stops the others from running.
BUILTIN_TASKS: dict[str, str] = {
    "mmlu": "qwen_eval.tasks.mmlu:MMLU",
    "ceval": "qwen_eval.tasks.ceval:CEval",
    "cmmlu": "qwen_eval.tasks.cmmlu:CMMLU",
    "gsm8k": "qwen_eval.tasks.gsm8k:GSM8K",
    "math": "qwen_eval.tasks.hendrycks_math:MATH",
    "bbh": "qwen_eval.tasks.bbh:BBH",
    "humaneval": "qwen_eval.tasks.humaneval:HumanEval",
    "mbpp": "qwen_eval.tasks.mbpp:MBPP",
    "mbppplus": "qwen_eval.tasks.mbppplus:MbppPlus",
    "arxiv_ppl": "qwen_eval.tasks.arxiv_ppl:ArxivPerplexity",
}


def plugin_tasks() -> dict[str, str]:
    """Entry-point tasks: name -> "module:Class"."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def task_names() -> list[str]:
    return sorted(set(BUILTIN_TASKS) | set(plugin_tasks()))


def _import(target: str) -> type[Task]:
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise UserError(f"task entry point {target!r} is not a qwen_eval.task.Task subclass")
    return cls


def task_class(name: str) -> type[Task]:
    target = BUILTIN_TASKS.get(name) or plugin_tasks().get(name)
    if target is None:
        raise UserError(f"unknown task {name!r}; valid tasks: {', '.join(task_names())}")
    return _import(target)
