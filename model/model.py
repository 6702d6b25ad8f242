"""The Qwen architecture in plain PyTorch (Qwen-1 7B/14B, and Qwen1.5/2/2.5 via their configs).

    logits = model(input_ids)                       # [B, T] -> [B, T, V]

Follows shared/design/qwen-architecture.md: pre-norm blocks of RMSNorm -> fused QKV (with bias)
-> rotate-half RoPE in fp32 -> attention -> RMSNorm -> SwiGLU MLP `down(up(x) * silu(gate(x)))`
(Qwen-1's w1 is `up`, its w2 is the SiLU `gate`), final RMSNorm, lm_head.

Long context, as Qwen does it, each a switch:
  * dynamic NTK: RoPE base scaled by alpha(n)^(d/(d-2)), alpha from each row's real length n,
    chosen at the cache-less call and kept for every later call that extends that cache;
  * LogN: queries at position p >= seq_length scaled by ln(p+1)/ln(seq_length);
  * window attention: layer l lets query i see keys j with i - w_l < j <= i (w_l = 0: full).

Positions are each token's true index in its own sequence. Batches are right-padded and the KV
cache keeps one length per row, so a row's numbers never depend on what it is batched with.
(The reference uses padded indices for left-padded batches — quirk Q1 — which only changes
LogN beyond seq_length in padded batches.) No dense L x L mask is ever built: unmasked causal
attention uses SDPA's `is_causal`, and masked attention runs over blocks of queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

try:  # optional, CUDA only
    from flash_attn import flash_attn_varlen_func
except Exception:  # ImportError, or a broken CUDA build
    flash_attn_varlen_func = None


@dataclass
class QwenConfig:
    vocab_size: int = 152064
    hidden_size: int = 5120
    num_layers: int = 40
    num_heads: int = 40
    num_kv_heads: int | None = None  # grouped-query attention (Qwen2 format); None = num_heads
    intermediate_size: int = 13696  # SwiGLU width F (Qwen-1's config.json stores 2F)
    rms_norm_eps: float = 1e-6
    rope_base: float = 10000.0
    rotary_pct: float = 1.0
    seq_length: int = 2048  # training length S: where dynamic NTK and LogN begin
    use_dynamic_ntk: bool = True
    use_logn_attn: bool = True
    window_attn: tuple[int, ...] | None = None  # per-layer window sizes; 0 or None = full attention
    tie_word_embeddings: bool = False
    qkv_bias: bool = True
    head_dim: int = field(init=False)
    rotary_dim: int = field(init=False)

    def __post_init__(self) -> None:
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"hidden_size {self.hidden_size}, num_heads {self.num_heads} and "
                             f"num_kv_heads {self.num_kv_heads} do not divide evenly")
        self.head_dim = self.hidden_size // self.num_heads
        self.rotary_dim = int(self.head_dim * self.rotary_pct) if self.rotary_pct < 1 else self.head_dim
        if self.window_attn is not None:
            self.window_attn = tuple(int(w) for w in self.window_attn)
            if len(self.window_attn) != self.num_layers:
                raise ValueError(f"window_attn has {len(self.window_attn)} sizes for {self.num_layers} layers")

    @classmethod
    def preset(cls, name: str, **overrides) -> "QwenConfig":
        return replace(PRESETS[name], **overrides) if overrides else replace(PRESETS[name])


PRESETS: dict[str, QwenConfig] = {
    "qwen-14b": QwenConfig(vocab_size=152064, hidden_size=5120, num_layers=40, num_heads=40,
                           intermediate_size=13696, seq_length=2048),
    "qwen-7b": QwenConfig(vocab_size=151936, hidden_size=4096, num_layers=32, num_heads=32,
                          intermediate_size=11008, seq_length=8192),
    # Seeded random model with the real vocabulary: 4.2M parameters besides the embeddings.
    "tiny": QwenConfig(vocab_size=151936, hidden_size=256, num_layers=4, num_heads=4,
                       intermediate_size=1024, seq_length=2048),
}


def window_schedule(num_layers: int, seq_length: int, *, groups: int = 4) -> tuple[int, ...]:
    """The default layer-wise window sizes: lower layers see shorter windows.

    Qwen never published its sizes (spec section 10; the maintainers' example was "first 4 layers
    2048, next 4 layers 4096, then 8192..."). Ours: the layers split into `groups` equal bands,
    band g gets a window of seq_length * 2**g, and the top band attends fully (0).
    """
    sizes = []
    for layer in range(num_layers):
        band = layer * groups // num_layers
        sizes.append(0 if band == groups - 1 else seq_length * 2 ** band)
    return tuple(sizes)


# ---------------------------------------------------------------------------------------------
# Long-context factors (spec sections 8 and 9)


def ntk_alpha(length: int, seq_length: int) -> float:
    """Dynamic NTK factor: max(2^ceil(log2(n/S) + 1) - 1, 1), in double precision as Qwen does."""
    context_value = math.log(length / seq_length, 2) + 1
    return max(2 ** math.ceil(context_value) - 1, 1)


def logn_factors(positions: Tensor, seq_length: int) -> Tensor:
    """LogN query scale per position: ln(p+1)/ln(S) beyond S, else 1 (computed in double, fp32 out)."""
    p1 = positions.to(torch.float64) + 1
    scale = torch.where(p1 > seq_length, torch.log(p1) / math.log(seq_length), torch.ones_like(p1))
    return scale.to(torch.float32)


def inverse_frequencies(rotary_dim: int, base: float, device: torch.device | None = None) -> Tensor:
    """theta_i = 1 / base^(2i/d) in fp32: a Python-double base raised to an fp32 exponent tensor."""
    exponents = torch.arange(0, rotary_dim, 2, device=device).float() / rotary_dim
    return 1.0 / (base ** exponents)


def rope_tables(positions: Tensor, alphas: Sequence[float], cfg: QwenConfig) -> tuple[Tensor, Tensor]:
    """cos and sin [B, T, rotary_dim] for each row's positions and NTK alpha, in fp32."""
    inv = torch.stack([
        inverse_frequencies(cfg.rotary_dim, cfg.rope_base * a ** (cfg.rotary_dim / (cfg.rotary_dim - 2)),
                            positions.device)
        for a in alphas])  # [B, d/2]
    angles = positions.to(torch.float32)[:, :, None] * inv[:, None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE on the first rotary_dim channels of x [B, T, H, hd], in fp32."""
    d = cos.shape[-1]
    xf = x.float()
    rot, rest = xf[..., :d], xf[..., d:]
    half = d // 2
    rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
    out = rot * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return torch.cat([out, rest], dim=-1).to(x.dtype) if rest.numel() else out.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Preallocated keys and values per layer, [B, max_len, kv_heads, head_dim], one length per row.

    Rows are right-padded: row b's valid keys are columns [0, lengths[b]). A forward on top of
    the cache writes its T new tokens at columns lengths[b] ... lengths[b] + T - 1 of each row.
    With a shared prefix of P tokens (load_prefix), positions [0, P) live once in prefix_keys and
    values, and row column j holds position P + j; lengths still count positions.
    """

    def __init__(self, cfg: QwenConfig, batch_size: int, max_len: int, *, dtype: torch.dtype,
                 device: torch.device):
        shape = (batch_size, max_len, cfg.num_kv_heads, cfg.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.alphas: list[float] = [1.0] * batch_size  # NTK alpha fixed at the cache-less call
        self.max_len = max_len
        # a prefix every row shares (load_prefix), per layer [1, kv_heads, P, hd]; one copy for
        # the batch
        self.prefix_keys: list[Tensor] | None = None
        self.prefix_values: list[Tensor] | None = None
        self.prefix_len = 0

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    def keep_rows(self, rows: Tensor) -> None:
        """Drop finished rows (decoding continues with the others)."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.lengths = self.lengths.index_select(0, rows)
        self.alphas = [self.alphas[i] for i in rows.tolist()]

    def load_prefix(self, keys: list[Tensor], values: list[Tensor], alpha: float) -> None:
        """Start every row with one shared prefix ([1, P, kv_heads, hd] per layer), by reference.

        Attention reads the prefix once per step for the whole batch instead of once per row
        (decoding after GSM8K's 8 shots is bound by reading the KV cache), and the rows' storage
        only holds what follows it (max_len counts the tokens after the prefix).
        """
        # laid out once as attention reads them: [1, kv_heads, P, hd]
        self.prefix_keys = [k.transpose(1, 2).contiguous() for k in keys]
        self.prefix_values = [v.transpose(1, 2).contiguous() for v in values]
        self.prefix_len = keys[0].shape[1]
        self.lengths.fill_(self.prefix_len)
        self.alphas = [alpha] * self.batch_size


# ---------------------------------------------------------------------------------------------
# Modules


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # normalise in fp32, round to the activation dtype, then scale (spec section 6)
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


class MLP(nn.Module):
    def __init__(self, cfg: QwenConfig):
        super().__init__()
        self.up = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)  # Qwen-1 w1
        self.gate = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)  # Qwen-1 w2 (SiLU)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)  # Qwen-1 c_proj

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.up(x) * F.silu(self.gate(x)))


# Masked attention runs over blocks of queries so the boolean mask stays at most this many
# elements per block (never [L, L] for long inputs).
MASK_BLOCK_ELEMENTS = 1 << 24


class Attention(nn.Module):
    def __init__(self, cfg: QwenConfig):
        super().__init__()
        self.cfg = cfg
        q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, q_size + 2 * kv_size, bias=cfg.qkv_bias)
        self.out = nn.Linear(q_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], logn: Tensor | None, window: int,
                cache: KVCache | None, layer: int, starts: Tensor | None) -> Tensor:
        cfg = self.cfg
        b, t, _ = x.shape
        q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        q, k, v = self.qkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(b, t, cfg.num_heads, cfg.head_dim)
        k = k.view(b, t, cfg.num_kv_heads, cfg.head_dim)
        v = v.view(b, t, cfg.num_kv_heads, cfg.head_dim)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if logn is not None:  # keys and the cache are never scaled
            q = q * logn[:, :, None, None].to(q.dtype)

        if cache is None:
            out = self._attend_no_cache(q, k, v, window)
        else:
            # write the new keys at each row's columns starts[b] ... starts[b] + t - 1 (after a
            # shared prefix, column = position - P)
            p = cache.prefix_len
            cols = starts[:, None] - p + torch.arange(t, device=x.device)[None, :]  # [B, T]
            rows = torch.arange(b, device=x.device)[:, None].expand(b, t)
            cache.keys[layer][rows, cols] = k
            cache.values[layer][rows, cols] = v
            kv_len = int(cols.max()) + 1
            if p:
                out = _attend_after_prefix(q, cache.prefix_keys[layer], cache.prefix_values[layer],
                                           cache.keys[layer][:, :kv_len], cache.values[layer][:, :kv_len], cols, p, window)
            else:
                out = _attend(q, cache.keys[layer][:, :kv_len], cache.values[layer][:, :kv_len], cols, window)
        return self.out(out.reshape(b, t, -1))

    def _attend_no_cache(self, q: Tensor, k: Tensor, v: Tensor, window: int) -> Tensor:
        b, t = q.shape[:2]
        if flash_attn_varlen_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
            # flash-attn: causal (and windowed) without any mask tensor
            cu = torch.arange(0, (b + 1) * t, t, dtype=torch.int32, device=q.device)
            out = flash_attn_varlen_func(q.reshape(b * t, *q.shape[2:]), k.reshape(b * t, *k.shape[2:]),
                                         v.reshape(b * t, *v.shape[2:]), cu, cu, t, t, causal=True,
                                         window_size=(window - 1, 0) if window else (-1, -1))
            return out.view(b, t, *out.shape[1:])
        if not window or window >= t:
            return _sdpa(q, k, v, is_causal=True)
        cols = torch.arange(t, device=q.device)[None, :].expand(b, t)
        return _attend(q, k, v, cols, window)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
    """SDPA on [B, T, H, hd] tensors (grouped-query heads expanded by SDPA itself)."""
    gqa = q.shape[2] != k.shape[2]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask, is_causal=is_causal, enable_gqa=gqa)
    return out.transpose(1, 2)


def _attend(q: Tensor, k: Tensor, v: Tensor, query_cols: Tensor, window: int) -> Tensor:
    """Attention where query (b, i) sits at key column query_cols[b, i] and sees keys j <= that
    column (and > column - window when windowed), over blocks of queries."""
    b, t = q.shape[:2]
    kv_len = k.shape[1]
    block = max(1, min(t, MASK_BLOCK_ELEMENTS // max(1, b * kv_len)))
    outs = []
    for s in range(0, t, block):
        qc = query_cols[:, s:s + block]
        hi = int(qc.max()) + 1
        lo = max(0, int(qc.min()) - window + 1) if window else 0
        keys = torch.arange(lo, hi, device=q.device)
        visible = keys[None, None, :] <= qc[:, :, None]
        if window:
            visible &= keys[None, None, :] > qc[:, :, None] - window
        outs.append(_sdpa(q[:, s:s + block], k[:, lo:hi], v[:, lo:hi], mask=visible[:, None]))
    return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]


# SDPA's CPU flash kernel, which also returns each query's log-sum-exp: two partial attentions
# (shared prefix, own keys) merge exactly with it. A private op, so looked up defensively.
_cpu_flash_with_lse = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _attend_after_prefix(q: Tensor, prefix_k: Tensor, prefix_v: Tensor, k: Tensor, v: Tensor, query_cols: Tensor,
                         prefix_len: int, window: int) -> Tensor:
    """Attention over a prefix all rows share (keys and values [1, kv_heads, P, hd]) then each
    row's own keys ([B, T, kv_heads, hd]); query (b, i) sits at position prefix_len +
    query_cols[b, i] and sees own columns j <= query_cols[b, i] (and only keys within the window
    when windowed). The prefix is read once for the whole batch: its queries are every row's.
    """
    b, t, h = q.shape[:3]
    mask_elements = b * t * h // prefix_k.shape[1] * k.shape[1]  # the own-key mask of the flash path
    if _cpu_flash_with_lse is not None and q.device.type == "cpu" and not window \
            and mask_elements <= MASK_BLOCK_ELEMENTS:
        try:
            return _attend_after_prefix_cpu_flash(q, prefix_k, prefix_v, k, v, query_cols)
        except RuntimeError:  # an older kernel without attn_mask: the exact fallback below
            pass
    return _attend_after_prefix_math(q, prefix_k, prefix_v, k, v, query_cols, prefix_len, window)


def _attend_after_prefix_cpu_flash(q: Tensor, prefix_k: Tensor, prefix_v: Tensor, k: Tensor, v: Tensor,
                                   query_cols: Tensor) -> Tensor:
    """Two flash attentions, each with its log-sum-exp, merged: out = sum_part w_part * out_part
    with w_part = exp(lse_part - lse_total). Every prefix key is visible (no window)."""
    b, t, h, d = q.shape
    kv_heads, n_own = prefix_k.shape[1], k.shape[1]
    g = h // kv_heads
    qg = q.reshape(b, t, kv_heads, g, d)  # query head = kv head * g + j
    # prefix: the queries of every row and head group as one long query sequence per kv head
    q_prefix = qg.permute(2, 0, 1, 3, 4).reshape(1, kv_heads, b * t * g, d)
    out_p, lse_p = _cpu_flash_with_lse(q_prefix, prefix_k, prefix_v, 0.0, False)
    out_p = out_p.view(kv_heads, b, t * g, d).transpose(0, 1)  # [B, kv, t*g, d]
    lse_p = lse_p.view(kv_heads, b, t * g).transpose(0, 1)
    # own keys, causal by column, rows (i, j) per (b, kv head)
    q_own = qg.permute(0, 2, 1, 3, 4).reshape(b, kv_heads, t * g, d)
    visible = torch.arange(n_own, device=q.device)[None, None, :] <= query_cols[:, :, None]  # [B, t, T]
    hidden = ~visible[:, None, :, None, :].expand(b, 1, t, g, n_own).reshape(b, 1, t * g, n_own)
    mask = torch.zeros(hidden.shape, dtype=q.dtype, device=q.device).masked_fill_(hidden, float("-inf"))
    out_o, lse_o = _cpu_flash_with_lse(q_own, k.transpose(1, 2), v.transpose(1, 2), 0.0, False, attn_mask=mask)
    lse = torch.logaddexp(lse_p.float(), lse_o.float())
    out = out_p.float() * torch.exp(lse_p - lse)[..., None] + out_o.float() * torch.exp(lse_o - lse)[..., None]
    return out.view(b, kv_heads, t, g, d).permute(0, 2, 1, 3, 4).reshape(b, t, h, d).to(q.dtype)


def _attend_after_prefix_math(q: Tensor, prefix_k: Tensor, prefix_v: Tensor, k: Tensor, v: Tensor,
                              query_cols: Tensor, prefix_len: int, window: int) -> Tensor:
    """The same attention from the two score blocks in fp32 (any device, windows), over blocks of
    queries; the prefix scores of every row come from one matmul against the single prefix copy."""
    b, t, h, d = q.shape
    kv_heads, n_own = prefix_k.shape[1], k.shape[1]
    g = h // kv_heads
    scale = 1.0 / math.sqrt(d)
    prefix_kt = prefix_k[0].transpose(1, 2)  # [kv, d, P]
    prefix_vh = prefix_v[0]  # [kv, P, d]
    own_kt = k.permute(0, 2, 3, 1)  # [B, kv, d, T]
    own_vh = v.transpose(1, 2)  # [B, kv, T, d]
    key_pos = torch.arange(prefix_len, device=q.device)
    key_cols = torch.arange(n_own, device=q.device)
    block = max(1, min(t, MASK_BLOCK_ELEMENTS // max(1, b * h * (prefix_len + n_own))))
    outs = []
    for s in range(0, t, block):
        qb = q[:, s:s + block].reshape(b, -1, kv_heads, g, d)  # query head = kv head * g + j
        tb = qb.shape[1]
        cols = query_cols[:, s:s + block]  # [B, tb]
        # prefix scores, rows ordered (b, i, j) per kv head: [kv, B*tb*g, P]
        q_prefix = qb.permute(2, 0, 1, 3, 4).reshape(kv_heads, b * tb * g, d)
        sp = torch.matmul(q_prefix, prefix_kt).float() * scale
        if window:  # prefix position p visible when p > position - window
            visible = key_pos[None, None, :] > (prefix_len + cols - window)[:, :, None]  # [B, tb, P]
            sp = sp.masked_fill(~visible[:, :, None, :].expand(b, tb, g, prefix_len).reshape(1, -1, prefix_len),
                                float("-inf"))
        # own scores, rows ordered (i, j) per (b, kv head): [B, kv, tb*g, T]
        q_own = qb.permute(0, 2, 1, 3, 4).reshape(b, kv_heads, tb * g, d)
        so = torch.matmul(q_own, own_kt).float() * scale
        visible = key_cols[None, None, :] <= cols[:, :, None]  # [B, tb, T]
        if window:
            visible &= key_cols[None, None, :] > (cols - window)[:, :, None]
        so = so.masked_fill(~visible[:, None, :, None, :].expand(b, 1, tb, g, n_own).reshape(b, 1, tb * g, n_own),
                            float("-inf"))
        # one softmax: own key j = the query itself is always visible, so the max is finite
        sp_own = sp.view(kv_heads, b, tb * g, prefix_len).permute(1, 0, 2, 3)  # [B, kv, tb*g, P]
        m = torch.maximum(sp_own.amax(-1), so.amax(-1))  # [B, kv, tb*g]
        ep = torch.exp(sp - m.permute(1, 0, 2).reshape(kv_heads, -1)[..., None])
        eo = torch.exp(so - m[..., None])
        denom = ep.view(kv_heads, b, tb * g, prefix_len).sum(-1).permute(1, 0, 2) + eo.sum(-1)
        out_prefix = torch.matmul(ep.to(prefix_vh.dtype), prefix_vh).float()  # [kv, B*tb*g, d]
        out = out_prefix.view(kv_heads, b, tb * g, d).permute(1, 0, 2, 3) + \
            torch.matmul(eo.to(own_vh.dtype), own_vh).float()
        out = out / denom[..., None]  # [B, kv, tb*g, d]
        outs.append(out.view(b, kv_heads, tb, g, d).permute(0, 2, 1, 3, 4).reshape(b, tb, h, d).to(q.dtype))
    return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]


class Block(nn.Module):
    def __init__(self, cfg: QwenConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, rope, logn, window, cache, layer, starts) -> Tensor:
        x = x + self.attn(self.attn_norm(x), rope, logn, window, cache, layer, starts)
        return x + self.mlp(self.mlp_norm(x))


@dataclass(frozen=True)
class LongContextOptions:
    """The three long-context switches for one forward (None: the config's value)."""

    use_dynamic_ntk: bool | None = None
    use_logn_attn: bool | None = None
    window_attn: tuple[int, ...] | None | bool = None  # False: off; None: config; tuple: sizes


class Qwen(nn.Module):
    def __init__(self, cfg: QwenConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight

    # -- the switches -------------------------------------------------------------------------
    def _resolve(self, options: LongContextOptions | None) -> tuple[bool, bool, tuple[int, ...] | None]:
        cfg, o = self.config, options or LongContextOptions()
        ntk = cfg.use_dynamic_ntk if o.use_dynamic_ntk is None else o.use_dynamic_ntk
        logn = cfg.use_logn_attn if o.use_logn_attn is None else o.use_logn_attn
        windows = cfg.window_attn if o.window_attn is None else (o.window_attn or None)
        if windows is not None and len(windows) != cfg.num_layers:
            raise ValueError(f"window_attn has {len(windows)} sizes for {cfg.num_layers} layers")
        return ntk, logn, windows

    def row_alphas(self, lengths: Sequence[int], options: LongContextOptions | None = None) -> list[float]:
        """The NTK alpha each row gets from its real length (1 when dynamic NTK is off)."""
        ntk, _, _ = self._resolve(options)
        return [ntk_alpha(int(n), self.config.seq_length) if ntk else 1.0 for n in lengths]

    # -- forward ------------------------------------------------------------------------------
    def forward(self, input_ids: Tensor, *, cache: KVCache | None = None, lengths: Tensor | None = None,
                options: LongContextOptions | None = None, return_hidden: bool = False) -> Tensor:
        """Logits [B, T, V] (or final hidden states [B, T, D] with return_hidden).

        Without a cache: a full forward of right-padded rows whose real lengths are `lengths`
        (default: all T); NTK alpha comes from each row's length.
        With a cache: the T new tokens of each row go after its cached ones, at positions
        cache.lengths[b] ...; alpha is the one the cache was built with; cache.lengths advance
        by `lengths` (default T) — the real new tokens of each row.
        """
        b, t = input_ids.shape
        device = input_ids.device
        _, use_logn, windows = self._resolve(options)
        if lengths is None:
            lengths = torch.full((b,), t, dtype=torch.long, device=device)
        if cache is None:
            starts = torch.zeros(b, dtype=torch.long, device=device)
            alphas = self.row_alphas(lengths.tolist(), options)
        else:
            starts = cache.lengths.clone()
            alphas = cache.alphas
        positions = starts[:, None] + torch.arange(t, device=device)[None, :]
        rope = rope_tables(positions, alphas, self.config)
        logn = None
        if use_logn and int(positions.max()) + 1 > self.config.seq_length:
            logn = logn_factors(positions, self.config.seq_length)

        x = self.embed(input_ids)
        for i, block in enumerate(self.layers):
            x = block(x, rope, logn, windows[i] if windows else 0, cache, i, starts)
        if cache is not None:
            cache.lengths += lengths
        x = self.norm(x)
        return x if return_hidden else self.lm_head(x)

    def logits(self, hidden: Tensor) -> Tensor:
        """lm_head over already-normalised hidden states (for chunked losses and last-token scoring)."""
        return self.lm_head(hidden)

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        p = self.embed.weight
        return KVCache(self.config, batch_size, max_len, dtype=p.dtype, device=p.device)

    def prefill_cache(self, cache: KVCache, input_ids: Tensor, lengths: Tensor,
                      options: LongContextOptions | None = None, *, alphas: Sequence[float] | None = None,
                      return_hidden: bool = True) -> Tensor:
        """Forward right-padded prompts into an empty cache.

        NTK alpha comes from each row's real length, as in a cache-less call, unless `alphas`
        says otherwise (a shared prefix takes the alpha of the full rows it will serve).
        """
        cache.alphas = list(alphas) if alphas is not None else self.row_alphas(lengths.tolist(), options)
        cache.lengths.zero_()
        return self.forward(input_ids, cache=cache, lengths=lengths, options=options, return_hidden=return_hidden)


def init_weights(model: Qwen, seed: int) -> Qwen:
    """Qwen's initialisation, seeded: N(0, 0.02) weights, N(0, 0.02/sqrt(2L)) output projections,
    zero biases, unit norms. Deterministic across runs and machines (CPU generator)."""
    gen = torch.Generator().manual_seed(seed)
    out_std = 0.02 / math.sqrt(2 * model.config.num_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                std = out_std if name.endswith(("attn.out.weight", "mlp.down.weight")) else 0.02
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model
