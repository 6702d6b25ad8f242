"""The bundled model's matmuls on a CPU in bf16, with each weight packed once for oneDNN.

`F.linear` on a bf16 CPU tensor runs oneDNN's matmul, which reorders the [out, in] weight into its
blocked layout at every call: at a decode step's 16 rows that reorder costs about half the call.
`pack_cpu_linears(model)` does it once, at load, and each nn.Linear then calls oneDNN on the
packed weight (`torch.ops.mkldnn._linear_pointwise`, the op inductor's CPU freezing pass emits)
for calls of up to PACKED_MAX_ROWS rows: decode steps and last-position logits, where the
reorder dominates. There the results are bitwise those of `F.linear`; at larger row counts oneDNN
picks other kernels for the packed weight at some shapes (896 x 896 at 511-513 rows, 896 x 4,864
at 76-96, on a 2-core AMX Xeon), so those calls run `F.linear` on the weight rebuilt from the
packed copy, bitwise the dense path (tests/test_linear.py; benchmarks/packed_linear.py measures).

The dense weight is not kept beside the packed one (that would double the weights' memory): a
packed layer's `weight` is rebuilt from the packed copy when read. So read weights before packing
when you need many of them (saving a checkpoint, comparing with another model). fp32 is not
packed: MKL's packed sgemm is faster at small row counts but not bitwise F.linear's.
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
        self.bias = linear.bias
        self._dtype = linear.weight.dtype

    @property
    def weight(self) -> Tensor:
        """The dense [out, in] weight, rebuilt from the packed copy (a fresh tensor each read)."""
        return self.packed.to_dense()

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() > PACKED_MAX_ROWS * self.in_features:  # prefill and scoring: the dense call's numbers
            return F.linear(x, self.packed.to_dense(), self.bias)
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
    """Parameters of `model`, packed weights included."""
    packed = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, PackedLinear))
    return sum(p.numel() for p in model.parameters()) + packed
