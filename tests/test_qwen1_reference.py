"""The Qwen-1 tensor names and long-context formulas, anchored to Qwen's own code.

shared/data/qwen1-reference holds a tiny checkpoint in the original format (transformer.h.N.attn.
c_attn, mlp.w1/w2/c_proj, ...) with dynamic NTK and LogN on at seq_length 32, and the logits
Qwen's remote modeling_qwen.py gives for it at 24, 32, 70 and 200 tokens. A mapping mistake
(w1/w2 swapped, q/k/v rows in the wrong order) or a formula slip past seq_length fails here, which
the round trips through our own writer cannot show.
"""

from __future__ import annotations

import json

import pytest
import torch

from helpers_checkpoints import max_abs_diff
from qwen_eval.model.loading import from_pretrained

pytestmark = pytest.mark.shared_data  # shared/data/qwen1-reference


@pytest.fixture(scope="module")
def reference(shared_data):
    folder = shared_data / "qwen1-reference"
    return from_pretrained(folder), json.loads((folder / "reference_logits.json").read_text())["cases"]


def test_each_length_equals_the_original_code(reference):
    model, cases = reference
    assert model.config.use_dynamic_ntk and model.config.use_logn_attn and model.config.seq_length == 32
    for name, case in cases.items():
        with torch.no_grad():
            got = model(torch.tensor([case["input_ids"]]))[0, -4:]
        assert max_abs_diff(got, torch.tensor(case["last4_logits"])) <= 1e-4, name


def test_right_padded_batch_equals_the_original_code(reference):
    """All four lengths in one padded batch: each row keeps its own NTK alpha and LogN scale."""
    model, cases = reference
    rows = [case["input_ids"] for case in cases.values()]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, :len(row)] = torch.tensor(row)
    lengths = torch.tensor([len(r) for r in rows])
    with torch.no_grad():
        logits = model(ids, lengths=lengths)
    for b, case in enumerate(cases.values()):
        n = len(case["input_ids"])
        assert max_abs_diff(logits[b, n - 4:n], torch.tensor(case["last4_logits"])) <= 1e-4
