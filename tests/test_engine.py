"""The engine: answers do not depend on batch size or prefix reuse; continuations, stop strings,
seeded sampling and rolling perplexity are exact against plain loops over the model."""

from __future__ import annotations

import math

import pytest
import torch

from helpers_checkpoints import random_model, tiny_config
from qwen_eval.backends.qwen import QwenBackend
from qwen_eval.model import batching, generation, scoring
from qwen_eval.model.batching import Batcher
from qwen_eval.model.engine import Engine
from qwen_eval.model.tokenizer import load_tokenizer
from qwen_eval.requests import Choice, Generate, Rolling
from qwen_eval.runner import answer_requests

SHOTS = (
    "The following are multiple choice questions (with answers) about astronomy.\n\n"
    "Which planet is closest to the Sun?\nA. Venus\nB. Mercury\nC. Earth\nD. Mars\nAnswer: B\n\n"
    "What is the Sun mainly made of?\nA. Iron\nB. Oxygen\nC. Hydrogen\nD. Carbon\nAnswer: C\n\n"
)
QUESTIONS = (
    "Which planet has the most moons?\nA. Saturn\nB. Mercury\nC. Venus\nD. Mars",
    "How long does light from the Sun take to reach Earth?\nA. 8 seconds\nB. 8 minutes\nC. 8 hours\nD. 8 days",
    "What is a light-year?\nA. A unit of time\nB. A unit of distance\nC. A unit of mass\nD. A unit of energy",
    "Which of these is a dwarf planet?\nA. Pluto\nB. Neptune\nC. Titan\nD. Io",
    "What causes the seasons on Earth?\nA. Distance\nB. Axial tilt\nC. Solar flares\nD. The Moon",
    "What is the largest planet?\nA. Earth\nB. Saturn\nC. Jupiter\nD. Uranus",
    "问题：月球绕地球一周大约需要多少天？\nA. 7\nB. 27\nC. 100\nD. 365",
)
TEXT = ("The Moon is Earth's only natural satellite. It orbits at an average distance of 384,400 km, about "
        "30 times the diameter of Earth. Tidal forces between Earth and the Moon have synchronised the Moon's "
        "orbital period with its rotation period, so it always presents the same side to Earth.")


def choice_requests() -> list[Choice]:
    mc = [Choice(SHOTS + q + "\nAnswer:", (" A", " B", " C", " D")) for q in QUESTIONS]
    multi = [Choice(SHOTS + "The closest star to Earth is", (" the Sun", " Proxima Centauri", " Sirius")),
             Choice("2 + 2 =", (" 4", " four", " 22")),
             Choice("The capital of France is", (" Paris", " the city of Lyon"))]
    return mc + multi


def generate_requests() -> list[Generate]:
    greedy = [Generate(SHOTS + q + "\nAnswer:", stop=("\n\n",), max_new_tokens=6) for q in QUESTIONS[:4]]
    return greedy + [Generate("Once upon a time", max_new_tokens=10),
                     Generate(SHOTS, temperature=0.8, top_p=0.9, max_new_tokens=8, n=2, seed=3)]


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(seq_length=2048), seed=4)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


def backend_for(model, tokenizer, **engine_kwargs) -> QwenBackend:
    engine = Engine(model, tokenizer, max_length=2048, **engine_kwargs)
    return QwenBackend(engine, name="tiny", path=None, fingerprint="test")


def answers(model, tokenizer, requests, batch_size: int, **engine_kwargs):
    responses, _ = answer_requests(requests, backend_for(model, tokenizer, **engine_kwargs), batch_size=batch_size)
    return responses


def assert_same_choices(got, want) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-5)
        assert g.is_greedy == w.is_greedy
        assert max(range(len(g.logprobs)), key=g.logprobs.__getitem__) == \
            max(range(len(w.logprobs)), key=w.logprobs.__getitem__)


@pytest.fixture(scope="module")
def short_model():
    """seq_length 64: the few-shot prompts (70-110 tokens) run with dynamic NTK (alpha 3) and LogN,
    the short ones (4-5 tokens) without."""
    return random_model(tiny_config(seq_length=64), seed=4)


@pytest.mark.parametrize("batch_size, engine_kwargs", [(3, {}), (16, {}), (16, {"max_batch_tokens": 300})],
                         ids=["3", "16", "16-small-forwards"])
@pytest.mark.parametrize("which", ["model", "short_model"])
def test_answers_do_not_depend_on_batch_size(request, tokenizer, batch_size, engine_kwargs, which):
    model = request.getfixturevalue(which)
    requests = choice_requests() + generate_requests()
    one = answers(model, tokenizer, requests, 1)
    many = answers(model, tokenizer, requests, batch_size, **engine_kwargs)
    n = len(choice_requests())
    assert_same_choices(many[:n], one[:n])
    assert many[n:] == one[n:]
    assert all(t for r in one[n:] for t in r.texts)


def test_prefix_reuse_does_not_change_answers(model, tokenizer, monkeypatch):
    """Every request shares the few-shot prefix (the engine shares a prefix common to a whole call)."""
    requests = [r for r in choice_requests() + generate_requests() if r.context.startswith(SHOTS)]
    reuse = backend_for(model, tokenizer)
    with_prefix, _ = answer_requests(requests, reuse, batch_size=16)
    assert reuse.engine.batcher.kept is not None  # the shared few-shot prefix was computed once and kept
    monkeypatch.setattr(batching, "MIN_SHARED_PREFIX", 10 ** 9)
    plain = backend_for(model, tokenizer)
    without, _ = answer_requests(requests, plain, batch_size=16)
    assert plain.engine.batcher.kept is None
    assert reuse.tokens_processed < plain.tokens_processed
    n = sum(isinstance(r, Choice) for r in requests)
    assert_same_choices(with_prefix[:n], without[:n])
    assert with_prefix[n:] == without[n:]


def several_prefix_requests() -> list[Generate]:
    """Two few-shot prompts (different subjects) with two questions each, and three prompts that
    share no prefix worth computing once: three prefill batches of two or three rows."""
    shots = [SHOTS, SHOTS.replace("astronomy", "planetary science").replace("Sun", "star"),
             "Questions about the Moon, answered briefly.\n\nQ: What is the Moon?\nA: Earth's satellite.\n\n"]
    requests = [Generate(s + q + "\nAnswer:", stop=("\n\n",), max_new_tokens=6) for s in shots for q in QUESTIONS[:2]]
    return requests + [Generate("Once upon a time", max_new_tokens=9)]


def test_small_prefill_batches_decode_together(model, tokenizer, monkeypatch):
    """Prompts of several prefix groups with a few rows each (BBH with a limit) decode as one
    batch, each row holding a copy of its prefix: one decoding run instead of one per group,
    and the texts each request gets alone."""
    requests = several_prefix_requests()
    engine = Engine(model, tokenizer)
    sets = engine.scheduler.decode_sets(tokenizer.encode_batch([r.context for r in requests]),
                                        [r.max_new_tokens for r in requests])
    assert len(sets) == 1 and len(sets[0]) == 3  # three prefill batches, one decode set
    decode_steps = _count_decode_steps(model, monkeypatch)
    together = [r.texts for r in engine.generate(requests)]
    assert len(decode_steps) <= max(r.max_new_tokens for r in requests) and max(decode_steps) > 2
    monkeypatch.setattr(generation, "POOL_BELOW_ROWS", 1)  # every batch decodes on its own
    apart = [r.texts for r in Engine(model, tokenizer).generate(requests)]
    alone = [Engine(model, tokenizer).generate([r])[0].texts for r in requests]
    assert together == apart == alone
    assert all(t[0] for t in together)


def test_scoring_batches_split_where_padding_would_exceed_a_quarter(model, tokenizer):
    """Rows sorted longest first: a row under PAD_SPLIT (3/4) of its batch's widest starts the
    next batch when scoring; the token budget splits too; generation keeps short rows in."""
    assert batching.PAD_SPLIT == 0.75
    batcher = Batcher(model, max_batch_tokens=400)
    lengths = [100, 90, 76, 74, 60, 56, 55, 20]
    order = list(range(len(lengths)))
    assert batcher.batches(order, lengths) == [[0, 1, 2], [3, 4, 5], [6], [7]]
    assert batcher.batches(order, lengths, split_padding=False) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_the_token_budget_splits_decode_sets(model, tokenizer):
    """A budget too small for all rows at once gives several decode sets, none over the budget."""
    requests = several_prefix_requests()
    engine = Engine(model, tokenizer, max_batch_tokens=200)
    tokens = tokenizer.encode_batch([r.context for r in requests])
    sets = engine.scheduler.decode_sets(tokens, [r.max_new_tokens for r in requests])
    assert len(sets) > 1
    assert sorted(k for s in sets for b in s for k in b) == list(range(len(requests)))
    for s in sets:
        rows = [k for b in s for k in b]
        if len(s) > 1:
            assert max(len(tokens[k]) + requests[k].max_new_tokens for k in rows) * len(rows) <= 200
    assert [r.texts for r in engine.generate(requests)] == [r.texts for r in Engine(model, tokenizer).generate(requests)]


def _count_decode_steps(model, monkeypatch) -> list[int]:
    steps: list[int] = []
    forward = model.forward

    def counting(input_ids, **kwargs):
        if input_ids.shape[1] == 1:
            steps.append(input_ids.shape[0])
        return forward(input_ids, **kwargs)

    monkeypatch.setattr(model, "forward", counting)
    return steps


def test_the_next_decode_set_joins_when_the_running_rows_dwindle(model, tokenizer, monkeypatch):
    """Sixteen rows of one prompt prefix in two prefill batches of eight (a small budget), most
    stopping after 2 tokens and one running to 20: the second batch joins the first one's tail
    (its shared prefix still read by reference) and rides in the long row's 19 steps, instead of
    a decoding run of its own after them (19 + 1 steps, 8 rows at most); every text is the one
    the request gets alone."""
    questions = [f"Question {i}: how many moons does planet {i} have?\nAnswer:" for i in range(16)]
    requests = [Generate(SHOTS + q, max_new_tokens=20 if i == 0 else 2) for i, q in enumerate(questions)]
    tokens = tokenizer.encode_batch([r.context for r in requests])
    own = len(tokens[0]) - batching.common_prefix(tokens)
    engine = Engine(model, tokenizer, max_batch_tokens=9 * (own + 20) - 1)  # 8 rows beside the long one's width
    sets = engine.scheduler.decode_sets(tokens, [r.max_new_tokens for r in requests])
    assert [len(s[0]) for s in sets] == [8, 8] and 0 in sets[0][0]  # the long row decodes first
    from qwen_eval.model.attention import KVCache
    kept_prefix = []
    stacked = KVCache.stacked.__func__

    def recording(cls, caches, room):
        out = stacked(cls, caches, room)
        kept_prefix.append(out.prefix is not None)
        return out

    monkeypatch.setattr(KVCache, "stacked", classmethod(recording))
    steps = _count_decode_steps(model, monkeypatch)
    together = [r.texts for r in engine.generate(requests)]
    assert kept_prefix == [True]  # one join, the prefix held once
    assert len(steps) == 19 and max(steps) == 9  # the long row and the 8 newcomers in one step
    alone = [Engine(model, tokenizer).generate([r])[0].texts for r in requests]
    assert together == alone


@torch.inference_mode()
def test_continuations_score_exactly(model, tokenizer):
    """Each continuation's log-probability is the sum over its tokens from one plain forward of
    context + continuation, and is_greedy says whether every token is the argmax."""
    requests = choice_requests()
    got = Engine(model, tokenizer).choice(requests)
    for request, result in zip(requests, got):
        ctx = tokenizer.encode(request.context)
        for cont, lp, greedy in zip(request.continuations, result.logprobs, result.is_greedy):
            tokens = tokenizer.encode(cont)
            hidden = model(torch.tensor([ctx + tokens]), return_hidden=True)[0, len(ctx) - 1:-1]
            logprobs = torch.log_softmax(model.logits(hidden).double(), dim=-1)
            assert lp == pytest.approx(sum(float(logprobs[i, t]) for i, t in enumerate(tokens)), abs=1e-5)
            assert greedy == all(int(logprobs[i].argmax()) == t for i, t in enumerate(tokens))
    assert any(len(tokenizer.encode(c)) > 2 for r in requests for c in r.continuations)


def test_greedy_continuation_is_greedy(model, tokenizer):
    """A continuation made of the model's own greedy tokens is scored as greedy."""
    engine = Engine(model, tokenizer)
    context = "The capital of France is"
    (text,) = engine.generate([Generate(context, max_new_tokens=3)])[0].texts
    result = engine.choice([Choice(context, (text, text + " and"))])[0]
    assert result.is_greedy[0] and not result.is_greedy[1]


def test_stop_strings_cut_generation(model, tokenizer):
    engine = Engine(model, tokenizer)
    context = "Once upon a time"
    (full,) = engine.generate([Generate(context, max_new_tokens=24)])[0].texts
    before = engine.tokens_processed
    engine.generate([Generate(context, max_new_tokens=24)])
    full_cost = engine.tokens_processed - before
    stop = next(full[i:i + 2] for i in range(2, len(full) - 1) if full.find(full[i:i + 2]) == i)
    before = engine.tokens_processed
    (cut,) = engine.generate([Generate(context, stop=(stop, "never appears"), max_new_tokens=24)])[0].texts
    assert cut == full[:full.find(stop)] and stop not in cut
    assert engine.tokens_processed - before < full_cost  # decoding stopped, not just the text cut


def test_sampling_is_seeded(model, tokenizer):
    def sample(seed: int, batch_with: list[Generate] = ()) -> tuple[str, ...]:
        request = Generate("Once upon a time", temperature=1.0, top_k=50, max_new_tokens=8, n=2, seed=seed)
        return Engine(model, tokenizer).generate([*batch_with, request])[-1].texts

    first = sample(1)
    assert sample(1) == first
    assert sample(1, [Generate(SHOTS, max_new_tokens=5)]) == first  # not affected by its batch
    assert first[0] != first[1]  # the n samples differ
    assert sample(2) != first


@torch.inference_mode()
def reference_loglik(model, ids: list[int], window: int, stride: int) -> tuple[float, int]:
    """A plain loop: windows of `window` tokens, each ending `stride` tokens after the previous
    one (the first scores all it can), every token scored by its own forward."""
    total, count, pos = 0.0, 0, 1
    while pos < len(ids):
        end = min(len(ids), pos + (window - 1 if pos == 1 else stride))
        for j in range(pos, end):
            context = ids[max(0, end - window):j]
            logits = model(torch.tensor([context]))[0, -1].double()
            total += float(torch.log_softmax(logits, dim=-1)[ids[j]])
            count += 1
        pos = end
    return total, count


@pytest.mark.parametrize("window, stride", [(1000, None), (24, None), (24, 7)], ids=["one-window", "disjoint",
                                                                                      "strided"])
def test_rolling_perplexity_equals_a_plain_loop(model, tokenizer, monkeypatch, window, stride):
    monkeypatch.setattr(scoring, "LOSS_CHUNK_ELEMENTS", 5 * model.config.vocab_size)  # 5 positions a chunk
    ids = tokenizer.encode(TEXT)
    (result,) = Engine(model, tokenizer).rolling([Rolling(TEXT, max_length=window, stride=stride)])
    want, count = reference_loglik(model, ids, window, stride or window - 1)
    assert result.n_tokens == count == len(ids) - 1 and result.text_tokens == len(ids)
    assert result.loglikelihood == pytest.approx(want, abs=1e-4)
    assert math.exp(-result.loglikelihood / result.n_tokens) == pytest.approx(math.exp(-want / count), rel=1e-6)


def test_max_new_tokens_bounds_generation(model, tokenizer):
    """Exactly max_new_tokens tokens when nothing stops earlier; 0 gives the empty text."""
    engine = Engine(model, tokenizer)
    context = "Once upon a time"
    results = engine.generate([Generate(context, max_new_tokens=k) for k in (0, 1, 5)])
    assert results[0].texts == ("",)
    prompt = len(tokenizer.encode(context))
    for k, result in zip((1, 5), results[1:]):
        before = engine.tokens_processed
        engine.generate([Generate(context, max_new_tokens=k)])
        assert engine.tokens_processed - before == prompt + k  # prompt, then one decode step per token
        assert result.texts[0] and len(tokenizer.encode(result.texts[0])) <= k + 1


@pytest.mark.parametrize("kernel", ["sdpa", "math", "flex"])
@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("window", [0, 5, 40])
def test_attention_after_a_shared_prefix_equals_attention_over_copied_rows(kernel, kv_heads, window):
    """The prefix read by reference (cascade: two attentions merged by log-sum-exp) gives the
    attention a copied prefix gives (GQA, windows that reach into the prefix, right-padded rows at
    different positions), for every kernel that runs on CPU."""
    from qwen_eval.model.attention import AttentionMeta, KVCache, attend

    gen = torch.Generator().manual_seed(0)
    b, t, h, d, prefix, own = 3, 7, 4, 16, 23, 12
    q = torch.randn(b, t, h, d, generator=gen)
    prefix_k = torch.randn(1, prefix, kv_heads, d, generator=gen)
    prefix_v = torch.randn(1, prefix, kv_heads, d, generator=gen)
    own_k = torch.randn(b, own, kv_heads, d, generator=gen)
    own_v = torch.randn(b, own, kv_heads, d, generator=gen)
    # row b's queries are its own tokens b ... b + t - 1 (rows hold different numbers of tokens)
    cols = torch.arange(b)[:, None] + torch.arange(t)[None, :]
    new_k, new_v = own_k[torch.arange(b)[:, None], cols], own_v[torch.arange(b)[:, None], cols]

    def run(kernel, shared):
        cache = KVCache(1, b, prefix + own, kv_heads, d, dtype=torch.float32, device=torch.device("cpu"))
        if shared:
            cache.load_prefix([prefix_k], [prefix_v], 1.0)
            cache.keys[0][:, :own], cache.values[0][:, :own] = own_k, own_v
        else:  # every row holds a copy of the prefix
            cache.keys[0][:, :prefix], cache.values[0][:, :prefix] = prefix_k, prefix_v
            cache.keys[0][:, prefix:], cache.values[0][:, prefix:] = own_k, own_v
        starts = prefix + torch.arange(b)
        cache.lengths, cache.host_lengths = starts.clone(), starts.tolist()
        meta = AttentionMeta.build(kernel, starts, starts.tolist(), t, (window,), 1, cache)
        return attend(q, new_k, new_v, meta, 0)

    expected = run("sdpa", shared=False)
    got = run(kernel, shared=True)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), float((got - expected).abs().max())
    assert torch.allclose(run(kernel, shared=False), expected, atol=1e-5, rtol=1e-5)


def test_a_kept_prefix_longer_than_the_next_batch_is_reused_up_to_its_length(model, tokenizer, monkeypatch):
    """Two questions starting with the same words make the first call's prefix run past the
    shots; the next call shares only the shots and reuses that much of the kept prefix."""
    first = [Choice(SHOTS + "Which planet " + q, (" A", " B")) for q in ("is red?\nAnswer:", "has rings?\nAnswer:")]
    second = [Choice(SHOTS + q + "\nAnswer:", (" A", " B", " C", " D")) for q in QUESTIONS[:3]]
    engine = backend_for(model, tokenizer).engine
    engine.choice(first)
    kept = len(engine.batcher.kept[0])
    computed = engine.tokens_processed
    got = engine.choice(second)
    assert len(engine.batcher.kept[0]) == kept  # not recomputed: the kept one was sliced
    shots = len(tokenizer.encode(SHOTS))
    suffixes = sum(len(tokenizer.encode(r.context)) for r in second) - 3 * shots
    assert engine.tokens_processed - computed <= suffixes + 3  # only the questions went through the model
    monkeypatch.setattr(batching, "MIN_SHARED_PREFIX", 10 ** 9)
    assert_same_choices(got, backend_for(model, tokenizer).engine.choice(second))


def test_generate_reports_each_request_as_its_last_sample_ends(model, tokenizer):
    """on_done(i, result) once per request, as soon as its rows end: the 1-token requests before
    the 12-token one, whatever their order; the results are the returned ones, and equal to the
    texts each request gets alone. A request of n=2 is reported once, after both samples."""
    requests = [Generate("Once upon a time", max_new_tokens=12),
                Generate("The capital of France is", max_new_tokens=1),
                Generate("Question: 2 + 2 =", max_new_tokens=1, n=2, temperature=0.8)]
    engine = Engine(model, tokenizer)
    reported: list[tuple[int, tuple[str, ...]]] = []
    got = engine.generate(requests, on_done=lambda i, r: reported.append((i, r.texts)))
    assert sorted(i for i, _ in reported) == [0, 1, 2] and reported[-1][0] == 0
    assert dict(reported) == {i: r.texts for i, r in enumerate(got)}
    assert len(got[2].texts) == 2
    assert [Engine(model, tokenizer).generate([r])[0].texts for r in requests] == [r.texts for r in got]


def test_kept_positions_equal_the_full_forward_and_only_they_reach_the_last_mlp(model):
    """forward(keep=...) gives the full forward's outputs at the kept positions, writes the same
    cache, and runs the last block's MLP on those rows alone (the others' outputs are never read)."""
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (3, 9))
    lengths = torch.tensor([9, 5, 7])
    keep = torch.tensor([8, 9 + 4, 9 + 1, 18 + 6])  # flat b * T + t, two positions of row 1
    seen: list[int] = []
    hook = model.layers[-1].mlp.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[:-1].numel()))
    try:
        with torch.inference_mode():
            full = model(ids, lengths=lengths, return_hidden=True).reshape(27, -1)
            kept = model(ids, lengths=lengths, return_hidden=True, keep=keep)
            logits = model(ids, lengths=lengths, keep=keep)
            cache_full, cache_kept = model.new_cache(3, 12), model.new_cache(3, 12)
            model.prefill_cache(cache_full, ids, lengths)
            prefilled = model.prefill_cache(cache_kept, ids, lengths, keep=keep)
    finally:
        hook.remove()
    assert seen == [27, 4, 4, 27, 4]
    assert kept.shape == (4, model.config.hidden_size)
    torch.testing.assert_close(kept, full[keep], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, model.logits(full[keep]), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(prefilled, full[keep], atol=1e-5, rtol=1e-5)
    assert cache_full.host_lengths == cache_kept.host_lengths
    for layer in range(model.config.num_layers):
        for a, b in zip(cache_full.segments(layer, 9), cache_kept.segments(layer, 9)):
            assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_the_mlp_and_the_attention_norm_run_in_blocks_of_rows_with_the_whole_batch_result(model, monkeypatch):
    """Block.forward feeds the MLP and the attention's norm at most BLOCK_ROWS rows at a time
    (bounding a long batch's largest tensors) and gives the unblocked forward's outputs, with and
    without kept positions."""
    from qwen_eval.model import model as model_module

    torch.manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (3, 9))
    lengths = torch.tensor([9, 6, 8])
    keep = torch.tensor([8, 9 + 5, 18 + 7])
    with torch.inference_mode():
        whole = model(ids, lengths=lengths, return_hidden=True)
        whole_kept = model(ids, lengths=lengths, return_hidden=True, keep=keep)
    seen: list[int] = []
    normed: list[int] = []
    hooks = [model.layers[0].mlp.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0])),
             model.layers[0].attn_norm.register_forward_hook(lambda mod, args, out: normed.append(args[0].shape[0]))]
    monkeypatch.setattr(model_module, "BLOCK_ROWS", 5)
    try:
        with torch.inference_mode():
            blocked = model(ids, lengths=lengths, return_hidden=True)
            blocked_kept = model(ids, lengths=lengths, return_hidden=True, keep=keep)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == [5, 5, 5, 5, 5, 2] * 2  # 27 rows in blocks of 5, in both forwards (layer 0 keeps all)
    assert normed == [5, 5, 5, 5, 5, 2] * 2
    torch.testing.assert_close(blocked, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(blocked_kept, whole_kept, atol=1e-5, rtol=1e-5)


def test_the_log_softmax_runs_over_blocks_of_rows_with_the_whole_call_numbers(model, tokenizer, monkeypatch):
    """Scoring and perplexity take the fp32 log-softmax SOFTMAX_ROWS rows at a time (its input
    copy and output are a scoring step's largest tensors) and give, bitwise, what one call over
    each lm_head chunk gives."""
    requests = choice_requests()
    rolling = [Rolling(TEXT, max_length=40, stride=20)]
    monkeypatch.setattr(scoring, "SOFTMAX_ROWS", 1 << 30)
    whole = Engine(model, tokenizer).choice(requests), Engine(model, tokenizer).rolling(rolling)
    widths: list[int] = []
    log_softmax = torch.log_softmax
    monkeypatch.setattr(torch, "log_softmax", lambda x, dim: widths.append(x.shape[0]) or log_softmax(x, dim=dim))
    monkeypatch.setattr(scoring, "SOFTMAX_ROWS", 3)
    blocked = Engine(model, tokenizer).choice(requests), Engine(model, tokenizer).rolling(rolling)
    assert blocked == whole
    assert widths and max(widths) == 3 and sum(widths) > 3 * len(requests) // 2


def test_a_scratch_cache_holds_one_layer_and_scores_as_a_full_cache(model, monkeypatch):
    """Scoring after a shared prefix writes its rows' keys into a scratch cache: one storage for
    every layer (each layer's keys are read by its own attention only), the same hidden states
    as a cache that keeps all layers; and the engine asks for one."""
    torch.manual_seed(2)
    prefix_ids = torch.randint(0, model.config.vocab_size, (1, 12))
    ids = torch.randint(0, model.config.vocab_size, (3, 7))
    lengths = torch.tensor([7, 4, 6])
    keep = torch.tensor([6, 7 + 3, 14 + 5])
    with torch.inference_mode():
        prefix = model.new_cache(1, 12)
        model.prefill_cache(prefix, prefix_ids, torch.tensor([12]))
        hidden = {}
        for scratch in (False, True):
            cache = model.new_cache(3, 7, scratch=scratch)
            cache.load_prefix(prefix.keys, prefix.values, 1.0)
            hidden[scratch] = model(ids, cache=cache, lengths=lengths, return_hidden=True, keep=keep)
            stores = {k.data_ptr() for k in cache.keys} | {v.data_ptr() for v in cache.values}
            assert len(stores) == (2 if scratch else 2 * model.config.num_layers)
    assert torch.equal(hidden[True], hidden[False])

    asked: list[bool] = []
    new_cache = type(model).new_cache
    monkeypatch.setattr(type(model), "new_cache",
                        lambda self, b, n, scratch=False: asked.append(scratch) or new_cache(self, b, n, scratch=scratch))
    tokenizer = load_tokenizer(None)
    Engine(model, tokenizer).choice(choice_requests()[:4])  # one subject: a prefix, then its questions
    # the kept prefix needs every layer; the questions' batches (split by width) do not
    assert asked[0] is False and len(asked) > 1 and all(asked[1:])
