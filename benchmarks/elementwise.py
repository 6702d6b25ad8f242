"""The element-wise work of one layer of the real model's shape, eager against torch.compile.

The engine's bf16 profile (profile_engine.py) puts element-wise work (RMSNorm, RoPE, SiLU x up,
residual adds) near 17% of a bf16 forward. This times each piece alone at the engine's row
counts, as the model runs it (model/model.py), and, with --compile, the norm and RoPE compiled by
inductor (dynamic shapes): how much fusing could save, what compiling costs, and whether the
numbers stay bitwise.

    python benchmarks/elementwise.py --rows 1024 --dtype bfloat16 [--compile]

Run it alone: on two cores any other busy process skews these timings 2-8x.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
import torch.nn.functional as F

from qwen_eval.model.model import RMSNorm, apply_rope

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, HEAD_DIM = 896, 4864, 14, 2, 64  # Qwen2.5-0.5B


def microseconds(fn: Callable[[], object], reps: int) -> float:
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1024, help="tokens in one forward")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--compile", action="store_true", help="also time the norm and RoPE compiled by inductor")
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    n = args.rows

    x = torch.randn(n, HIDDEN, generator=gen).to(dtype)
    norm = RMSNorm(HIDDEN, 1e-6).to(dtype)
    norm.weight.data = (torch.rand(HIDDEN, generator=gen) + 0.5).to(dtype)
    qk = torch.randn(1, n, HEADS + KV_HEADS, HEAD_DIM, generator=gen).to(dtype)
    angles = torch.rand(1, n, HEAD_DIM, generator=gen)
    cos, sin = angles.cos(), angles.sin()
    gate = torch.randn(n, INTERMEDIATE, generator=gen).to(dtype)
    up = torch.randn(n, INTERMEDIATE, generator=gen).to(dtype)
    residual = torch.randn(n, HIDDEN, generator=gen).to(dtype)

    clone = microseconds(lambda: gate.clone(), args.reps)
    rows = {
        "RMSNorm (twice a layer)": microseconds(lambda: norm(x), args.reps),
        "RoPE on queries and keys": microseconds(lambda: apply_rope(qk, cos, sin), args.reps),
        "SiLU(gate) x up, in place": microseconds(lambda: F.silu(gate.clone(), inplace=True).mul_(up), args.reps) - clone,
        "residual add (twice a layer)": microseconds(lambda: residual.add_(x), args.reps),
    }
    per_layer = 2 * rows["RMSNorm (twice a layer)"] + rows["RoPE on queries and keys"] + \
        rows["SiLU(gate) x up, in place"] + 2 * rows["residual add (twice a layer)"]
    print(f"{n} rows, {args.dtype}, eager, microseconds per call (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")
    for name, us in rows.items():
        print(f"  {name:32s} {us:9.0f}")
    total = "one layer's element-wise work"
    print(f"  {total:32s} {per_layer:9.0f}   ({24 * per_layer / 1e3:.0f} ms for 24 layers)")

    if args.compile:
        for name, fn, call in (("RMSNorm", norm, lambda f: f(x)), ("RoPE", apply_rope, lambda f: f(qk, cos, sin))):
            start = time.perf_counter()
            compiled = torch.compile(fn, dynamic=True)
            got = call(compiled)
            took = time.perf_counter() - start
            want = call(fn)
            diff = float((got.float() - want.float()).abs().max())
            print(f"  {name} compiled: first call {took:.1f} s, then {microseconds(lambda: call(compiled), args.reps):.0f} us;"
                  f" bitwise eager: {torch.equal(got, want)} (max |diff| {diff:.3g})")


if __name__ == "__main__":
    with torch.inference_mode():  # as the engine runs
        main()
