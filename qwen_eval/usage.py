"""`qwen-eval --help` and `--version`: qwen-eval's own words (Hydra's help is `--hydra-help`)."""

from __future__ import annotations

from importlib import metadata, resources
from pathlib import Path

from qwen_eval import __version__, registry

EXAMPLES = (
    ("qwen-eval task=mmlu shots=5 model=tiny data.source=sample", "the embedded model and data: no GPU, no download"),
    ("qwen-eval task=gsm8k model=qwen-14b model.path=/ckpt/Qwen-14B data.path=/data/gsm8k", "a real evaluation"),
    ("qwen-eval -m task=mmlu,gsm8k model=tiny data.source=sample limit=2", "a sweep: one run per combination"),
)

COMMON_KEYS = (
    ("task=NAME", "the benchmark; its options as task.<option>=VALUE"),
    ("model=NAME", "the backend preset; model.path=DIR, model.dtype, model.device, model.max_new_tokens"),
    ("shots=N", "few-shot examples (default: the model card's count for the task)"),
    ("limit=N", "at most N documents (per subject for MMLU, C-Eval, CMMLU, BBH); for quick checks"),
    ("data.source=SRC", "auto | local (data.path=DIR in the upstream layout) | hub | sample (shipped)"),
    ("batch_size=N", "requests per backend call (default 16)"),
    ("output_dir=DIR", "the run folder (default: results/runs/<task>-<shots>shot-<model>-<time>)"),
    ("cache_dir=DIR", "the answer cache (default $QWEN_EVAL_CACHE or ~/.cache/qwen-eval); null disables it"),
    ("suite=model_card", "the model card's eight benchmarks against one model, one table"),
    ("progress=false", "no progress bar; debug=true shows tracebacks"),
)


def version() -> str:
    try:
        return metadata.version("qwen-eval")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return __version__


def _conf_names(group: str) -> list[str]:
    return sorted(p.stem for p in Path(str(resources.files("qwen_eval.conf")), group).glob("*.yaml"))


def help_text() -> str:
    tasks = sorted(set(_conf_names("task")) | set(registry.plugin_tasks()))
    width = max(len(k) for k, _ in COMMON_KEYS) + 2
    keys = "\n".join(f"  {key:<{width}}{meaning}" for key, meaning in COMMON_KEYS)
    examples = "\n".join(f"  {command}\n      {what}" for command, what in EXAMPLES)
    return f"""\
qwen-eval {version()}: evaluate a language model on the Qwen-14B model card's benchmarks and
show its scores beside the model card's numbers.

usage: qwen-eval [KEY=VALUE ...]          one run
       qwen-eval -m KEY=A,B [KEY=VALUE ...]  a sweep (one run per combination; hydra/launcher=submitit_slurm for Slurm)

tasks:  {', '.join(tasks)}
models: {', '.join(_conf_names('model'))}

common keys:
{keys}

examples:
{examples}

results: a run writes results.json, samples.jsonl and table.md to its run folder, and prints one
  result line (the headline metric and the folder) on stdout; progress and logs go to stderr.
  A sweep writes results/runs/multirun-<time>/<n>-<task>-<model>/ per run, then a summary and
  table.md over all of them. qwen-eval-table turns any run folders into a leaderboard.

more: qwen-eval --cfg job (every key with its value), qwen-eval --hydra-help (Hydra's options),
  README.md.
"""
