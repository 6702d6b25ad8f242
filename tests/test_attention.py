"""Attention's one entry point (model/attention/): every kernel option against a float64
reference written from the one rule (query at p sees keys j <= p, and j > p - w in a window),
in every phase: no cache, a prompt into an empty cache, a prompt continued in the cache, after a
shared prefix, and decoding; right-padded rows at different positions, GQA, windows, LogN."""

from __future__ import annotations

import math

import pytest
import torch

from helpers_checkpoints import max_abs_diff, random_model, tiny_config
from qwen_eval.model import attention as attention_module
from qwen_eval.model.attention import cpu_blocks, masks, sdpa
from qwen_eval.model.attention import (AttentionMeta, AttentionUnavailable, Kernel, KVCache, attend, merge_partials,
                                       resolve_kernel)
from qwen_eval.model.model import LongContextOptions

CPU_KERNELS = ["sdpa", "math", "flex"]  # flash is CUDA only (benchmarks/gpu_14b.py checks it on a GPU)
TOL = 2e-5


def reference(q, keys, values, key_positions, q_positions, window):
    """float64 attention of q [B, T, H, d] over per-row keys [B, N, kv, d] at key_positions [B, N]
    (-1: no key) for queries at q_positions [B, T]."""
    b, t, h, d = q.shape
    g = h // keys.shape[2]
    out = torch.zeros(b, t, h, d, dtype=torch.float64)
    for row in range(b):
        for i in range(t):
            p = int(q_positions[row, i])
            ok = (key_positions[row] >= 0) & (key_positions[row] <= p)
            if window:
                ok &= key_positions[row] > p - window
            for head in range(h):
                k = keys[row, ok, head // g].double()
                scores = k @ q[row, i, head].double() / math.sqrt(d)
                out[row, i, head] = torch.softmax(scores, 0) @ values[row, ok, head // g].double()
    return out


def run(kernel, q, k, v, starts, cache, window):
    meta = AttentionMeta.build(kernel, starts, starts.tolist() if cache is not None else None, q.shape[1],
                               (window,), 1, cache)
    out = attend(q, k, v, meta, 0)
    if cache is not None:
        cache.advance(None, q.shape[1])
    return out


def tensors(b, t, h, kv, d, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(b, t, h, d, generator=gen), torch.randn(b, t, kv, d, generator=gen),
            torch.randn(b, t, kv, d, generator=gen))


SHAPES = [pytest.param(4, 2, id="gqa"), pytest.param(4, 4, id="mha")]
WINDOWS = [0, 3, 9]


@pytest.mark.parametrize("kernel", CPU_KERNELS)
@pytest.mark.parametrize("heads, kv_heads", SHAPES)
@pytest.mark.parametrize("window", WINDOWS)
def test_no_cache(kernel, heads, kv_heads, window):
    b, t, d = 3, 13, 16
    q, k, v = tensors(b, t, heads, kv_heads, d, seed=1)
    starts = torch.zeros(b, dtype=torch.long)
    got = run(kernel, q, k, v, starts, None, window)
    pos = torch.arange(t).expand(b, t)
    assert max_abs_diff(got, reference(q, k, v, pos, pos, window)) < TOL


def fill(cache, lengths, kv_heads, d, seed, start=0):
    """Rows of the cache hold positions start ... start + lengths[b] - 1 of random keys; returns
    the keys and values per row as [B, N, kv, d] with their positions (-1: not held)."""
    gen = torch.Generator().manual_seed(seed)
    n = max(lengths)
    k = torch.randn(len(lengths), n, kv_heads, d, generator=gen)
    v = torch.randn(len(lengths), n, kv_heads, d, generator=gen)
    pos = torch.full((len(lengths), n), -1)
    for row, m in enumerate(lengths):
        cols = torch.arange(m)
        cache.keys[0][row, cols] = k[row, :m]
        cache.values[0][row, cols] = v[row, :m]
        pos[row, :m] = start + cols
    cache.lengths = torch.tensor([start + m for m in lengths])
    cache.host_lengths = [start + m for m in lengths]
    return k, v, pos


@pytest.mark.parametrize("kernel", CPU_KERNELS)
@pytest.mark.parametrize("heads, kv_heads", SHAPES)
@pytest.mark.parametrize("window", WINDOWS)
def test_prompts_into_an_empty_cache(kernel, heads, kv_heads, window):
    """The fresh phase with a cache: keys land at their positions, attention as without one."""
    b, t, d = 3, 11, 16
    q, k, v = tensors(b, t, heads, kv_heads, d, seed=2)
    cache = KVCache(1, b, t + 4, kv_heads, d, dtype=torch.float32, device=torch.device("cpu"))
    got = run(kernel, q, k, v, torch.zeros(b, dtype=torch.long), cache, window)
    pos = torch.arange(t).expand(b, t)
    assert max_abs_diff(got, reference(q, k, v, pos, pos, window)) < TOL
    assert torch.equal(cache.keys[0][:, :t], k) and torch.equal(cache.values[0][:, :t], v)
    assert cache.host_lengths == [t] * b and cache.lengths.tolist() == [t] * b


@pytest.mark.parametrize("kernel", CPU_KERNELS)
@pytest.mark.parametrize("heads, kv_heads", SHAPES)
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("t", [1, 6], ids=["decode", "continue"])
def test_cached_rows_of_different_lengths(kernel, heads, kv_heads, window, t):
    b, d = 3, 16
    lengths = [9, 4, 14]
    cache = KVCache(1, b, 14 + t, kv_heads, d, dtype=torch.float32, device=torch.device("cpu"))
    old_k, old_v, old_pos = fill(cache, lengths, kv_heads, d, seed=3)
    q, k, v = tensors(b, t, heads, kv_heads, d, seed=4)
    starts = torch.tensor(lengths)
    got = run(kernel, q, k, v, starts, cache, window)
    q_pos = starts[:, None] + torch.arange(t)
    want = reference(q, torch.cat([old_k, k], 1), torch.cat([old_v, v], 1), torch.cat([old_pos, q_pos], 1), q_pos,
                     window)
    assert max_abs_diff(got, want) < TOL


@pytest.mark.parametrize("kernel", CPU_KERNELS)
@pytest.mark.parametrize("heads, kv_heads", SHAPES)
@pytest.mark.parametrize("window", [0, 5, 40])
@pytest.mark.parametrize("t", [1, 7], ids=["decode", "prefill"])
def test_after_a_shared_prefix(kernel, heads, kv_heads, window, t):
    """Cascade: the prefix once for the batch, each row's own keys after it, merged by their
    log-sum-exp; windows that reach into the prefix, rows at different positions."""
    b, d, p = 3, 16, 23
    gen = torch.Generator().manual_seed(5)
    prefix_k, prefix_v = torch.randn(1, p, kv_heads, d, generator=gen), torch.randn(1, p, kv_heads, d, generator=gen)
    cache = KVCache(1, b, 12 + t, kv_heads, d, dtype=torch.float32, device=torch.device("cpu"))
    cache.load_prefix([prefix_k], [prefix_v], 1.0)
    assert cache.segments(0, p + 1)[0].keys is prefix_k  # by reference
    own = [0, 5, 12]  # row b's own tokens before the new ones
    old_k, old_v, old_pos = fill(cache, own, kv_heads, d, seed=6, start=p)
    q, k, v = tensors(b, t, heads, kv_heads, d, seed=7)
    starts = torch.tensor([p + m for m in own])
    got = run(kernel, q, k, v, starts, cache, window)
    q_pos = starts[:, None] + torch.arange(t)
    keys = torch.cat([prefix_k.expand(b, -1, -1, -1), old_k, k], 1)
    values = torch.cat([prefix_v.expand(b, -1, -1, -1), old_v, v], 1)
    positions = torch.cat([torch.arange(p).expand(b, p), old_pos, q_pos], 1)
    assert max_abs_diff(got, reference(q, keys, values, positions, q_pos, window)) < TOL


def test_merge_of_partials_is_exact_and_ignores_empty_parts():
    gen = torch.Generator().manual_seed(8)
    scores = torch.randn(2, 3, 4, 10, generator=gen) * 3
    values = torch.randn(2, 3, 4, 10, 5, generator=gen)

    def part(sl):
        s = scores[..., sl]
        return (torch.softmax(s, -1)[..., None] * values[..., sl, :]).sum(-2), torch.logsumexp(s, -1)
    whole = (torch.softmax(scores, -1)[..., None] * values).sum(-2)
    assert max_abs_diff(merge_partials([part(slice(0, 4)), part(slice(4, 10))]), whole) < 1e-6
    empty = (torch.full_like(whole, float("nan")).nan_to_num(0.0), torch.full(whole.shape[:-1], float("-inf")))
    assert max_abs_diff(merge_partials([empty, part(slice(0, 10))]), whole) < 1e-6


def test_a_kernel_named_but_unavailable_is_one_clear_error():
    cpu = torch.device("cpu")
    assert resolve_kernel("auto", cpu, torch.float32) == "sdpa"
    with pytest.raises(AttentionUnavailable, match=r"^model.attention=flash: flash-attn runs on CUDA only"):
        resolve_kernel("flash", cpu, torch.float32)
    with pytest.raises(AttentionUnavailable, match=r"model.attention='fast' is not a kernel; use one of auto"):
        resolve_kernel("fast", cpu, torch.float32)


def test_sdpa_without_its_log_sum_exp_kernel_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setitem(sdpa.SDPA_LSE_OPS, "cpu", "_no_such_kernel")
    with pytest.raises(AttentionUnavailable, match="^model.attention=sdpa: this torch has no aten._no_such_kernel"):
        resolve_kernel("sdpa", torch.device("cpu"), torch.float32)
    assert resolve_kernel("math", torch.device("cpu"), torch.float32) == "math"


def test_keep_rows_moves_only_the_rows_that_change_place():
    cache = KVCache(2, 4, 6, 1, 2, dtype=torch.float32, device=torch.device("cpu"))
    for layer in range(2):
        cache.keys[layer][:] = torch.arange(4.0)[:, None, None, None]
        cache.values[layer][:] = -torch.arange(4.0)[:, None, None, None]
    cache.lengths = torch.tensor([3, 5, 2, 4])
    cache.host_lengths = [3, 5, 2, 4]
    storage = cache.keys[0].data_ptr()
    cache.keep_rows([0, 3, 2])  # row 1 finished; row 3 moves into its place
    assert cache.keys[0].data_ptr() == storage  # no new storage
    assert cache.keys[1][:, 0, 0, 0].tolist() == [0, 3, 2] and cache.values[1][:, 0, 0, 0].tolist() == [0, -3, -2]
    assert cache.lengths.tolist() == [3, 4, 2] and cache.host_lengths == [3, 4, 2]
    assert cache.keys[0][1, 4, 0, 0] == 1  # beyond row 3's length nothing was copied


def test_stacked_copies_each_row_after_its_prefix_and_consumes_the_inputs():
    """Two caches after different prefixes (3 and 1 positions) stack into one without a shared
    prefix: each row holds its own prefix copy then its own keys, room is added after the longest
    row, and every layer of the inputs is released once copied (None: using it again fails)."""
    cpu = torch.device("cpu")
    a, b = (KVCache(2, n, 4, 1, 2, dtype=torch.float32, device=cpu) for n in (2, 1))
    for cache, start, base in ((a, 3, 10.0), (b, 1, 20.0)):
        prefix = [torch.full((1, start, 1, 2), -base) for _ in range(2)]
        cache.load_prefix(prefix, [p - 1 for p in prefix], alpha=1.0)
        for layer in range(2):
            cache.keys[layer][:] = base + torch.arange(cache.batch_size * 4.0).view(-1, 4, 1, 1)
            cache.values[layer][:] = cache.keys[layer] + 0.5
        cache.advance(torch.tensor([2] * cache.batch_size), 2)
    out = KVCache.stacked([a, b], room=3)
    assert out.prefix is None and out.start == 0 and out.capacity == 5 + 3  # a's rows reach position 5
    assert out.host_lengths == [5, 5, 3] and out.lengths.tolist() == [5, 5, 3]
    for layer in range(2):
        assert out.keys[layer][0, :, 0, 0].tolist() == [-10, -10, -10, 10, 11, 0, 0, 0]
        assert out.keys[layer][1, :5, 0, 0].tolist() == [-10, -10, -10, 14, 15]
        assert out.keys[layer][2, :3, 0, 0].tolist() == [-20, 20, 21]
        assert out.values[layer][2, :3, 0, 0].tolist() == [-21, 20.5, 21.5]
    assert all(t is None for c in (a, b) for t in c.keys + c.values)


# --- the model with each kernel: LogN, windows, NTK through every phase --------------------------

@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(vocab_size=300, hidden_size=64, num_heads=4, num_kv_heads=2, seq_length=32),
                        seed=5)


@pytest.fixture
def kernel_model(model):
    yield model
    model.set_attention("auto")


ON = LongContextOptions(use_dynamic_ntk=True, use_logn_attn=True, window_attn=(20, 48))


@torch.inference_mode()
@pytest.mark.parametrize("kernel", CPU_KERNELS)
def test_model_phases_match_the_math_kernel(kernel_model, kernel):
    """Right-padded rows beyond seq_length (LogN, NTK, a window that bites): cache-less, into a
    cache, continued, after a shared prefix, and decoded, each against the math kernel."""
    model = kernel_model
    ids = torch.randint(0, 300, (3, 60), generator=torch.Generator().manual_seed(9))
    lengths = torch.tensor([60, 45, 30])
    prefix = ids[:1, :24]

    def phases():
        out = [model(ids, lengths=lengths, options=ON)]
        cache = model.new_cache(3, 70)
        out.append(model.prefill_cache(cache, ids[:, :40], torch.tensor([40, 35, 30]), ON, return_hidden=False))
        out.append(model(ids[:, 40:50], cache=cache, options=ON))
        out.append(model(ids[:, 50:51], cache=cache, options=ON))
        shared = model.new_cache(1, 24)
        model.prefill_cache(shared, prefix, torch.tensor([24]), ON, alphas=[3.0])
        cache = model.new_cache(3, 40)
        cache.load_prefix(shared.keys, shared.values, 3.0)
        suffix = ids[:, 24:60].clone()
        suffix[1:] = ids[:1, 24:60]  # rows share the prefix only
        out.append(model(suffix, cache=cache, lengths=torch.tensor([36, 20, 10]), options=ON))
        out.append(model(ids[:, :1], cache=cache, options=ON))
        return out

    model.set_attention("math")
    want = phases()
    model.set_attention(kernel)
    got = phases()
    for phase, (g, w) in enumerate(zip(got, want)):
        assert max_abs_diff(g, w) < 1e-4, phase


def test_no_layer_syncs_with_the_device(kernel_model, monkeypatch):
    """Sizes come from host values kept by the cache: a decode step never reads a device value
    back (no .item(), int(tensor), .tolist() or bool(tensor) anywhere in the forward)."""
    model = kernel_model
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    cache = model.new_cache(2, 20)
    syncs = []
    with torch.inference_mode():
        model.prefill_cache(cache, ids, torch.tensor([12, 9]), ON)
        for name in ("item", "tolist", "__int__", "__bool__", "__float__"):
            real = getattr(torch.Tensor, name)

            def counting(self, *args, _real=real, _name=name):
                syncs.append(_name)
                return _real(self, *args)
            monkeypatch.setattr(torch.Tensor, name, counting)
        model(ids[:, :1], cache=cache, options=ON)  # a decode step
        monkeypatch.undo()
    assert not syncs


def test_flex_is_reported_as_eager_on_cpu_and_flash_is_refused():
    assert "eagerly" in attention_module.__doc__ and resolve_kernel("flex", torch.device("cpu"), torch.float32) == "flex"
    with pytest.raises(AttentionUnavailable):
        resolve_kernel("flash", torch.device("cpu"), torch.bfloat16)


def test_model_attention_option_through_the_backend():
    """model.attention reaches the model through the qwen backend; results record the kernel; a
    kernel that cannot run here is the one-line error before any weights are read."""
    from qwen_eval.backends.qwen import QwenBackend
    from qwen_eval.errors import UserError

    base = {"name": "tiny", "backend": "qwen", "preset": "tiny", "device": "cpu", "dtype": "auto"}
    assert QwenBackend.from_config(base).describe()["attention"] == "sdpa"  # auto on CPU
    backend = QwenBackend.from_config({**base, "attention": "math"})
    assert backend.describe()["attention"] == "math" and backend.engine.model.attention_kernel() == "math"
    with pytest.raises(UserError, match=r"^model.attention=flash: flash-attn runs on CUDA only"):
        QwenBackend.from_config({**base, "attention": "flash"})


@pytest.mark.parametrize("kernel", ["sdpa", "math"])
@pytest.mark.parametrize("window", [0, 4])
def test_blocks_of_queries_give_the_same_attention(kernel, window, monkeypatch):
    """Long inputs run over blocks of queries (masks stay bounded): force blocks of a few queries."""
    args = dict(heads=4, kv_heads=2, window=window)
    whole = [test(kernel=kernel, **args) for test in (_no_cache, _cached, _prefixed)]
    monkeypatch.setattr(masks, "MASK_BLOCK_ELEMENTS", 200)
    blocked = [test(kernel=kernel, **args) for test in (_no_cache, _cached, _prefixed)]
    for a, b in zip(whole, blocked):
        assert max_abs_diff(a, b) < 1e-6


def _no_cache(kernel, heads, kv_heads, window):
    q, k, v = tensors(3, 13, heads, kv_heads, 16, seed=1)
    return run(kernel, q, k, v, torch.zeros(3, dtype=torch.long), None, window)


def _cached(kernel, heads, kv_heads, window):
    cache = KVCache(1, 3, 20, kv_heads, 16, dtype=torch.float32, device=torch.device("cpu"))
    fill(cache, [9, 4, 14], kv_heads, 16, seed=3)
    q, k, v = tensors(3, 6, heads, kv_heads, 16, seed=4)
    return run(kernel, q, k, v, torch.tensor([9, 4, 14]), cache, window)


def _prefixed(kernel, heads, kv_heads, window):
    gen = torch.Generator().manual_seed(5)
    cache = KVCache(1, 3, 20, kv_heads, 16, dtype=torch.float32, device=torch.device("cpu"))
    cache.load_prefix([torch.randn(1, 23, kv_heads, 16, generator=gen)],
                      [torch.randn(1, 23, kv_heads, 16, generator=gen)], 1.0)
    fill(cache, [0, 5, 12], kv_heads, 16, seed=6, start=23)
    q, k, v = tensors(3, 7, heads, kv_heads, 16, seed=7)
    return run(kernel, q, k, v, torch.tensor([23, 28, 35]), cache, window)


def test_the_exact_cpu_cascade_equals_the_generic_merge(monkeypatch):
    """sdpa on CPU without a window merges in the kernels' own layout (bitwise the old path);
    the generic per-part merge, which windows and CUDA take, gives the same attention."""
    exact = _prefixed("sdpa", 4, 2, 0)
    monkeypatch.setattr(sdpa.SdpaKernel, "cascade", Kernel.cascade)
    assert max_abs_diff(_prefixed("sdpa", 4, 2, 0), exact) < 1e-6


def test_cpu_flash_query_rows_are_whole_blocks_of_the_kernel():
    """Queries are padded to the CPU flash kernel's query blocks (32 below 192, 64 below 768, 256
    from there), so its brgemm kernels see a bounded set of block shapes; up to 32 stay as they are."""
    rows = cpu_blocks.cpu_flash_query_rows
    assert [rows(m) for m in (1, 7, 32, 33, 191, 192, 700, 767, 768, 769, 2436)] == \
        [1, 7, 32, 64, 192, 192, 704, 768, 768, 1024, 2560]
    for m in range(33, 3000):
        r = rows(m)
        block = 256 if r >= 768 else 64 if r >= 192 else 32
        assert m <= r < m + 256 and r % block == 0, m


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_padded_queries_leave_the_bf16_cpu_cascade_bitwise_unchanged(dtype, monkeypatch):
    """The padding adds zero queries and cuts their rows; the real rows, and the layout the merge
    takes exp over, are the unpadded kernel's: the cascade's output is bitwise the same."""
    calls = []
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

    def spy(q, *args, **kwargs):
        calls.append(q.shape[2])
        return op(q, *args, **kwargs)

    monkeypatch.setattr(sdpa, "SDPA_LSE_OPS", {"cpu": "spied"})
    monkeypatch.setattr(torch.ops.aten, "spied", spy, raising=False)
    gen = torch.Generator().manual_seed(11)
    b, t, heads, kv_heads, d, p = 3, 40, 14, 2, 64, 425  # the real model's heads; 3 x 40 x 7 = 840 queries
    cache = KVCache(1, b, t, kv_heads, d, dtype=dtype, device=torch.device("cpu"))
    cache.load_prefix([torch.randn(1, p, kv_heads, d, generator=gen).to(dtype)],
                      [torch.randn(1, p, kv_heads, d, generator=gen).to(dtype)], 1.0)
    q, k, v = (x.to(dtype) for x in tensors(b, t, heads, kv_heads, d, seed=12))
    starts = torch.full((b,), p)

    def cascade():
        cache.reset()
        cache.load_prefix(*cache_prefix, 1.0)
        return run("sdpa", q, k, v, starts, cache, 0)

    cache_prefix = ([cache.segments(0, p + 1)[0].keys], [cache.segments(0, p + 1)[0].values])
    padded = cascade()
    assert calls == [1024, 320]  # 840 prefix queries -> 4 blocks of 256; 280 own -> 5 of 64
    monkeypatch.setattr(cpu_blocks, "cpu_flash_query_rows", lambda m: m)
    assert torch.equal(cascade(), padded)
    assert calls[2:] == [840, 280]


@pytest.mark.parametrize("masked", [False, True])
def test_padded_lse_attention_returns_the_unpadded_values_in_the_unpadded_layout(masked, monkeypatch):
    """The merge takes exp of the lse, and torch's exp can round an ulp differently over another
    memory layout (the real model flipped 2 of 285 MMLU log-probs in the 5th digit that way): the
    cut rows come back in the layout the kernel gives without padding, not merely equal."""
    gen = torch.Generator().manual_seed(13)
    q = torch.randn(3, 2, 280, 64, generator=gen).to(torch.bfloat16)
    k, v = (torch.randn(3, 2, 40, 64, generator=gen).to(torch.bfloat16) for _ in range(2))
    mask = torch.zeros(3, 1, 280, 40, dtype=torch.bfloat16).masked_fill(torch.rand(3, 1, 280, 40, generator=gen) < 0.3,
                                                                        float("-inf")) if masked else None
    padded = sdpa.lse_attention(q, k, v, mask)
    monkeypatch.setattr(cpu_blocks, "cpu_flash_query_rows", lambda m: m)
    plain = sdpa.lse_attention(q, k, v, mask)
    for got, want in zip(padded, plain):
        assert torch.equal(got, want) and got.stride() == want.stride()


def test_cpu_flash_key_columns_are_whole_blocks_of_32():
    columns = cpu_blocks.cpu_flash_key_columns
    assert [columns(n) for n in (1, 31, 32, 33, 511, 512, 513, 2047)] == [32, 32, 32, 64, 512, 512, 544, 2048]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_cpu_cascade_pads_own_keys_to_whole_blocks_in_bf16_only(dtype, monkeypatch):
    """In bf16 the own-key part gets zero keys up to a whole block of 32, hidden by -inf mask
    columns: the kernel then meets 16 key tails instead of one per batch width (its cache of
    compiled kernels stops growing). The padded keys weigh nothing: the result is the attention
    of the real keys to bf16's rounding (the kernel's sums run over other lengths, so not
    bitwise). fp32 has no such cache and is left exact."""
    calls = []
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

    def spy(q, k, v, *args, attn_mask=None, **kwargs):
        calls.append((k.shape[2], None if attn_mask is None else attn_mask.clone()))
        return op(q, k, v, *args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(sdpa, "SDPA_LSE_OPS", {"cpu": "spied"})
    monkeypatch.setattr(torch.ops.aten, "spied", spy, raising=False)
    gen = torch.Generator().manual_seed(21)
    b, t, heads, kv_heads, d, p = 3, 40, 14, 2, 64, 100
    prefix = [torch.randn(1, p, kv_heads, d, generator=gen).to(dtype) for _ in range(2)]
    q, k, v = (x.to(dtype) for x in tensors(b, t, heads, kv_heads, d, seed=22))
    starts = torch.full((b,), p)

    def cascade():
        cache = KVCache(1, b, t, kv_heads, d, dtype=dtype, device=torch.device("cpu"))
        cache.load_prefix([prefix[0]], [prefix[1]], 1.0)
        return run("sdpa", q, k, v, starts, cache, 0)

    got = cascade()
    (prefix_keys, no_mask), (own_keys, mask) = calls
    assert prefix_keys == p and no_mask is None
    if dtype == torch.float32:
        assert own_keys == t and mask.shape[-1] == t
        return
    assert own_keys == 64 and mask.shape[-1] == 64
    real = mask[:, :, :t * heads // kv_heads]  # the rows past them pad the queries to whole blocks
    assert torch.isneginf(real[..., t:]).all() and not torch.isneginf(real[..., :t]).all()
    keys = torch.cat([prefix[0].expand(b, -1, -1, -1), k], 1)
    values = torch.cat([prefix[1].expand(b, -1, -1, -1), v], 1)
    positions = torch.arange(p + t).expand(b, -1)
    want = reference(q, keys, values, positions, positions[:, p:], 0)
    monkeypatch.setattr(cpu_blocks, "cpu_flash_key_columns", lambda n: n)
    unpadded = cascade()
    assert calls[-1][0] == t
    assert max_abs_diff(got, unpadded) <= 2 ** -7  # an ulp of bf16 below 2: the rounding of one output
    assert max_abs_diff(got, want) <= max_abs_diff(unpadded, want) + 2 ** -7
