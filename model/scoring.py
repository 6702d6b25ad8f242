"""The scoring path: Choice and Rolling requests, and any token rows, as log-probabilities.

  * one forward per context when every continuation is a single token (Qwen's MC protocol):
    only the scored positions go through lm_head, in one call for the whole batch;
  * rows sharing a prompt prefix reuse it (model/batching.py), in batches within the token
    budget, split where padding would dominate;
  * lm_head runs over LOSS_CHUNK_ELEMENTS logits at a time and the fp32 log-softmax over
    SOFTMAX_ROWS rows of them (`log_softmax_chunks`), so an [L, V] fp32 tensor never exists.

A row's numbers do not depend on its batch, order or prefix reuse beyond float rounding: every row
uses its own true positions and NTK alpha.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor

from qwen_eval.model.batching import Batcher, prefix_groups, right_padded
from qwen_eval.model.model import LongContextOptions, Qwen, QwenConfig, resolve_window_attn
from qwen_eval.model.token_plans import ScoringRow, choice_results, plan_choices, rolling_tokens, rolling_windows
from qwen_eval.requests import Choice, ChoiceResult, LongContext, Rolling, RollingResult

LOSS_CHUNK_ELEMENTS = 1 << 26  # logits elements per lm_head call when scoring (each call reads its whole weight)
SOFTMAX_ROWS = 16  # rows of fp32 log-probabilities materialised at once (16 x 152K vocabulary = 9.3 MiB)

Alternatives = list[tuple[int, float]]  # (token id, log-probability), most likely first


def long_context_options(lc: LongContext | None, cfg: QwenConfig) -> LongContextOptions | None:
    """A request's long-context switches for this model, its windows resolved (resolve_window_attn)."""
    if lc is None:
        return None
    windows = resolve_window_attn(lc.window_attn, cfg.num_layers, cfg.seq_length, option="window_attn")
    return LongContextOptions(use_dynamic_ntk=lc.use_dynamic_ntk, use_logn_attn=lc.use_logn_attn,
                              window_attn=windows or False)


def log_softmax_rows(logits: Tensor) -> Iterator[tuple[int, Tensor]]:
    """(first row, fp32 log-probabilities [n, V]) of `logits` [N, V], SOFTMAX_ROWS rows at a time.

    The fp32 copy and the log-softmax's output are a scoring step's largest tensors: 2 x 256 MiB
    for a 441-row chunk of a 152K vocabulary (a perplexity window), 2 x 37 MiB for 64 MMLU
    questions. Each row is normalised on its own, so the blocks give the whole call's numbers."""
    for r in range(0, logits.shape[0], SOFTMAX_ROWS):
        yield r, torch.log_softmax(logits[r:r + SOFTMAX_ROWS].float(), dim=-1)


def log_softmax_chunks(model: Qwen, hidden: Tensor) -> Iterator[tuple[int, int, Tensor]]:
    """(lm_head chunk, first row, fp32 log-probabilities [n, V]) over final hidden states [N, D].

    One lm_head call per chunk of positions (a call per row would read the whole [V, D] weight
    for a handful of positions; a call over all of them would hold [N, V] logits), each chunk's
    log-softmax over SOFTMAX_ROWS rows at a time. The chunk is the row its lm_head call starts at."""
    chunk = max(1, LOSS_CHUNK_ELEMENTS // model.config.vocab_size)
    for s in range(0, hidden.shape[0], chunk):
        for r, logprobs in log_softmax_rows(model.logits(hidden[s:s + chunk])):
            yield s, s + r, logprobs


@dataclass(eq=False)
class Scorer:
    """Log-probabilities of targets at positions of token rows, from one forward per batch."""

    model: Qwen
    tokenizer: Any
    batcher: Batcher
    max_length: int  # a Choice context is truncated to it; a Rolling window spans at most it by default

    @property
    def device(self) -> torch.device:
        return self.batcher.device

    @torch.inference_mode()
    def choice(self, requests: Sequence[Choice]) -> list[ChoiceResult]:
        rows, plans = plan_choices(requests, self.tokenizer.encode, self.max_length)
        return choice_results(plans, self.score_rows(rows))

    @torch.inference_mode()
    def rolling(self, requests: Sequence[Rolling]) -> list[RollingResult]:
        results = []
        for r in requests:
            text = self.tokenizer.encode(r.text)
            ids = rolling_tokens(text, r.first_tokens)
            options = long_context_options(r.long_context, self.model.config)
            loglik, scored = 0.0, 0
            for start, end, first in rolling_windows(len(ids), r.max_length or self.max_length, r.stride):
                loglik += self.window_loglik(ids[start:end], first - start, options)
                scored += end - first
            results.append(RollingResult(loglik, scored, len(text)))
        return results

    def score_rows(self, rows: list[ScoringRow], options: LongContextOptions | None = None
                   ) -> list[tuple[list[float], list[bool]]]:
        """Per row: log p(target | tokens up to its position), and whether it is the argmax."""
        return [(logprobs, best) for logprobs, best, _ in self._score(rows, options)]

    @torch.inference_mode()
    def next_token_scores(self, rows: Sequence[Sequence[int]], top_k: int, vocab: int
                          ) -> list[list[tuple[float, Alternatives]]]:
        """For each row and each position p >= 1: (log p(row[p] | row[:p]), the top_k (id, logprob)
        among the first `vocab` ids, most likely first)."""
        scored = [i for i, row in enumerate(rows) if len(row) > 1]
        plans = [ScoringRow(list(rows[i]), list(range(len(rows[i]) - 1)), list(rows[i][1:])) for i in scored]
        out: list[list[tuple[float, Alternatives]]] = [[] for _ in rows]
        for i, (logprobs, _, alternatives) in zip(scored, self._score(plans, None, top_k, vocab)):
            out[i] = list(zip(logprobs, alternatives))
        return out

    def _score(self, rows: list[ScoringRow], options: LongContextOptions | None, top_k: int = 0,
               vocab: int | None = None) -> list[tuple[list[float], list[bool], list[Alternatives]]]:
        """Per row: each target's log-probability, whether it is the argmax, and the top_k
        alternatives at its position (empty lists without top_k)."""
        if not rows:
            return []
        wanted = [sorted(set(r.positions)) for r in rows]
        hidden = torch.cat(self.hidden([r.tokens for r in rows], wanted, options))
        # every (row, position, target) as (index into `hidden`, target token)
        pair_index, pair_target, offset = [], [], 0
        for row, w in zip(rows, wanted):
            at = {p: offset + i for i, p in enumerate(w)}
            pair_index += [at[p] for p in row.positions]
            pair_target += row.targets
            offset += len(w)
        index = torch.tensor(pair_index, device=hidden.device)
        target = torch.tensor(pair_target, device=hidden.device)
        logprob = torch.empty(len(pair_index), dtype=torch.float32, device=hidden.device)
        is_best = torch.empty(len(pair_index), dtype=torch.bool, device=hidden.device)
        top_logprob = torch.empty(len(pair_index), top_k, dtype=torch.float32, device=hidden.device)
        top_id = torch.empty(len(pair_index), top_k, dtype=torch.long, device=hidden.device)
        # one lm_head over all rows' positions, in chunks that bound the fp32 logits
        for _, first, logprobs in log_softmax_chunks(self.model, hidden):
            mine = ((index >= first) & (index < first + logprobs.shape[0])).nonzero()[:, 0]
            local = index[mine] - first
            logprob[mine] = logprobs[local, target[mine]]
            is_best[mine] = logprobs.argmax(-1)[local] == target[mine]
            if top_k:
                top_logprob[mine], top_id[mine] = logprobs[local, :vocab].topk(top_k, dim=-1)
        logprob_list, best_list = logprob.tolist(), is_best.tolist()
        top_list = [list(zip(i, v)) for i, v in zip(top_id.tolist(), top_logprob.tolist())]
        scores, k = [], 0
        for row in rows:
            n = len(row.positions)
            scores.append((logprob_list[k:k + n], best_list[k:k + n], top_list[k:k + n]))
            k += n
        return scores

    def hidden(self, rows: list[list[int]], wanted: list[list[int]], options: LongContextOptions | None
               ) -> list[Tensor]:
        """Final hidden states [len(wanted[i]), D] of every token row at its wanted positions."""
        out: list[Tensor | None] = [None] * len(rows)
        alphas = self.model.row_alphas([len(r) for r in rows], options)
        for group in prefix_groups(rows, alphas):
            hidden = self._hidden_group([rows[i] for i in group], [wanted[i] for i in group],
                                        [alphas[i] for i in group], options)
            for i, h in zip(group, hidden):
                out[i] = h
        return out  # type: ignore[return-value]

    def _hidden_group(self, rows: list[list[int]], wanted: list[list[int]], alphas: list[float],
                      options: LongContextOptions | None) -> list[Tensor]:
        out: list[Tensor | None] = [None] * len(rows)
        limit = min(min(len(r) for r in rows) - 1, min(min(w) for w in wanted))
        shared, keys, values = self.batcher.shared_prefix(rows, alphas, options, limit)
        suffix_len = [len(r) - shared for r in rows]
        order = sorted(range(len(rows)), key=lambda i: -suffix_len[i])
        for group in self.batcher.batches(order, suffix_len):
            width = max(suffix_len[i] for i in group)
            ids = right_padded([rows[i][shared:] for i in group], self.device)
            lengths = torch.tensor([suffix_len[i] for i in group], device=self.device)
            # only the wanted positions leave the last layer: [sum of len(wanted), D]
            keep = torch.tensor([b * width + p - shared for b, i in enumerate(group) for p in wanted[i]],
                                device=self.device)
            if shared:
                cache = self.model.new_cache(len(group), width, scratch=True)  # read by this forward only
                cache.load_prefix(keys, values, alphas[0])
                hidden = self.model(ids, cache=cache, lengths=lengths, options=options, return_hidden=True, keep=keep)
            else:
                hidden = self.model(ids, lengths=lengths, options=options, return_hidden=True, keep=keep)
            self.batcher.tokens_processed += int(lengths.sum())
            for i, h in zip(group, hidden.split([len(wanted[i]) for i in group])):
                out[i] = h
        return out  # type: ignore[return-value]

    def window_loglik(self, tokens: list[int], first_target: int, options: LongContextOptions | None) -> float:
        """Sum of log p(tokens[j] | tokens[:j]) for j >= first_target, in one forward pass (the
        log-probabilities summed per lm_head chunk, then the chunks' sums in order)."""
        ids = torch.tensor([tokens], device=self.device)
        hidden = self.model(ids, options=options, return_hidden=True)[0]
        self.batcher.tokens_processed += len(tokens)
        targets = ids[0, first_target:]
        picked: dict[int, list[Tensor]] = {}
        for chunk, first, logprobs in log_softmax_chunks(self.model, hidden[first_target - 1:len(tokens) - 1]):
            picked.setdefault(chunk, []).append(logprobs.gather(1, targets[first:first + logprobs.shape[0], None]))
        total = 0.0
        for parts in picked.values():
            total += float(torch.cat(parts).sum())
        return total
