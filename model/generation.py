"""The generation scheduler: Generate requests decoded in batches over a preallocated KV cache.

  * prompts are prefilled in batches of one prefix group within the token budget, the shared
    prefix computed once and read by reference (model/batching.py);
  * a big prefill batch decodes on its own; small ones are pooled, each row then holding a copy
    of its prefix (BBH's 27 prompts of 2 rows in one batch), since each decoding run costs a
    full read of the weights per step whatever its width;
  * the next set of prefill batches joins the running batch when that batch is down to a quarter
    of it, so the last long answers do not decode nearly alone;
  * greedy or seeded sampled decoding; a row leaves the batch when it stops.

A row's text does not depend on its batch, order or prefix reuse beyond float rounding: every row
uses its own true positions, NTK alpha and sampling generator (seeded by its request).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from qwen_eval.model.attention import KVCache
from qwen_eval.model.batching import Batcher, common_prefix, prefix_groups, right_padded
from qwen_eval.model.model import Qwen
from qwen_eval.requests import Generate, GenerateResult, cut_at_stop, new_token_budget, request_key

POOL_BELOW_ROWS = 8  # prefill batches with fewer rows decode together (Scheduler.decode_sets)
REFILL_RATIO = 4  # the next decode set joins when the running rows are a quarter of it (Scheduler._decode)


@dataclass(eq=False)
class Scheduler:
    """Texts for Generate requests, decoded in sets over one KV cache per set."""

    model: Qwen
    tokenizer: Any
    batcher: Batcher
    seed: int  # the sampling seed every request's generator is derived from (with the request)
    stop_token_ids: frozenset[int]  # generation ends at any of these ids
    decodable: int  # ids from here on are never chosen (embedding rows the tokenizer cannot decode)

    @property
    def device(self) -> torch.device:
        return self.batcher.device

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
        sets = self.decode_sets(tokens, [r.max_new_tokens for r in row_requests])
        self._decode(sets, tokens, row_requests, generators, row_done)
        return [result(i) for i in range(len(requests))]

    def decode_sets(self, tokens: list[list[int]], max_new: list[int]) -> list[list[list[int]]]:
        """Prefill batches (row indices), grouped into the sets that decode together.

        A prefill batch is rows of one prefix group within the token budget, the shared prefix
        counted once. A batch of POOL_BELOW_ROWS rows or more decodes on its own, reading its
        prefix by reference; smaller ones (BBH with a `limit`: 27 prompts of 2 rows each) join
        other small batches up to the budget, every row then holding a copy of its prefix,
        since each decoding run costs a full read of the weights per step whatever its width.
        """
        alphas = self.model.row_alphas([len(t) for t in tokens])
        batches: list[list[int]] = []
        for prefix_group in prefix_groups(tokens, alphas):
            # a shared prefix is held once for the batch, so a row costs its own tokens
            shared = common_prefix([tokens[k] for k in prefix_group]) if len(prefix_group) > 1 else 0
            order = sorted(prefix_group, key=lambda k: -len(tokens[k]))
            budget_len = [len(t) - shared + m for t, m in zip(tokens, max_new)]  # read for this group's rows only
            batches += self.batcher.batches(order, budget_len, split_padding=False)
        sets: list[list[list[int]]] = []
        pool: list[list[int]] = []
        pool_width = 0
        for batch in batches:
            if len(batch) >= POOL_BELOW_ROWS:
                sets.append([batch])
                continue
            need = max(len(tokens[k]) + max_new[k] for k in batch)  # a row's full width, prefix copied
            if pool and max(pool_width, need) * (sum(map(len, pool)) + len(batch)) > self.batcher.max_batch_tokens:
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
        shared, keys, values = self.batcher.shared_prefix(prompts, alphas, None, min(lengths) - 1)
        width = max(lengths) - shared
        cache = self.model.new_cache(n, width + extra)  # after the shared prefix, if any
        ids = right_padded([p[shared:] for p in prompts], self.device)
        suffix = torch.tensor([ln - shared for ln in lengths], device=self.device)
        last = torch.arange(n, device=self.device) * width + suffix - 1  # each row's last position, flat
        if shared:
            cache.load_prefix(keys, values, alphas[0])
            hidden = self.model(ids, cache=cache, lengths=suffix, return_hidden=True, keep=last)
        else:
            hidden = self.model.prefill_cache(cache, ids, suffix, keep=last)
        self.batcher.tokens_processed += int(suffix.sum())
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
            self.batcher.tokens_processed += len(active)
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
