"""The body's matmul rate as the engine's forward meets it, by rows per forward.

Each of the 24 layers has its own weights in nn.Linear's [out, in] layout, and F.linear runs
its four products (qkv, o, gate+up, down) one layer after another, so the weights stream from
memory as in a real forward. roofline.py's rows instead repeat one product (hot) or use [in, out]
weights with `@` (layered); this is the engine's own call.

    python benchmarks/forward_matmuls.py --dtype bfloat16 --rows 128,300,600,1000,2000,4000

Prints TFLOP/s and the tokens/s the body's matmuls alone would allow. Run it alone on the machine.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from roofline import calls_per_second

HIDDEN, QKV, MLP, LAYERS = 896, 1152, 4864, 24  # Qwen2.5-Coder-0.5B


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--rows", default="128,300,600,1000,2000,4000", help="rows (tokens) per forward, comma-separated")
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    layers = [(torch.randn(QKV, HIDDEN, dtype=dtype), torch.randn(HIDDEN, HIDDEN, dtype=dtype),
               torch.randn(2 * MLP, HIDDEN, dtype=dtype), torch.randn(HIDDEN, MLP, dtype=dtype)) for _ in range(LAYERS)]
    flop_per_token = 2 * LAYERS * (QKV * HIDDEN + HIDDEN * HIDDEN + 2 * MLP * HIDDEN + HIDDEN * MLP)
    for m in (int(v) for v in args.rows.split(",")):
        x = torch.randn(m, HIDDEN, dtype=dtype)

        def forward() -> None:
            for qkv, o, gate_up, down in layers:
                F.linear(x, qkv)
                F.linear(x, o)
                F.linear(F.linear(x, gate_up)[:, :MLP].contiguous(), down)

        rate = calls_per_second(forward, args.seconds)
        print(f"{args.dtype} M={m}: {flop_per_token * m * rate / 1e12:.2f} TFLOP/s, "
              f"{m * rate:.0f} tok/s (body matmuls only)", flush=True)


if __name__ == "__main__":
    main()
