"""The inference engine: answers Choice, Generate and Rolling requests with the bundled model.

Where the speed comes from:
  * one forward per context when every continuation is a single token (Qwen's MC protocol):
    only the scored positions go through lm_head, in one call for the whole batch;
  * rows that share a prompt prefix (a subject's 5 shots, GSM8K's 8 shots) are grouped; the
    prefix is computed once, held once for the group (attention reads it by reference, see
    model.attention.KVCache.load_prefix) and kept for the next batch that starts the same way;
  * right-padded batches ordered by length, sized by a token budget, split where padding would
    dominate;
  * batched greedy/sampled decoding over a preallocated KV cache; rows leave when they stop;
  * generation decodes in sets: a big prefill batch on its own (its prefix read by reference),
    small ones pooled (each row a copy of its prefix: BBH's 27 prompts of 2 rows in one batch);
    the next set joins the running batch when that batch is down to a quarter of it, so the
    last long answers do not decode nearly alone (a step reads all the weights however few rows
    it carries).

Answers do not depend on batch size, order or prefix reuse beyond float rounding: every row uses
its own true positions and NTK alpha, and a prefix is only shared between rows whose alpha agrees.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

from qwen_eval.errors import UserError
from qwen_eval.model.attention import KVCache
from qwen_eval.model.model import LongContextOptions, Qwen, QwenConfig, window_schedule
from qwen_eval.model.token_plans import ScoringRow, choice_results, plan_choices, rolling_windows
from qwen_eval.requests import (DEFAULT_MAX_LENGTH, WINDOW_SCHEDULE, Choice, ChoiceResult, Generate, GenerateResult,
                                LongContext, Rolling, RollingResult, cut_at_stop, request_key, new_token_budget)

DEFAULT_MAX_BATCH_TOKENS = 16384  # padded tokens per forward (model.max_batch_tokens)
POOL_BELOW_ROWS = 8  # prefill batches with fewer rows decode together (Engine._decode_sets)
REFILL_RATIO = 4  # the next decode set joins when the running rows are a quarter of it (Engine._decode)
PAD_SPLIT = 0.75  # scoring: a row under this share of its batch's widest starts a new batch (Engine._batches)
MIN_SHARED_PREFIX = 16  # tokens; shorter common prefixes are not worth a separate forward
LOSS_CHUNK_ELEMENTS = 1 << 26  # logits elements per lm_head call when scoring (each call reads its whole weight)
SOFTMAX_ROWS = 16  # rows of fp32 log-probabilities materialised at once (16 x 152K vocabulary = 9.3 MiB)


def _options(lc: LongContext | None, cfg: QwenConfig) -> LongContextOptions | None:
    """A request's long-context switches for this model; WINDOW_SCHEDULE becomes the model's
    default layer-wise windows, an explicit list must have one size per layer."""
    if lc is None:
        return None
    if lc.window_attn == WINDOW_SCHEDULE:
        windows: tuple[int, ...] | bool = window_schedule(cfg.num_layers, cfg.seq_length)
    elif lc.window_attn:
        if isinstance(lc.window_attn, str) or len(lc.window_attn) != cfg.num_layers:
            raise UserError(f"window_attn {lc.window_attn!r}: give {WINDOW_SCHEDULE!r} or one window size per "
                            f"layer ({cfg.num_layers} for this model)")
        windows = tuple(int(w) for w in lc.window_attn)
    else:
        windows = False
    return LongContextOptions(use_dynamic_ntk=lc.use_dynamic_ntk, use_logn_attn=lc.use_logn_attn,
                              window_attn=windows)


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    first = rows[0]
    n = min(len(r) for r in rows)
    for r in rows[1:]:
        i = 0
        while i < n and r[i] == first[i]:
            i += 1
        n = i
    return n


def log_softmax_rows(logits: Tensor) -> Iterator[tuple[int, Tensor]]:
    """(first row, fp32 log-probabilities [n, V]) of `logits` [N, V], SOFTMAX_ROWS rows at a time.

    The fp32 copy and the log-softmax's output are a scoring step's largest tensors: 2 x 256 MiB
    for a 441-row chunk of a 152K vocabulary (a perplexity window), 2 x 37 MiB for 64 MMLU
    questions. Each row is normalised on its own, so the blocks give the whole call's numbers."""
    for r in range(0, logits.shape[0], SOFTMAX_ROWS):
        yield r, torch.log_softmax(logits[r:r + SOFTMAX_ROWS].float(), dim=-1)


class Engine:
    def __init__(self, model: Qwen, tokenizer, *, max_length: int = DEFAULT_MAX_LENGTH,
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                 seed: int = 1234, stop_token_ids: Sequence[int] | None = None):
        """stop_token_ids: generation ends at any of these ids (the checkpoint's eos ids, for an
        instruct model its end of turn); None: the tokenizer's <|endoftext|> only."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.stop_token_ids = frozenset(stop_token_ids if stop_token_ids is not None else (tokenizer.eod_id,))
        self.max_length = max_length
        self.max_batch_tokens = max_batch_tokens
        self.seed = seed
        self.device = next(model.parameters()).device
        self.tokens_processed = 0
        # ids the tokenizer can decode; embedding rows past it are padding (docs/model.md, quirk Q11)
        self.decodable = min(getattr(tokenizer, "vocab_size", model.config.vocab_size), model.config.vocab_size)
        self._prefix: tuple[tuple[int, ...], float, LongContextOptions | None, list[Tensor], list[Tensor]] | None = None

    # ------------------------------------------------------------------------------------------
    # Shared machinery: hidden states at wanted positions, with prefix reuse
    def _shared_prefix(self, rows: Sequence[Sequence[int]], alphas: list[float], options,
                       limit: int) -> tuple[int, list[Tensor] | None, list[Tensor] | None]:
        """How many leading tokens all rows share and reuse from one KV (0: none), with that KV.

        The KV of the last prefix is kept: a batch whose rows all start with it reuses it as is
        when recomputing a slightly longer common prefix would cost more than it saves.
        """
        if len(rows) < 2 or len(set(alphas)) > 1:
            return 0, None, None
        shared = min(_common_prefix(rows), limit)
        if shared < MIN_SHARED_PREFIX:
            return 0, None, None
        alpha = alphas[0]
        if self._prefix is not None:
            key, cached_alpha, cached_options, keys, values = self._prefix
            p = len(key)
            if (cached_alpha, cached_options) == (alpha, options):
                if p <= shared and tuple(rows[0][:p]) == key and len(rows) * (shared - p) <= shared:
                    return p, keys, values
                if shared <= p and tuple(rows[0][:shared]) == key[:shared]:
                    # the kept prefix ran into the previous batch's first question words: its
                    # first `shared` positions are this batch's prefix (causal: they depend on
                    # nothing after them)
                    return shared, [k[:, :shared] for k in keys], [v[:, :shared] for v in values]
        cache = self.model.new_cache(1, shared)
        ids = torch.tensor([list(rows[0][:shared])], device=self.device)
        self.model.prefill_cache(cache, ids, torch.tensor([shared], device=self.device), options, alphas=[alpha])
        self.tokens_processed += shared
        self._prefix = (tuple(rows[0][:shared]), alpha, options, cache.keys, cache.values)
        return shared, cache.keys, cache.values

    def _batches(self, order: list[int], lengths: list[int], *, split_padding: bool = True) -> list[list[int]]:
        """Consecutive groups of `order` (sorted longest first) within the token budget. With
        split_padding, a row shorter than PAD_SPLIT of the group's widest starts a new group: a
        forward costs about its padded tokens, and one more forward costs little next to them
        (at 1/2, MMLU's questions in batches of 16 were 24% padding; at 3/4, 10%, and a
        batch is answered 1.1x faster in fp32, 1.3x in bf16). Generation keeps such rows
        together, since every extra batch costs a full run of decoding steps."""
        groups, current, width = [], [], 0
        for i in order:
            w = max(width, lengths[i])
            if current and (w * (len(current) + 1) > self.max_batch_tokens
                            or (split_padding and lengths[i] < PAD_SPLIT * width)):
                groups.append(current)
                current, w = [], lengths[i]
            current.append(i)
            width = w
        if current:
            groups.append(current)
        return groups

    @staticmethod
    def _prefix_groups(rows: Sequence[Sequence[int]], alphas: list[float]) -> list[list[int]]:
        """Row indices grouped by a prompt prefix worth computing once (a subject's shots); rows
        that share none are one group of their own, batched without a prefix.

        Rows are sorted by their tokens, so a group's common prefix is the smallest common prefix
        of neighbours; a neighbour starts a new group when they share less than half of the
        shorter row (MMLU: a subject's ~500 shot tokens of ~600; across subjects ~10 tokens).
        """
        order = sorted(range(len(rows)), key=lambda i: rows[i])
        groups: list[list[int]] = [[order[0]]] if order else []
        for prev, i in zip(order, order[1:]):
            lcp = _common_prefix([rows[prev], rows[i]])
            if alphas[prev] == alphas[i] and lcp >= MIN_SHARED_PREFIX and 2 * lcp >= min(len(rows[prev]), len(rows[i])):
                groups[-1].append(i)
            else:
                groups.append([i])
        alone = [g[0] for g in groups if len(g) == 1]
        return [g for g in groups if len(g) > 1] + ([alone] if alone else [])

    def _hidden(self, rows: list[list[int]], wanted: list[list[int]], options: LongContextOptions | None
                ) -> list[Tensor]:
        """Final hidden states [len(wanted[i]), D] of every token row at its wanted positions."""
        out: list[Tensor | None] = [None] * len(rows)
        alphas = self.model.row_alphas([len(r) for r in rows], options)
        for group in self._prefix_groups(rows, alphas):
            hidden = self._hidden_group([rows[i] for i in group], [wanted[i] for i in group],
                                        [alphas[i] for i in group], options)
            for i, h in zip(group, hidden):
                out[i] = h
        return out  # type: ignore[return-value]

    def _hidden_group(self, rows: list[list[int]], wanted: list[list[int]], alphas: list[float],
                      options: LongContextOptions | None) -> list[Tensor]:
        out: list[Tensor | None] = [None] * len(rows)
        limit = min(min(len(r) for r in rows) - 1, min(min(w) for w in wanted))
        shared, keys, values = self._shared_prefix(rows, alphas, options, limit)
        suffix_len = [len(r) - shared for r in rows]
        order = sorted(range(len(rows)), key=lambda i: -suffix_len[i])
        for group in self._batches(order, suffix_len):
            width = max(suffix_len[i] for i in group)
            ids = torch.zeros(len(group), width, dtype=torch.long)
            for b, i in enumerate(group):
                ids[b, :suffix_len[i]] = torch.tensor(rows[i][shared:])
            ids = ids.to(self.device)
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
            self.tokens_processed += int(lengths.sum())
            for i, h in zip(group, hidden.split([len(wanted[i]) for i in group])):
                out[i] = h
        return out  # type: ignore[return-value]

    def score_rows(self, rows: list[ScoringRow], options: LongContextOptions | None = None
                   ) -> list[tuple[list[float], list[bool]]]:
        """Per row: log p(target | tokens up to its position), and whether it is the argmax."""
        if not rows:
            return []
        wanted = [sorted(set(r.positions)) for r in rows]
        hidden = torch.cat(self._hidden([r.tokens for r in rows], wanted, options))
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
        # one lm_head over all rows' positions (a call per row would read the whole [V, D]
        # weight for a handful of positions), in chunks that bound the fp32 logits
        chunk = max(1, LOSS_CHUNK_ELEMENTS // self.model.config.vocab_size)
        for s in range(0, hidden.shape[0], chunk):
            for r, logprobs in log_softmax_rows(self.model.logits(hidden[s:s + chunk])):
                mine = ((index >= s + r) & (index < s + r + logprobs.shape[0])).nonzero()[:, 0]
                local = index[mine] - s - r
                logprob[mine] = logprobs[local, target[mine]]
                is_best[mine] = logprobs.argmax(-1)[local] == target[mine]
        logprob_list, best_list = logprob.tolist(), is_best.tolist()
        scores, k = [], 0
        for row in rows:
            n = len(row.positions)
            scores.append((logprob_list[k:k + n], best_list[k:k + n]))
            k += n
        return scores

    # ------------------------------------------------------------------------------------------
    # Choice
    @torch.inference_mode()
    def choice(self, requests: Sequence[Choice]) -> list[ChoiceResult]:
        rows, plans = plan_choices(requests, self.tokenizer.encode, self.max_length)
        return choice_results(plans, self.score_rows(rows))

    # ------------------------------------------------------------------------------------------
    # Rolling (perplexity)
    @torch.inference_mode()
    def rolling(self, requests: Sequence[Rolling]) -> list[RollingResult]:
        results = []
        for r in requests:
            ids = self.tokenizer.encode(r.text)
            total = len(ids)
            if r.first_tokens is not None:
                if total < r.first_tokens:
                    results.append(RollingResult(0.0, 0, total))
                    continue
                ids = ids[:r.first_tokens]
            options = _options(r.long_context, self.model.config)
            loglik, scored = 0.0, 0
            for start, end, first in rolling_windows(len(ids), r.max_length or self.max_length, r.stride):
                loglik += self._window_loglik(ids[start:end], first - start, options)
                scored += end - first
            results.append(RollingResult(loglik, scored, total))
        return results

    def _window_loglik(self, tokens: list[int], first_target: int, options) -> float:
        """Sum of log p(tokens[j] | tokens[:j]) for j >= first_target, in one forward pass.

        The loss is taken in chunks of positions so an [L, V] fp32 logits tensor never exists
        (lm_head over LOSS_CHUNK_ELEMENTS logits, the log-softmax over SOFTMAX_ROWS rows).
        """
        ids = torch.tensor([tokens], device=self.device)
        hidden = self.model(ids, options=options, return_hidden=True)[0]
        self.tokens_processed += len(tokens)
        targets = ids[0, first_target:]
        h = hidden[first_target - 1:len(tokens) - 1]
        chunk = max(1, LOSS_CHUNK_ELEMENTS // self.model.config.vocab_size)
        total = 0.0
        for s in range(0, h.shape[0], chunk):
            picked = [logprobs.gather(1, targets[s + r:s + r + logprobs.shape[0], None])
                      for r, logprobs in log_softmax_rows(self.model.logits(h[s:s + chunk]))]
            total += float(torch.cat(picked).sum())  # summed per lm_head chunk, as a whole chunk was
        return total

    # ------------------------------------------------------------------------------------------
    # Generate
    def _row_generator(self, request: Generate, sample: int) -> torch.Generator | None:
        if request.temperature <= 0:
            return None
        digest = hashlib.sha256(f"{request_key(request)}:{sample}:{self.seed}".encode()).digest()
        return torch.Generator(device=self.device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)

    def _next_tokens(self, logits: Tensor, requests: list[Generate], generators: list) -> Tensor:
        logits = logits.float()
        logits[:, self.decodable:] = float("-inf")
        chosen = logits.argmax(-1)
        for b, (r, g) in enumerate(zip(requests, generators)):
            if g is None:
                continue
            row = logits[b] / r.temperature
            if r.top_k > 0:
                kth = torch.topk(row, min(r.top_k, row.shape[0])).values[-1]
                row = row.masked_fill(row < kth, float("-inf"))
            probs = torch.softmax(row, dim=-1)
            if r.top_p < 1.0:
                sorted_p, idx = torch.sort(probs, descending=True)
                drop = sorted_p.cumsum(0) - sorted_p > r.top_p  # keep the smallest set reaching top_p
                sorted_p[drop] = 0
                probs = torch.zeros_like(probs).scatter_(0, idx, sorted_p)
            chosen[b] = torch.multinomial(probs, 1, generator=g)[0]
        return chosen

    @torch.inference_mode()
    def generate(self, requests: Sequence[Generate],
                 on_done: Callable[[int, GenerateResult], None] | None = None) -> list[GenerateResult]:
        """Every request's n texts. Any number of requests may come at once: they decode in sets
        within the token budget, each set joining the running batch as it thins out. on_done(i,
        result) is called as soon as request i's last sample ends (the runner commits it to the
        answer cache then, so a long call loses nothing finished when it is killed)."""
        rows = [(i, s) for i, r in enumerate(requests) for s in range(r.n)]
        prompts = self.tokenizer.encode_batch([r.context for r in requests])
        tokens = [prompts[i] for i, _ in rows]
        generators = [self._row_generator(requests[i], s) for i, s in rows]  # seeded by the request as asked
        budgets = [new_token_budget(r, len(p)) for r, p in zip(requests, prompts)]
        row_requests = [replace(requests[i], max_new_tokens=budgets[i]) for i, _ in rows]
        texts: dict[tuple[int, int], str] = {}
        remaining = [r.n for r in requests]

        def result(i: int) -> GenerateResult:
            return GenerateResult(tuple(texts[(i, s)] for s in range(requests[i].n)))

        def row_done(k: int, text: str) -> None:
            i, s = rows[k]
            texts[(i, s)] = text
            remaining[i] -= 1
            if remaining[i] == 0 and on_done is not None:
                on_done(i, result(i))

        if on_done is not None:
            for i in (i for i, r in enumerate(requests) if r.n == 0):
                on_done(i, result(i))
        sets = self._decode_sets(tokens, [r.max_new_tokens for r in row_requests])
        self._decode(sets, tokens, row_requests, generators, row_done)
        return [result(i) for i in range(len(requests))]

    def _decode_sets(self, tokens: list[list[int]], max_new: list[int]) -> list[list[list[int]]]:
        """Prefill batches (row indices), grouped into the sets that decode together.

        A prefill batch is rows of one prefix group within the token budget, the shared prefix
        counted once. A batch of POOL_BELOW_ROWS rows or more decodes on its own, reading its
        prefix by reference; smaller ones (BBH with a `limit`: 27 prompts of 2 rows each) join
        other small batches up to the budget, every row then holding a copy of its prefix,
        since each decoding run costs a full read of the weights per step whatever its width.
        """
        alphas = self.model.row_alphas([len(t) for t in tokens])
        batches: list[list[int]] = []
        for prefix_group in self._prefix_groups(tokens, alphas):
            # a shared prefix is held once for the batch, so a row costs its own tokens
            shared = _common_prefix([tokens[k] for k in prefix_group]) if len(prefix_group) > 1 else 0
            order = sorted(prefix_group, key=lambda k: -len(tokens[k]))
            budget_len = [len(t) - shared + m for t, m in zip(tokens, max_new)]  # read for this group's rows only
            batches += self._batches(order, budget_len, split_padding=False)
        sets: list[list[list[int]]] = []
        pool: list[list[int]] = []
        pool_width = 0
        for batch in batches:
            if len(batch) >= POOL_BELOW_ROWS:
                sets.append([batch])
                continue
            need = max(len(tokens[k]) + max_new[k] for k in batch)  # a row's full width, prefix copied
            if pool and max(pool_width, need) * (sum(map(len, pool)) + len(batch)) > self.max_batch_tokens:
                sets.append(pool)
                pool, pool_width = [], 0
            pool.append(batch)
            pool_width = max(pool_width, need)
        return sets + ([pool] if pool else [])

    def _prefill(self, prompts: list[list[int]], extra: int) -> tuple[KVCache, Tensor]:
        """The prompts of one prefill batch in a cache with room for `extra` more tokens a row
        (after their shared prefix, if any, read by reference), and each row's next-token logits."""
        n = len(prompts)
        lengths = [len(p) for p in prompts]
        alphas = self.model.row_alphas(lengths)  # NTK alpha fixed at prefill, as Qwen does
        shared, keys, values = self._shared_prefix(prompts, alphas, None, min(lengths) - 1)
        width = max(lengths) - shared
        cache = self.model.new_cache(n, width + extra)  # after the shared prefix, if any
        ids = torch.zeros(n, width, dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, :len(p) - shared] = torch.tensor(p[shared:])
        ids = ids.to(self.device)
        suffix = torch.tensor([ln - shared for ln in lengths], device=self.device)
        last = torch.arange(n, device=self.device) * width + suffix - 1  # each row's last position, flat
        if shared:
            cache.load_prefix(keys, values, alphas[0])
            hidden = self.model(ids, cache=cache, lengths=suffix, return_hidden=True, keep=last)
        else:
            hidden = self.model.prefill_cache(cache, ids, suffix, keep=last)
        self.tokens_processed += int(suffix.sum())
        return cache, self.model.logits(hidden)

    def _prefill_set(self, batches: list[list[int]], tokens: list[list[int]], requests: list[Generate]
                     ) -> tuple[KVCache, Tensor]:
        """A decode set's rows (its prefill batches, in order) in one cache, and their first logits."""
        room = max(requests[k].max_new_tokens for batch in batches for k in batch)
        if len(batches) == 1:
            return self._prefill([tokens[k] for k in batches[0]], room)
        prefilled = [self._prefill([tokens[k] for k in batch], 0) for batch in batches]
        return KVCache.stacked([c for c, _ in prefilled], room), torch.cat([lg for _, lg in prefilled])

    def _decode(self, sets: list[list[list[int]]], tokens: list[list[int]], requests: list[Generate],
                generators: list, row_done: Callable[[int, str], None]) -> None:
        """Greedy or sampled decoding of every row (an index into requests), set after set;
        row_done(row, text) as each row ends.

        The next set joins the running batch once its rows are down to a quarter of the
        newcomers (REFILL_RATIO): a few long answers' last steps then carry the next set's rows
        instead of running nearly empty, since a step costs a read of the weights however few
        rows it holds. (The batch is then at most 1.25 budgets.)
        """
        stop_ids = self.stop_token_ids
        stop_bytes = [[s.encode("utf-8") for s in r.stop if s] for r in requests]
        tail = [max((len(s) for s in sb), default=0) + 1 for sb in stop_bytes]
        generated: list[list[int]] = [[] for _ in requests]
        pending = list(sets)
        active: list[int] = []  # the row each cache row holds
        cache = logits = None
        while active or pending:
            if pending and REFILL_RATIO * len(active) <= sum(map(len, pending[0])):
                newcomers = [k for batch in pending[0] for k in batch]
                new_cache, new_logits = self._prefill_set(pending.pop(0), tokens, requests)
                if active:  # the running rows first, in their order, then the newcomers
                    room = max(requests[k].max_new_tokens - len(generated[k]) for k in active + newcomers)
                    cache, logits = KVCache.stacked([cache, new_cache], room), torch.cat([logits, new_logits])
                else:
                    cache, logits = new_cache, new_logits
                active = active + newcomers
            chosen = self._next_tokens(logits, [requests[k] for k in active], [generators[k] for k in active]).tolist()
            keep, ended = [], []
            for pos, (k, tok) in enumerate(zip(active, chosen)):
                if tok in stop_ids or requests[k].max_new_tokens <= 0:  # max_new_tokens=0: no token
                    ended.append(k)
                    continue
                generated[k].append(tok)
                recent = self.tokenizer.decode_bytes(generated[k][-tail[k]:])
                if any(s in recent for s in stop_bytes[k]) or len(generated[k]) >= requests[k].max_new_tokens:
                    ended.append(k)
                    continue
                keep.append(pos)
            self.tokens_processed += len(active)
            for k in ended:
                row_done(k, cut_at_stop(self.tokenizer.decode(generated[k]), requests[k].stop))
            if not keep:
                active = []
                continue
            if len(keep) < len(active):
                # in order: a row's place in the batch can change a GEMM's rounding, so moving the
                # last rows into the holes would change answers; the rows before the first hole stay
                cache.keep_rows(keep)
                active = [active[p] for p in keep]
                chosen = [chosen[p] for p in keep]
            step = torch.tensor(chosen, device=self.device)[:, None]
            logits = self.model(step, cache=cache)[:, -1]
