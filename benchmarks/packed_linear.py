"""Dense F.linear against weights packed once (model/linear.py), at the real 0.5B model's shapes.

    python benchmarks/packed_linear.py [--rows 1,16,64,512] [--reps 30]

For each of the model's matmuls (qkv, out, gate+up as two, down, lm_head) and row count: the
time of `F.linear` (bf16: oneDNN, the weight reordered at every call; fp32: MKL sgemm), of the
packed call (bf16: oneDNN `_linear_pointwise` on a packed weight, the engine's path; fp32: MKL's
packed sgemm, shown for the record, not used), whether the packed result is bitwise F.linear's,
and the weight-read rate each achieves (weight bytes / time). The last rows sum one decode
step's matmuls over 24 layers plus lm_head. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

HIDDEN, INTER, LAYERS, VOCAB = 896, 4864, 24, 151936
SHAPES = {"qkv": (HIDDEN + 2 * 128, HIDDEN), "out": (HIDDEN, HIDDEN), "gate": (INTER, HIDDEN), "up": (INTER, HIDDEN),
          "down": (HIDDEN, INTER), "lm_head": (VOCAB, HIDDEN)}


def seconds(fn, reps: int) -> float:
    fn()
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,16,64,512")
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| dtype | matmul | rows | F.linear ms | GB/s | packed ms | GB/s | bitwise |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in (torch.bfloat16, torch.float32):
        for m in (int(r) for r in args.rows.split(",")):
            step = {"dense": 0.0, "packed": 0.0}
            for name, (n, k) in SHAPES.items():
                w = torch.randn(n, k).to(dtype)
                x = torch.randn(m, k).to(dtype)
                if dtype == torch.bfloat16:
                    pw = torch.ops.mkldnn._reorder_linear_weight(w, m)
                    packed = lambda: torch.ops.mkldnn._linear_pointwise(x, pw, None, "none", [], "")  # noqa: E731
                else:
                    pw = torch.ops.mkl._mkl_reorder_linear_weight(w, m)
                    packed = lambda: torch.ops.mkl._mkl_linear(x, pw, w, None, m)  # noqa: E731
                dense_s = seconds(lambda: F.linear(x, w), args.reps)
                packed_s = seconds(packed, args.reps)
                same = torch.equal(F.linear(x, w), packed())
                count = 1 if name == "lm_head" else LAYERS
                step["dense"] += count * dense_s
                step["packed"] += count * packed_s
                nbytes = n * k * w.element_size()
                print(f"| {str(dtype).removeprefix('torch.')} | {name} | {m} | {dense_s * 1e3:.2f} | {nbytes / dense_s / 1e9:.1f} | "
                      f"{packed_s * 1e3:.2f} | {nbytes / packed_s / 1e9:.1f} | {same} |", flush=True)
            print(f"| {str(dtype).removeprefix('torch.')} | **a forward's matmuls** | {m} | {step['dense'] * 1e3:.1f} | | "
                  f"{step['packed'] * 1e3:.1f} | | |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
