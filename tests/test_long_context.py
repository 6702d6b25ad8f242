"""Long context (docs/model.md: dynamic NTK, LogN, window attention): the dynamic-NTK alpha table, LogN
factors, window attention, and the model against a plain reference written from those formulas."""

from __future__ import annotations

import math

import pytest
import torch

from helpers_checkpoints import max_abs_diff, random_model, tiny_config
from qwen_eval.model.model import (LongContextOptions, QwenConfig, apply_rope, logn_factors, ntk_alpha,
                                   rope_tables, window_schedule)

OFF = LongContextOptions(use_dynamic_ntk=False, use_logn_attn=False, window_attn=False)
ON = LongContextOptions(use_dynamic_ntk=True, use_logn_attn=True, window_attn=False)


# --- dynamic NTK (docs/model.md): the alpha table and the rescaled base --------------------------

@pytest.mark.parametrize("n, alpha", [(1, 1), (2047, 1), (2048, 1), (2049, 3), (4096, 3), (4097, 7), (8192, 7),
                                      (8193, 15), (16384, 15), (16385, 31), (32768, 31), (32769, 63)])
def test_ntk_alpha_table_for_2048(n, alpha):
    assert ntk_alpha(n, 2048) == alpha


@pytest.mark.parametrize("n, alpha", [(100, 1), (8192, 1), (8193, 3), (16384, 3), (16385, 7), (32768, 7),
                                      (32769, 15)])
def test_ntk_alpha_for_8192(n, alpha):
    assert ntk_alpha(n, 8192) == alpha


@pytest.mark.parametrize("seq_length", [2048, 8192])
def test_ntk_alpha_closed_form(seq_length):
    """Spec: alpha = 1 for n <= S, else 2^(k+1) - 1 with k the smallest integer where S * 2^k >= n."""
    def closed_form(n: int) -> int:
        if n <= seq_length:
            return 1
        k = 0
        while seq_length << k < n:
            k += 1
        return 2 ** (k + 1) - 1
    wrong = [n for n in range(1, 40000) if ntk_alpha(n, seq_length) != closed_form(n)]
    assert not wrong, wrong[:5]


@pytest.mark.parametrize("alpha, base", [(1, 10000.0), (3, 30527.7367), (7, 72195.8601), (15, 156588.3235),
                                         (31, 327366.3993)])
def test_rope_uses_the_ntk_base(alpha, base):
    """b' = 10000 * alpha^(128/126); the angle of position 1 is theta_i = b'^(-2i/128)."""
    assert 10000 * alpha ** (128 / 126) == pytest.approx(base, abs=1e-4)
    cfg = QwenConfig(vocab_size=8, hidden_size=128, num_layers=1, num_heads=1, intermediate_size=8)
    cos, sin = rope_tables(torch.tensor([[0, 1]]), [float(alpha)], cfg)
    theta = torch.tensor([base ** (-2 * i / 128) for i in range(64)], dtype=torch.float64)
    angle = torch.atan2(sin[0, 1], cos[0, 1]).double()
    assert torch.allclose(angle[:64], theta, rtol=1e-6, atol=1e-9) and torch.equal(angle[:64], angle[64:])
    assert torch.equal(cos[0, 0], torch.ones(128)) and torch.equal(sin[0, 0], torch.zeros(128))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rotary_pct", [1.0, 0.5])
def test_apply_rope_is_bitwise_the_rotate_half_formula(dtype, rotary_pct):
    """The in-place halves give exactly x * cos + [-x2, x1] * sin (rounded once to the dtype),
    the untouched channels beyond rotary_dim included; x itself is left as it was."""
    gen = torch.Generator().manual_seed(0)
    cfg = QwenConfig(vocab_size=8, hidden_size=6 * 64, num_layers=1, num_heads=6, num_kv_heads=2,
                     intermediate_size=8, rotary_pct=rotary_pct)
    x = torch.randn(2, 37, 8, 64, generator=gen).to(dtype)
    before = x.clone()
    cos, sin = rope_tables(torch.arange(37)[None].expand(2, -1) + torch.tensor([[0], [900]]), [1.0, 3.0], cfg)
    d = cfg.rotary_dim
    xf, half = x.float(), d // 2
    rotated = torch.cat([-xf[..., half:d], xf[..., :half]], dim=-1)
    expected = torch.cat([xf[..., :d] * cos[:, :, None] + rotated * sin[:, :, None], xf[..., d:]], dim=-1)
    assert torch.equal(apply_rope(x, cos, sin), expected.to(dtype))
    assert torch.equal(x, before)


# --- LogN (docs/model.md) ----------------------------------------------------------------------

def test_logn_factors_examples():
    positions = torch.tensor([[0, 1000, 2047, 2048, 4095, 8191, 16383]])
    expected = [1.0, 1.0, 1.0, 1.0000640, 1.0909091, 1.1818182, 1.2727273]
    assert logn_factors(positions, 2048)[0].tolist() == pytest.approx(expected, abs=1e-7)
    assert logn_factors(positions, 2048).dtype == torch.float32


# --- window schedule (section 10: sizes unpublished; ours) --------------------------------------

def test_window_schedule():
    assert window_schedule(4, 2048) == (2048, 4096, 8192, 0)
    sizes = window_schedule(40, 2048)
    assert sizes == (2048,) * 10 + (4096,) * 10 + (8192,) * 10 + (0,) * 10
    assert window_schedule(2, 32, groups=2) == (32, 0)
    nonzero = [w for w in window_schedule(24, 8192) if w]
    assert nonzero == sorted(nonzero) and window_schedule(24, 8192)[-1] == 0  # lower layers see less


# --- the model ----------------------------------------------------------------------------------

S = 32  # seq_length of the test models


@pytest.fixture(scope="module")
def model():
    """GQA, small vocabulary, seq_length 32, NTK and LogN on in the config."""
    return random_model(tiny_config(vocab_size=300, hidden_size=64, num_heads=4, num_kv_heads=2, seq_length=S),
                        seed=5)


def ids_of(length: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, 300, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
@pytest.mark.parametrize("length", [1, 17, S])
def test_ntk_and_logn_change_nothing_within_seq_length(model, length):
    ids = ids_of(length, seed=length)
    assert torch.equal(model(ids, options=ON), model(ids, options=OFF))


@torch.inference_mode()
def test_ntk_and_logn_change_logits_beyond_seq_length(model):
    ids = ids_of(S + 8)
    off = model(ids, options=OFF)
    ntk = model(ids, options=LongContextOptions(True, False, False))
    logn = model(ids, options=LongContextOptions(False, True, False))
    assert max_abs_diff(ntk, off) > 1e-3  # alpha(40) = 3 rotates every position differently
    # LogN scales queries at positions >= S only; earlier positions are untouched (causal)
    assert torch.equal(logn[:, :S], off[:, :S]) and max_abs_diff(logn[:, S:], off[:, S:]) > 1e-4


@torch.inference_mode()
def test_window_at_least_the_length_is_full_attention(model):
    n = 40
    ids = ids_of(n, seed=3)
    full = model(ids, options=ON)
    for windows in [(n, n), (n + 5, 1000), (0, n)]:
        assert torch.equal(model(ids, options=LongContextOptions(True, True, windows)), full)
    assert max_abs_diff(model(ids, options=LongContextOptions(True, True, (n - 1, 0))), full) > 1e-4
    # the same through the KV-cache path (a block-masked attention, not SDPA's is_causal)
    cached = {}
    for windows in [False, (n, n + 1), (8, 16)]:
        cache = model.new_cache(1, n)
        options = LongContextOptions(True, True, windows)
        cached[windows] = model.prefill_cache(cache, ids, torch.tensor([n]), options, return_hidden=False)
    assert torch.equal(cached[(n, n + 1)], cached[False])
    assert max_abs_diff(cached[False], full) < 1e-5
    assert max_abs_diff(cached[(8, 16)], full) > 1e-4


# --- a plain reference from the formulas of docs/model.md ---------------------------------------

def reference_logits(model, ids: list[int], *, ntk: bool, logn: bool, windows=None,
                     alpha: int | None = None) -> torch.Tensor:
    """Qwen's forward written out from docs/model.md (forward pass to LogN) with explicit per-query softmax loops.

    alpha: NTK factor to use (default: from the length, section 8); windows: per-layer sizes.
    """
    cfg = model.config
    n, d, hd = len(ids), cfg.rotary_dim, cfg.head_dim
    if alpha is None:
        alpha, k = 1, 0
        if ntk and n > cfg.seq_length:
            while cfg.seq_length << k < n:
                k += 1
            alpha = 2 ** (k + 1) - 1
    base = cfg.rope_base * alpha ** (d / (d - 2))
    theta = 1.0 / (base ** (torch.arange(0, d, 2).float() / d))  # fp32, section 7.1
    angle = torch.arange(n).float()[:, None] * theta[None, :]
    cos, sin = angle.cos(), angle.sin()

    def rope(x):  # x [n, heads, hd], rotate-half on the first d channels
        u, v = x[..., :d // 2], x[..., d // 2:d]
        c, s = cos[:, None, :], sin[:, None, :]
        return torch.cat([u * c - v * s, v * c + u * s, x[..., d:]], dim=-1)

    def rms(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps) * g

    lam = [math.log(p + 1) / math.log(cfg.seq_length) if logn and p + 1 > cfg.seq_length else 1.0
           for p in range(n)]
    x = model.embed.weight[torch.tensor(ids)]
    group = cfg.num_heads // cfg.num_kv_heads
    for layer, block in enumerate(model.layers):
        w = windows[layer] if windows else 0
        h = rms(x, block.attn_norm.weight)
        qkv = h @ block.attn.qkv.weight.T + block.attn.qkv.bias
        q, k, v = qkv.split([cfg.num_heads * hd, cfg.num_kv_heads * hd, cfg.num_kv_heads * hd], dim=-1)
        q, k = rope(q.view(n, -1, hd)), rope(k.view(n, -1, hd))
        v = v.view(n, -1, hd)
        out = torch.zeros(n, cfg.num_heads, hd)
        for i in range(n):
            lo = max(0, i - w + 1) if w else 0
            for head in range(cfg.num_heads):
                kv = head // group
                scores = (lam[i] * q[i, head]) @ k[lo:i + 1, kv].T / math.sqrt(hd)
                out[i, head] = torch.softmax(scores, dim=-1) @ v[lo:i + 1, kv]
        x = x + out.reshape(n, -1) @ block.attn.out.weight.T
        h = rms(x, block.mlp_norm.weight)
        mlp = block.mlp
        x = x + ((h @ mlp.up.weight.T) * torch.nn.functional.silu(h @ mlp.gate.weight.T)) @ mlp.down.weight.T
    return rms(x, model.norm.weight) @ model.lm_head.weight.T


@torch.inference_mode()
@pytest.mark.parametrize("windows", [None, (20, 48)], ids=["full", "windowed"])
def test_model_matches_the_reference_beyond_seq_length(model, windows):
    """Rows of lengths 80, 50, 20 in one right-padded batch: each with its own alpha (7, 3, 1)."""
    lengths = [80, 50, 20]
    ids = ids_of(80, seed=9, batch=3)
    got = model(ids, lengths=torch.tensor(lengths), options=LongContextOptions(True, True, windows or False))
    for row, n in enumerate(lengths):
        want = reference_logits(model, ids[row, :n].tolist(), ntk=True, logn=True, windows=windows)
        assert max_abs_diff(got[row, :n], want) < 1e-5, (row, n)
    plain = reference_logits(model, ids[0].tolist(), ntk=False, logn=False, windows=windows)
    assert max_abs_diff(got[0], plain) > 1e-3  # the reference itself tells the variants apart


@torch.inference_mode()
def test_decoding_across_seq_length_keeps_the_prefill_alpha(model):
    """Spec Q2: alpha is fixed by the cache-less call (28 tokens: alpha 1) while LogN follows the
    live position; token-by-token decoding to 44 tokens equals that reference."""
    ids = ids_of(44, seed=4)
    cache = model.new_cache(1, 44)
    logits = [model.prefill_cache(cache, ids[:, :28], torch.tensor([28]), ON, return_hidden=False)[0]]
    for p in range(28, 44):
        logits.append(model(ids[:, p:p + 1], cache=cache, options=ON)[0])
    got = torch.cat(logits)
    want = reference_logits(model, ids[0].tolist(), ntk=True, logn=True, alpha=1)
    assert max_abs_diff(got, want) < 1e-5
    assert max_abs_diff(got, model(ids, options=ON)[0]) > 1e-3  # a full re-forward uses alpha 3
