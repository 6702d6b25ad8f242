"""The Qwen architecture in plain PyTorch (Qwen-1 7B/14B, and Qwen1.5/2/2.5 via their configs).

    logits = model(input_ids)                       # [B, T] -> [B, T, V]

Follows docs/model.md: pre-norm blocks of RMSNorm -> fused QKV (with bias)
-> rotate-half RoPE in fp32 -> attention -> RMSNorm -> SwiGLU MLP `down(up(x) * silu(gate(x)))`
(Qwen-1's w1 is `up`, its w2 is the SiLU `gate`), final RMSNorm, lm_head.

Long context, as Qwen does it, each a switch:
  * dynamic NTK: RoPE base scaled by alpha(n)^(d/(d-2)), alpha from each row's real length n,
    chosen at the cache-less call and kept for every later call that extends that cache;
  * LogN: queries at position p >= seq_length scaled by ln(p+1)/ln(seq_length);
  * window attention: layer l lets query i see keys j with i - w_l < j <= i (w_l = 0: full).

Positions are each token's true index in its own sequence. Batches are right-padded and the KV
cache keeps one length per row, so a row's numbers never depend on what it is batched with.
(The reference uses padded indices for left-padded batches — docs/model.md, quirk Q1 — which only changes
LogN beyond seq_length in padded batches.) Attention, the KV cache and the choice of kernel
(`set_attention`: auto, sdpa, flash, flex, math) are in the attention package: one entry point,
`attend`, which every layer calls with the forward's metadata (ForwardMeta, computed once per forward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qwen_eval.errors import UserError
from qwen_eval.model.attention import (AttentionMeta, KVCache, attend,  # noqa: F401 (KVCache: re-exported)
                                      resolve_kernel)
from qwen_eval.requests import WINDOW_SCHEDULE


def window_schedule(num_layers: int, seq_length: int, *, groups: int = 4) -> tuple[int, ...]:
    """The default layer-wise window sizes: lower layers see shorter windows.

    Qwen never published its sizes (docs/model.md, "Window attention"; the maintainers' example was "first 4 layers
    2048, next 4 layers 4096, then 8192..."). Ours: the layers split into `groups` equal bands,
    band g gets a window of seq_length * 2**g, and the top band attends fully (0).
    """
    sizes = []
    for layer in range(num_layers):
        band = layer * groups // num_layers
        sizes.append(0 if band == groups - 1 else seq_length * 2 ** band)
    return tuple(sizes)


def resolve_window_attn(setting, num_layers: int, seq_length: int, *, option: str = "window_attn"
                        ) -> tuple[int, ...] | None:
    """A window_attn setting resolved to one window size per layer (None: no windows). The one
    vocabulary, wherever a setting comes from (model.window_attn, a request's LongContext, a
    forward's LongContextOptions, QwenConfig):

      off       null, false, "off", "none", or an empty list
      schedule  true, "schedule" (requests.WINDOW_SCHEDULE) or "default": window_schedule(L, S)
      sizes     a list of one size per layer (0: that layer attends fully)

    Anything else is a UserError naming `option`."""
    if setting in (None, False, "off", "none"):
        return None
    if setting in (True, WINDOW_SCHEDULE, "default"):
        return window_schedule(num_layers, seq_length)
    try:
        sizes = None if isinstance(setting, str) else tuple(int(w) for w in setting)
    except (TypeError, ValueError):
        sizes = None
    if sizes == ():
        return None
    if sizes is None or len(sizes) != num_layers:
        raise UserError(f"{option}={setting!r}: give {WINDOW_SCHEDULE!r} (the model's default layer-wise windows), "
                        f"null (none) or one window size per layer ({num_layers} for this model)")
    return sizes


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
    window_attn: tuple[int, ...] | None = None  # per-layer sizes (resolve_window_attn); 0 or None = full attention
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
        self.window_attn = resolve_window_attn(self.window_attn, self.num_layers, self.seq_length)

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


# ---------------------------------------------------------------------------------------------
# Long-context factors (docs/model.md, "Dynamic NTK" and "LogN attention scaling")


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
    """Rotate-half RoPE on the first rotary_dim channels of x [B, T, H, hd], in fp32.

    out = x * cos + rotate_half(x) * sin, where rotate_half(x) = [-x2, x1]: written as one
    product and two in-place halves, so no negated or concatenated copy of x is made (the same
    roundings in the same order, so bitwise the textbook form; a fused multiply-add would not be).
    """
    d, half = cos.shape[-1], cos.shape[-1] // 2
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    xf = x.float()
    rot = xf[..., :d]
    out = rot * c if d == xf.shape[-1] else torch.cat([rot * c, xf[..., d:]], dim=-1)
    out[..., :half].sub_(rot[..., half:] * s[..., :half])
    out[..., half:d].add_(rot[..., :half] * s[..., half:])
    return out.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Modules


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # normalise in fp32, round to the activation dtype, then scale (docs/model.md, "Precision")
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if x.dtype == self.weight.dtype == torch.float32:  # fp32: scale in place, one [tokens, hidden] copy fewer
            return normed.mul_(self.weight)
        return normed.to(x.dtype) * self.weight


BLOCK_ROWS = 2048  # rows per block of Block.forward's row-wise work (the attention's norm, the MLP):
                  # 8 x 2,048 tokens of the 0.5B model in fp32 peak 416 MiB lower with a blocked MLP
                  # than whole, in 56.0 s against 61.9 (docs/model.md, "CPU kernels: bounded
                  # caches, padding and row blocks")


class MLP(nn.Module):
    def __init__(self, cfg: QwenConfig):
        super().__init__()
        self.up = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)  # Qwen-1 w1
        self.gate = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)  # Qwen-1 w2 (SiLU)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)  # Qwen-1 c_proj

    def forward(self, x: Tensor) -> Tensor:
        # SiLU and the product in place: the [tokens, intermediate] tensors are the largest of a
        # forward, and each fresh one costs page faults on a CPU (bitwise the same as up * silu(gate))
        hidden = F.silu(self.gate(x), inplace=True)
        return self.down(hidden.mul_(self.up(x)))


@dataclass
class ForwardMeta:
    """What every block needs about one forward, computed once before the layers."""

    rope: tuple[Tensor, Tensor]  # cos, sin [B, T, rotary_dim] at each token's position
    logn: Tensor | None  # [B, T] LogN query scale, None when no position reaches seq_length
    attention: AttentionMeta  # positions, windows, the cache and the kernel


class Attention(nn.Module):
    def __init__(self, cfg: QwenConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, q_size + 2 * kv_size, bias=cfg.qkv_bias)
        self.out = nn.Linear(q_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor, meta: ForwardMeta, keep: Tensor | None = None) -> Tensor:
        cfg = self.cfg
        b, t, _ = x.shape
        q_size, kv_size = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        qk, v = self.qkv(x).split([q_size + kv_size, kv_size], dim=-1)
        v = v.view(b, t, cfg.num_kv_heads, cfg.head_dim)
        # queries and keys rotate in one call: they are adjacent columns of the fused projection
        qk = apply_rope(qk.view(b, t, cfg.num_heads + cfg.num_kv_heads, cfg.head_dim), *meta.rope)
        q, k = qk.split([cfg.num_heads, cfg.num_kv_heads], dim=2)
        if meta.logn is not None:  # keys and the cache are never scaled
            q = q * meta.logn[:, :, None, None].to(q.dtype)
        out = attend(q, k, v, meta.attention, self.layer).reshape(b, t, -1)
        if keep is not None:  # only these positions' outputs are read: [N, H*hd]
            out = out.reshape(b * t, -1).index_select(0, keep)
        return self.out(out)


class Block(nn.Module):
    def __init__(self, cfg: QwenConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, meta: ForwardMeta, keep: Tensor | None = None) -> Tensor:
        """keep: flat indices (b * T + t) of the only positions whose outputs are read. Every
        position still writes its keys and values (the cache and the attention need them); the
        output projection, the residual and the MLP run at the kept ones only, [N, D]."""
        # residual adds in place: x is the embedding lookup's fresh output or a previous block's
        attn = self.attn(self._attention_input(x), meta, keep)
        if keep is not None:
            x = x.view(-1, x.shape[-1]).index_select(0, keep)
        x = x.add_(attn)
        # the MLP in blocks of rows: its two [tokens, intermediate] products are a forward's
        # largest tensors (319 MiB each in fp32 at 16K tokens of a 0.5B model). Every op in it is
        # row-wise, so a block changes a row's result only as a batch of another size does: the
        # matmul may pick other kernels for another row count (within rounding)
        rows = x.view(-1, x.shape[-1])
        for start in range(0, rows.shape[0], BLOCK_ROWS):
            block = rows[start:start + BLOCK_ROWS]
            block.add_(self.mlp(self.mlp_norm(block)))
        return x

    def _attention_input(self, x: Tensor) -> Tensor:
        """attn_norm(x), in blocks of rows: the norm's fp32 temporaries are the largest tensors of a
        long forward after the MLP's (3 x 56 MiB at 16K tokens of the 0.5B model in bf16). RMSNorm
        reduces each row on its own, so the blocks give the whole call's numbers bitwise."""
        rows = x.view(-1, x.shape[-1])
        if rows.shape[0] <= BLOCK_ROWS:
            return self.attn_norm(x)
        out = torch.empty_like(x)
        out_rows = out.view(-1, x.shape[-1])
        for start in range(0, rows.shape[0], BLOCK_ROWS):
            out_rows[start:start + BLOCK_ROWS] = self.attn_norm(rows[start:start + BLOCK_ROWS])
        return out


@dataclass(frozen=True)
class LongContextOptions:
    """The three long-context switches for one forward (None: the config's value)."""

    use_dynamic_ntk: bool | None = None
    use_logn_attn: bool | None = None
    window_attn: tuple[int, ...] | None | bool = None  # None: the config's; else resolve_window_attn's vocabulary


class Qwen(nn.Module):
    def __init__(self, cfg: QwenConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.attention = "auto"  # model.attention, resolved per device and dtype at each forward (set_attention)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight

    # -- the switches -------------------------------------------------------------------------
    def _resolve(self, options: LongContextOptions | None) -> tuple[bool, bool, tuple[int, ...] | None]:
        cfg, o = self.config, options or LongContextOptions()
        ntk = cfg.use_dynamic_ntk if o.use_dynamic_ntk is None else o.use_dynamic_ntk
        logn = cfg.use_logn_attn if o.use_logn_attn is None else o.use_logn_attn
        windows = cfg.window_attn if o.window_attn is None else resolve_window_attn(o.window_attn, cfg.num_layers,
                                                                                     cfg.seq_length)
        return ntk, logn, windows

    def row_alphas(self, lengths: Sequence[int], options: LongContextOptions | None = None) -> list[float]:
        """The NTK alpha each row gets from its real length (1 when dynamic NTK is off)."""
        ntk, _, _ = self._resolve(options)
        return [ntk_alpha(int(n), self.config.seq_length) if ntk else 1.0 for n in lengths]

    # -- forward ------------------------------------------------------------------------------
    def forward(self, input_ids: Tensor, *, cache: KVCache | None = None, lengths: Tensor | None = None,
                options: LongContextOptions | None = None, return_hidden: bool = False,
                keep: Tensor | None = None) -> Tensor:
        """Logits [B, T, V] (or final hidden states [B, T, D] with return_hidden).

        keep: flat indices (b * T + t) of the positions whose outputs the caller reads; the result
        is then [len(keep), V or D], and the last block runs its output projection and MLP only
        there (a 24-layer model saves about 4% of a scoring forward's work).

        Without a cache: a full forward of right-padded rows whose real lengths are `lengths`
        (default: all T); NTK alpha comes from each row's length.
        With a cache: the T new tokens of each row go after its cached ones, at positions
        cache.lengths[b] ...; alpha is the one the cache was built with; cache.lengths advance
        by `lengths` (default T) — the real new tokens of each row.
        """
        b, t = input_ids.shape
        device = input_ids.device
        _, use_logn, windows = self._resolve(options)
        if cache is None:
            starts, host_starts = torch.zeros(b, dtype=torch.long, device=device), None
            alphas = self.row_alphas(lengths.tolist() if lengths is not None else [t] * b, options)
        else:
            starts, host_starts = cache.lengths.clone(), list(cache.host_lengths)
            alphas = cache.alphas
        kernel = self.attention_kernel()
        attn = AttentionMeta.build(kernel, starts, host_starts, t, windows, self.config.num_layers, cache)
        rope = rope_tables(attn.positions, alphas, self.config)
        logn = None
        if use_logn and attn.kv_len > self.config.seq_length:  # kv_len = 1 + the largest position
            logn = logn_factors(attn.positions, self.config.seq_length)
        meta = ForwardMeta(rope, logn, attn)

        x = self.embed(input_ids)
        last = len(self.layers) - 1
        for i, block in enumerate(self.layers):
            x = block(x, meta, keep if i == last else None)
        if cache is not None:
            cache.advance(lengths, t)
        x = self.norm(x)
        return x if return_hidden else self.lm_head(x)

    # -- attention kernel ---------------------------------------------------------------------
    def set_attention(self, name: str) -> str:
        """Choose the attention kernel (`model.attention`: auto, sdpa, flash, flex, math) and
        return what it resolves to on the model's current device and dtype; raises
        AttentionUnavailable (a ValueError naming the option) when it cannot run here."""
        p = self.embed.weight
        resolved = resolve_kernel(name, p.device, p.dtype)
        self.attention = name
        self._resolved = ((name, p.device, p.dtype), resolved)  # recorded: forwards read it (attention_kernel)
        return resolved

    def attention_kernel(self) -> str:
        """The kernel this forward runs: the chosen one, resolved for where the weights are now."""
        p = self.embed.weight
        key = (self.attention, p.device, p.dtype)
        if getattr(self, "_resolved", (None, None))[0] != key:
            self._resolved = (key, resolve_kernel(self.attention, p.device, p.dtype))
        return self._resolved[1]

    def logits(self, hidden: Tensor) -> Tensor:
        """lm_head over already-normalised hidden states (for chunked losses and last-token scoring)."""
        return self.lm_head(hidden)

    def new_cache(self, batch_size: int, max_len: int, *, scratch: bool = False) -> KVCache:
        """An empty cache of batch_size rows, each able to hold max_len positions (after a shared
        prefix loaded later, max_len counts the positions after it). scratch: for one forward
        whose keys are not read afterwards, one storage for all layers (KVCache)."""
        p, cfg = self.embed.weight, self.config
        return KVCache(cfg.num_layers, batch_size, max_len, cfg.num_kv_heads, cfg.head_dim, dtype=p.dtype,
                       device=p.device, scratch=scratch)

    def prefill_cache(self, cache: KVCache, input_ids: Tensor, lengths: Tensor,
                      options: LongContextOptions | None = None, *, alphas: Sequence[float] | None = None,
                      return_hidden: bool = True, keep: Tensor | None = None) -> Tensor:
        """Forward right-padded prompts into an empty cache.

        NTK alpha comes from each row's real length, as in a cache-less call, unless `alphas`
        says otherwise (a shared prefix takes the alpha of the full rows it will serve).
        """
        cache.alphas = list(alphas) if alphas is not None else self.row_alphas(lengths.tolist(), options)
        cache.reset()
        return self.forward(input_ids, cache=cache, lengths=lengths, options=options, return_hidden=return_hidden,
                            keep=keep)


def init_weights(model: Qwen, seed: int, device: str | torch.device = "cpu") -> Qwen:
    """Qwen's initialisation, seeded: N(0, 0.02) weights, N(0, 0.02/sqrt(2L)) output projections,
    zero biases, unit norms. Deterministic across runs and machines with the default CPU
    generator; `device` draws on the parameters' own device instead (a 14B model on a GPU), whose
    numbers differ from the CPU's."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out_std = 0.02 / math.sqrt(2 * model.config.num_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                std = out_std if name.endswith(("attn.out.weight", "mlp.down.weight")) else 0.02
                # in place, bitwise randn(...) * std: no temporary the size of the embedding
                torch.randn(p.shape, generator=gen, out=p.detach())
                p.mul_(std)
    return model


def random_qwen(cfg: QwenConfig, seed: int) -> Qwen:
    """init_weights(Qwen(cfg), seed), without first running nn's default initialisation of every
    Linear and the Embedding, which init_weights overwrites anyway (about a third of building
    model=tiny). The meta device would do the same, but its first use imports about 1.4 s of
    torch's meta registrations."""
    defaults = nn.Linear.reset_parameters, nn.Embedding.reset_parameters
    nn.Linear.reset_parameters = nn.Embedding.reset_parameters = lambda self: None
    try:
        model = Qwen(cfg)
    finally:
        nn.Linear.reset_parameters, nn.Embedding.reset_parameters = defaults
    return init_weights(model, seed)
