"""Third-party tasks register through the `qwen_eval.tasks` entry-point group."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from cli_helpers import read_results, read_samples, run_cli

TOY_TASK = '''
from qwen_eval.requests import Generate
from qwen_eval.task import Sample, Task
from qwen_eval.tasks.scoring.metrics import add_metric, mean_stderr
from dataclasses import dataclass


@dataclass(frozen=True)
class ToyDoc:
    doc_id: str
    question: str
    answer: str


class EchoTask(Task):
    name = "echo"
    headline = "acc"

    @classmethod
    def default_options(cls):
        return {"suffix": " =", "max_new_tokens": 8}

    def load(self, data, limit=None):
        docs = [ToyDoc(f"q{i}", f"{i}+{i}", str(2 * i)) for i in range(5)]
        return docs[:limit] if limit else docs

    def requests(self, doc):
        return [Generate(doc.question + self.options["suffix"], stop=("\\n",),
                         max_new_tokens=self.options["max_new_tokens"])]

    def score(self, doc, responses):
        text = responses[0].texts[0].strip()
        return Sample(doc.doc_id, doc.question + self.options["suffix"], doc.answer, responses[0].texts[0], text,
                      float(text == doc.answer))

    def aggregate(self, samples):
        metrics = {}
        add_metric(metrics, "acc", mean_stderr([s.score for s in samples]))
        return metrics
'''


@pytest.fixture()
def plugin_path(tmp_path: Path) -> Path:
    """An installed distribution `toy-plugin` declaring the entry point, on a sys.path folder."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "toy_plugin.py").write_text(textwrap.dedent(TOY_TASK))
    info = site / "toy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[qwen_eval.tasks]\necho = toy_plugin:EchoTask\n")
    return site


def test_registry_finds_the_entry_point(plugin_path, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_path))
    from qwen_eval import registry

    assert registry.plugin_tasks()["echo"] == "toy_plugin:EchoTask"
    assert "echo" in registry.task_names()
    assert registry.task_class("echo").__name__ == "EchoTask"


@pytest.mark.slow
def test_cli_runs_a_plugin_task_with_its_default_options(plugin_path, tmp_path):
    completions = tmp_path / "completions.jsonl"
    completions.write_text("".join(json.dumps({"doc_id": f"q{i}", "completion": f" {2 * i}\nignored"}) + "\n"
                                   for i in range(5)))
    env = {"PYTHONPATH": f"{plugin_path}{':' + sys.path[0] if sys.path[0] else ''}"}
    out = tmp_path / "run"
    proc = run_cli("task=echo", "model=replay", f"model.path={completions}", "task.suffix=' equals'",
                   f"output_dir={out}", "progress=false", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    results = read_results(out)
    assert results["task"] == "echo" and results["metrics"]["acc"] == 1.0
    assert results["task_config"]["options"] == {"suffix": " equals", "max_new_tokens": 8}
    samples = read_samples(out)
    assert [s["prompt"] for s in samples] == [f"{i}+{i} equals" for i in range(5)]
    assert all(s["response"] == f" {2 * i}" for i, s in enumerate(samples))  # cut at the stop string
