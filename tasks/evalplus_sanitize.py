"""EvalPlus's sanitizer (`evalplus.sanitize.sanitize`, release 0.3.1), written anew with tree-sitter.

    sanitize(code, entrypoint)   # what EvalPlus keeps of a model's code, byte for byte

Qwen2.5-Coder's instruct evaluation runs `python -m evalplus.sanitize` over every sample and reports
the scores of the sanitized code; this module gives the same text without importing evalplus
(tests/test_evalplus_sanitize.py checks it against evalplus on every recorded reply). The rules:

1. Extract: split the text at "\\n"; among all spans of at least two consecutive lines that
   `ast.parse` accepts, take the one with the most non-blank lines (the first such span, by start
   line then end line). If no span parses, or the text is one line, the first line.
2. Parse that span with tree-sitter and keep, of the top-level statements, the imports, the class
   definitions, the function definitions that contain a `return` statement (as EvalPlus's tree walk
   finds it, see `_walk`) and the assignments `name = ...`; a name already taken by an earlier kept
   definition is skipped. Decorated definitions, other statements and comments go.
3. With an entry point, keep only the definitions the entry point reaches through the identifiers
   they mention (imports are always kept). Output: the imports, then the definitions, in source
   order, one per line, stripped.
4. If that is empty, the extracted span of step 1.

Where EvalPlus raises instead (a lone surrogate, which neither `ast.parse` nor UTF-8 accepts), a span
holding one counts as not parsing, and a first line holding one is returned as it is.
"""

from __future__ import annotations

import ast
import functools
import warnings
from typing import Iterator

import tree_sitter_python
from tree_sitter import Language, Node, Parser

IMPORTS = ("import_statement", "import_from_statement")
CLASS = "class_definition"
FUNCTION = "function_definition"
ASSIGNMENT_STATEMENT = "expression_statement"
ASSIGNMENT = "assignment"
IDENTIFIER = "identifier"
RETURN = "return_statement"


@functools.lru_cache(maxsize=1)
def _parser() -> Parser:
    return Parser(Language(tree_sitter_python.language()))


def parses(code: str) -> bool:
    """Whether Python's own parser accepts `code` (EvalPlus's syntax check)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes and the like warn; they still parse
            ast.parse(code)
        return True
    except (SyntaxError, MemoryError, ValueError):  # ValueError: a lone surrogate (EvalPlus raises)
        return False


def extract_code(text: str) -> str:
    """Step 1: the parsable span of two or more lines with the most non-blank lines.

    EvalPlus tries every span (start i, end j > i) in order and keeps the first with a new maximum.
    For one start that is the smallest parsable end with that start's largest parsable count, kept
    when it beats the maximum so far; so this scans each start's ends from the last down and
    stops as soon as no end can beat the maximum (the same answer with far fewer parses)."""
    lines = text.split("\n")
    n = len(lines)
    blank = [not line.strip() for line in lines]
    # nonblank[k] = non-blank lines among lines[:k]
    nonblank = [0] * (n + 1)
    for k, is_blank in enumerate(blank):
        nonblank[k + 1] = nonblank[k] + (not is_blank)
    best, best_span = 0, (0, 0)
    for i in range(n):
        if nonblank[n] - nonblank[i] <= best:
            continue  # even the span to the end cannot beat the maximum
        found = None  # (count, end) of the smallest parsable end with this start's largest count
        for j in range(n - 1, i, -1):
            count = nonblank[j + 1] - nonblank[i]
            if count <= best or (found is not None and count < found[0]):
                break
            if parses("\n".join(lines[i:j + 1])):
                found = (count, j)
        if found is not None:
            best, best_span = found[0], (i, found[1])
    return "\n".join(lines[best_span[0]:best_span[1] + 1])


def _name(node: Node) -> str | None:
    """The first identifier among a node's children (a definition's name, an assignment's target)."""
    for child in node.children:
        if child.type == IDENTIFIER:
            return child.text.decode("utf-8")
    return None


def _walk(node: Node) -> Iterator[Node]:
    """The nodes EvalPlus's `traverse_tree` visits: pre-order from `node`, but its counter goes up at
    every leaf and down at every step back to a parent, and the walk ends when a step back finds
    it at zero, so it can stop before the end of the subtree. The same moves, the same stop."""
    cursor = node.walk()
    counter = 0
    entering = True
    while True:
        if entering:
            yield cursor.node
            if not cursor.goto_first_child():
                counter += 1
                entering = False
        elif cursor.goto_next_sibling():
            entering = True
        elif not cursor.goto_parent() or counter == 0:
            return
        else:
            counter -= 1


def _has_return(node: Node) -> bool:
    return any(n.type == RETURN for n in _walk(node))


def _identifiers(node: Node) -> set[str]:
    """Every identifier below `node` (not `node` itself)."""
    names: set[str] = set()
    stack = list(node.children)
    while stack:
        child = stack.pop()
        if child.type == IDENTIFIER:
            names.add(child.text.decode("utf-8"))
        else:
            stack.extend(child.children)
    return names


def _reachable(entrypoint: str, uses: dict[str | None, set[str]]) -> set[str]:
    seen, todo = {entrypoint}, [entrypoint]
    while todo:
        for name in uses.get(todo.pop(), ()):
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def kept_definitions(code: str, entrypoint: str | None = None) -> str:
    """Steps 2 and 3 on already extracted code: the imports and the reachable definitions."""
    source = code.encode("utf-8")
    root = _parser().parse(source).root_node
    imports: list[Node] = []
    definitions: list[tuple[str | None, Node]] = []
    taken: set[str | None] = set()
    for child in root.children:
        if child.type in IMPORTS:
            imports.append(child)
            continue
        if child.type == CLASS:
            node = child
        elif child.type == FUNCTION:
            node = child
            if _name(node) in taken or not _has_return(node):
                continue
        elif child.type == ASSIGNMENT_STATEMENT and child.children[0].type == ASSIGNMENT:
            node = child.children[0]  # the assignment, without a trailing comment or `;`
        else:
            continue
        name = _name(node)
        if name not in taken:
            definitions.append((name, node))
            taken.add(name)
    if entrypoint:
        keep = _reachable(entrypoint, {name: _identifiers(node) for name, node in definitions})
        definitions = [(name, node) for name, node in definitions if name in keep]
    pieces = [source[node.start_byte:node.end_byte] for node in imports]
    pieces += [source[node.start_byte:node.end_byte] for _, node in definitions]
    return b"\n".join(pieces).decode("utf-8")


@functools.lru_cache(maxsize=4096)  # a task sanitizes each reply for its checks and again for its record
def sanitize(code: str, entrypoint: str | None = None) -> str:
    """EvalPlus 0.3.1's `sanitize(code, entrypoint)`: see the module docstring."""
    extracted = extract_code(code)
    try:
        kept = kept_definitions(extracted, entrypoint).strip()
    except UnicodeEncodeError:  # a lone surrogate: EvalPlus raises here
        kept = ""
    return kept or extracted
