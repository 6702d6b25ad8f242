"""The package's layering, checked from the source (ast, nothing imported).

Every module of the installed package is walked under its import name (pyproject's package-dir:
qwen_eval/ is `qwen_eval`, tasks/ is `qwen_eval.tasks`, model/ is `qwen_eval.model`, conf/ is
`qwen_eval.conf`). An import of `qwen_eval.x.y` (or `from qwen_eval.x import y` where y is a module)
is an edge to that module.

- No import cycle among the package's modules, counting every import: module level and the
  imports inside functions alike (a lazy import still means the two modules depend on each other).
- No module under model/ imports qwen_eval.backends (the model sits below the backends).
- The NEVER rules: a run flows conf -> task -> requests -> backend -> records -> tables, so tasks
  see neither a backend nor the model, tasks and the benchmark leaderboard never import each other
  (what both need of a table is qwen_eval/leaderboard.py, below both), and nothing imports the
  development tools of qwen_eval/tools.
- No hook is looked up with `getattr(obj, "<hook>"...)`: hooks are declared methods of the
  Task and Backend base classes (qwen_eval/task.py, qwen_eval/backends/base.py).

The layering rule itself is written down in docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"qwen_eval": REPO / "qwen_eval", "qwen_eval.tasks": REPO / "tasks", "qwen_eval.model": REPO / "model",
         "qwen_eval.conf": REPO / "conf"}
# the hooks of qwen_eval/task.py and qwen_eval/backends/base.py
HOOKS = ("score_many", "run_info", "write_artifacts", "bind_documents", "uses_chat", "chat_template",
         "checkpoint_format", "special_tokens", "tokenizer", "engine")


def package_modules() -> dict[str, Path]:
    """import name -> source file, for every module of the package."""
    modules: dict[str, Path] = {}
    for prefix, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            modules[".".join([prefix, *parts])] = path
    return modules


MODULES = package_modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _target(name: str) -> str | None:
    """The package module an imported dotted name refers to (its longest known prefix)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def imports_of(module: str) -> set[str]:
    """The package modules `module` imports, anywhere in its source."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            names = [f"{base}.{a.name}" for a in node.names] or [base]
        for name in names:
            target = _target(name)
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_the_whole_package():
    assert {"qwen_eval.cli", "qwen_eval.tasks.mmlu", "qwen_eval.model.engine", "qwen_eval.backends.hf"} <= set(MODULES)
    assert "qwen_eval.model.model" in GRAPH["qwen_eval.model.engine"]


def test_no_import_cycle_among_the_package_modules():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("qwen_eval.model")))
def test_the_model_never_imports_the_backends(module):
    assert not [t for t in GRAPH[module] if t == "qwen_eval.backends" or t.startswith("qwen_eval.backends.")]


# (modules whose name starts with this, must never import a module starting with this): the
# importer's own subpackage excepted (qwen_eval.tools may import qwen_eval.tools)
NEVER = (
    ("qwen_eval.tasks", "qwen_eval.backends"),
    ("qwen_eval.tasks", "qwen_eval.model"),
    ("qwen_eval.tasks", "qwen_eval.tables"),
    ("qwen_eval.tasks", "qwen_eval.table_cli"),
    ("qwen_eval.tables", "qwen_eval.tasks"),
    ("qwen_eval.leaderboard", "qwen_eval.tables"),
    ("qwen_eval.leaderboard", "qwen_eval.tasks"),
    ("qwen_eval", "qwen_eval.tools"),
)


def _starts(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("importer, imported", NEVER, ids=[f"{a} -/-> {b}" for a, b in NEVER])
def test_never(importer, imported):
    found = sorted(f"{m} -> {t}" for m in MODULES if _starts(m, importer) and not _starts(m, imported)
                   for t in GRAPH[m] if _starts(t, imported))
    assert found == []


def test_the_never_rules_see_an_import():
    assert "qwen_eval.tasks.scoring.sandbox" in GRAPH["qwen_eval.tasks.code_eval"]
    assert "qwen_eval.tasks.arxiv_ppl_table" in GRAPH["qwen_eval.table_cli"]


def _getattr_hooks(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{path.name}:{node.lineno} getattr(..., {node.args[1].value!r})" for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
            and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value in HOOKS]


def test_hooks_are_declared_methods_not_getattr_lookups():
    assert [hit for path in MODULES.values() for hit in _getattr_hooks(path)] == []


def test_a_minimal_task_and_backend_get_every_hooks_default():
    from qwen_eval.backends import Backend
    from qwen_eval.requests import GenerateResult
    from qwen_eval.task import Sample, Task

    class Minimal(Task):
        name = "minimal"

        def load(self, data, limit=None):
            return []

        def requests(self, doc):
            return []

        def score(self, doc, responses):
            return Sample(doc, "", None, responses[0].texts[0], None, 1.0)

        def aggregate(self, samples):
            return {}

    task = Minimal()
    assert task.uses_chat is False and task.run_info() is None and task.write_artifacts(REPO, {}) == []
    assert [s.response for s in task.score_many(["a", "b"], [[GenerateResult(("x",))], [GenerateResult(("y",))]])] == ["x", "y"]

    class Bare(Backend):
        name, fingerprint, max_length = "bare", "bare-fp", 8

    bare = Bare()
    assert bare.bind_documents({"d": []}) is None and bare.chat_template is None and bare.checkpoint_format is None
    assert bare.special_tokens() == {"bos_token": None, "eos_token": None} and bare.tokens_processed == 0
    with pytest.raises(Exception, match="backend bare cannot answer Generate requests"):
        bare.generate([])
