"""How Choice and Rolling requests become token rows — shared by the local backends (the bundled
engine and transformers) so both truncate, window and score exactly alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from qwen_eval.requests import Choice, ChoiceResult


@dataclass
class ScoringRow:
    """One forward's input and which next-token distributions are read from it.

    positions[i] is the index in `tokens` whose output distribution scores `targets[i]`.
    """

    tokens: list[int]
    positions: list[int]
    targets: list[int]


@dataclass
class ChoicePlan:
    """Rows for one Choice request: either one row whose last position scores every
    single-token continuation (`single`), or one row per continuation (None: empty continuation)."""

    single: bool
    rows: list[int | None]  # indices into the shared row list


def truncate_context(ids: list[int], max_length: int) -> list[int]:
    """Qwen's eval scripts: a prompt longer than the limit keeps its last (limit - 1) tokens."""
    return ids[-(max_length - 1):] if len(ids) > max_length else ids


def plan_choices(requests: Sequence[Choice], encode: Callable[[str], list[int]], max_length: int
                 ) -> tuple[list[ScoringRow], list[ChoicePlan]]:
    """Continuations are encoded on their own (" A" -> one token), as Qwen's MC scripts do."""
    rows: list[ScoringRow] = []
    plans: list[ChoicePlan] = []
    for r in requests:
        ctx = encode(r.context)
        conts = [encode(c) for c in r.continuations]
        if conts and all(len(c) == 1 for c in conts):
            ctx = truncate_context(ctx, max_length)
            plans.append(ChoicePlan(True, [len(rows)]))
            rows.append(ScoringRow(ctx, [len(ctx) - 1] * len(conts), [c[0] for c in conts]))
            continue
        indices: list[int | None] = []
        for c in conts:
            if not c:
                indices.append(None)
                continue
            inputs = (ctx + c)[-(max_length + 1):][:-1]  # keep every continuation token
            first = len(inputs) - len(c) + 1
            indices.append(len(rows))
            rows.append(ScoringRow(inputs, list(range(first - 1, len(inputs))), list(c)))
        plans.append(ChoicePlan(False, indices))
    return rows, plans


def choice_results(plans: Sequence[ChoicePlan], row_scores: Sequence[tuple[list[float], list[bool]]]
                   ) -> list[ChoiceResult]:
    """Assemble answers from each row's per-target (log-probability, is-argmax) lists."""
    results = []
    for plan in plans:
        if plan.single:
            lps, greedy = row_scores[plan.rows[0]]
            results.append(ChoiceResult(tuple(lps), tuple(greedy)))
            continue
        lps, greedy = [], []
        for row in plan.rows:
            if row is None:
                lps.append(0.0)
                greedy.append(True)
            else:
                lps.append(sum(row_scores[row][0]))
                greedy.append(all(row_scores[row][1]))
        results.append(ChoiceResult(tuple(lps), tuple(greedy)))
    return results


def rolling_tokens(ids: list[int], first_tokens: int | None) -> list[int]:
    """The tokens of a Rolling request's text that are scored: its first `first_tokens` (None: all),
    none when the text is shorter than that (the request then scores nothing)."""
    if first_tokens is None:
        return ids
    return ids[:first_tokens] if len(ids) >= first_tokens else []


def rolling_windows(n_tokens: int, window: int, stride: int | None) -> list[tuple[int, int, int]]:
    """Windows (start, end, first_target) covering tokens 1 .. n-1 exactly once.

    Each window feeds tokens[start:end] (at most `window` tokens) in one forward and scores
    tokens[first_target:end]; token 0 has no context and is never scored. The first window scores
    everything it can; later ones advance by `stride` new tokens (default window - 1, i.e.
    disjoint) with the preceding tokens as context.
    """
    stride = min(stride or window - 1, window - 1)
    windows, pos = [], 1
    while pos < n_tokens:
        end = min(n_tokens, pos + (window - 1 if pos == 1 else stride))
        start = max(0, end - window)
        windows.append((start, end, pos))
        pos = end
    return windows
