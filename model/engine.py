"""The inference engine: answers Choice, Generate and Rolling requests with the bundled model.

    engine = Engine(model, tokenizer)
    engine.choice(requests); engine.rolling(requests)    # the scoring path (model/scoring.py)
    engine.generate(requests)                           # the generation scheduler (model/generation.py)

Both share one Batcher (model/batching.py): the token budget, the shared prompt prefix kept
from one batch to the next, and the count of tokens processed. Answers do not depend on batch
size, order or prefix reuse beyond float rounding.
"""

from __future__ import annotations

from typing import Callable, Sequence

from qwen_eval.model.batching import Batcher
from qwen_eval.model.generation import Scheduler
from qwen_eval.model.model import LongContextOptions, Qwen
from qwen_eval.model.scoring import Alternatives, Scorer
from qwen_eval.model.token_plans import ScoringRow
from qwen_eval.requests import (DEFAULT_MAX_LENGTH, Choice, ChoiceResult, Generate, GenerateResult, Rolling,
                                RollingResult)

DEFAULT_MAX_BATCH_TOKENS = 16384  # padded tokens per forward (model.max_batch_tokens)


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
        # ids the tokenizer can decode; embedding rows past it are padding (docs/model.md, quirk Q11)
        self.decodable = min(getattr(tokenizer, "vocab_size", model.config.vocab_size), model.config.vocab_size)
        self.batcher = Batcher(self.model, max_batch_tokens)
        self.scorer = Scorer(self.model, tokenizer, self.batcher, max_length=max_length)
        self.scheduler = Scheduler(self.model, tokenizer, self.batcher, seed=seed, stop_token_ids=self.stop_token_ids,
                                   decodable=self.decodable)

    @property
    def tokens_processed(self) -> int:
        return self.batcher.tokens_processed

    def choice(self, requests: Sequence[Choice]) -> list[ChoiceResult]:
        return self.scorer.choice(requests)

    def rolling(self, requests: Sequence[Rolling]) -> list[RollingResult]:
        return self.scorer.rolling(requests)

    def score_rows(self, rows: list[ScoringRow], options: LongContextOptions | None = None
                   ) -> list[tuple[list[float], list[bool]]]:
        """Per row: log p(target | tokens up to its position), and whether it is the argmax."""
        return self.scorer.score_rows(rows, options)

    def next_token_scores(self, rows: Sequence[Sequence[int]], top_k: int) -> list[list[tuple[float, Alternatives]]]:
        """For each row and each position p >= 1: (log p(row[p] | row[:p]), the top_k (id,
        logprob) among the ids the tokenizer can decode)."""
        return self.scorer.next_token_scores(rows, top_k, self.decodable)

    def generate(self, requests: Sequence[Generate],
                 on_done: Callable[[int, GenerateResult], None] | None = None) -> list[GenerateResult]:
        """Every request's n texts; on_done(i, result) as soon as request i's last sample ends."""
        return self.scheduler.generate(requests, on_done)
