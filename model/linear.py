"""The bundled model's matmuls on a CPU in bf16, with each weight packed once for oneDNN.

`F.linear` on a bf16 CPU tensor runs oneDNN's matmul, which reorders the [out, in] weight into its
blocked layout at every call: at a decode step's 16 rows that reorder costs about half the call.
`pack_cpu_linears(model)` does it once, at load, and each nn.Linear then calls oneDNN on the
packed weight (`torch.ops.mkldnn._linear_pointwise`, the op inductor's CPU freezing pass emits)
for calls of up to PACKED_MAX_ROWS rows: decode steps and last-position logits, where the
reorder dominates. There the results are bitwise those of `F.linear`; at larger row counts oneDNN
picks other kernels for the packed weight at some shapes (896 x 896 at 511-513 rows, 896 x 4,864
at 76-96, on a 2-core AMX Xeon), so those calls run `F.linear` on the dense weight, which is
kept (tests/test_linear.py; benchmarks/packed_linear.py measures).

The cost is memory: the matmul weights are held twice (dense and packed), +0.9 GiB for the 0.5B
model in bf16. Rebuilding the dense weight from the packed copy at each large call instead made
bf16 MMLU scoring 18% slower (47.8 s against 40.6 s for 114 questions). `model.packed_weights=false`
keeps the weights once. fp32 is never packed: MKL's packed sgemm is faster at small row counts
but not bitwise F.linear's.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

# rows (tokens) a call may have to take the packed path: every row count 1-75 was bitwise
# F.linear's at all the 0.5B model's shapes, 76-96 not at the MLP's down projection
PACKED_MAX_ROWS = 64


def packing_available() -> bool:
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedLinear(nn.Module):
    """nn.Linear's forward with the weight in oneDNN's packed layout (bias kept as a parameter)."""

    def __init__(self, linear: nn.Linear, rows_hint: int = 16):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows_hint)
        self.weight = linear.weight  # the dense weight, for calls of more rows
        self.bias = linear.bias

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() > PACKED_MAX_ROWS * self.in_features:  # prefill and scoring: the dense call
            return F.linear(x, self.weight, self.bias)
        if not x.is_contiguous():
            x = x.contiguous()
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, packed"


def pack_cpu_linears(model: nn.Module) -> int:
    """Swap every bf16 nn.Linear of `model` on the CPU for a PackedLinear; the number swapped.
    A weight shared with another module (tied embeddings) stays dense."""
    if not packing_available():
        return 0
    shared = {id(p) for name, m in model.named_modules() if not isinstance(m, nn.Linear)
              for p in m.parameters(recurse=False)}
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (isinstance(child, nn.Linear) and child.weight.device.type == "cpu"
                    and child.weight.dtype == torch.bfloat16 and id(child.weight) not in shared):
                setattr(parent, name, PackedLinear(child))
                swapped += 1
    return swapped


def parameter_count(model: nn.Module) -> int:
    """Parameters of `model` (a packed copy is not a parameter of its own)."""
    return sum(p.numel() for p in model.parameters())
