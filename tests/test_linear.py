"""Packed bf16 weights on the CPU (model/linear.py): the same numbers as dense F.linear, bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from qwen_eval.model.linear import PACKED_MAX_ROWS, PackedLinear, pack_cpu_linears, packing_available, parameter_count
from qwen_eval.model.model import QwenConfig, random_qwen
from qwen_eval.requests import Choice, Generate, Rolling

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch has no oneDNN packed linear ops")


@pytest.mark.parametrize("out_in", [(1152, 896), (896, 896), (4864, 896), (896, 4864)])
def test_a_packed_layer_computes_what_f_linear_computes_at_every_row_count(out_in):
    """The real 0.5B model's shapes, every row count of the packed path, a few of the dense one
    (where oneDNN's packed kernels would differ: 896 x 896 at 512 rows, 896 x 4,864 at 80)."""
    torch.manual_seed(0)
    dense = nn.Linear(out_in[1], out_in[0], bias=True).bfloat16()
    packed = PackedLinear(dense)
    for rows in [*range(1, PACKED_MAX_ROWS + 1), 80, 96, 512, 700]:
        x = torch.randn(rows, out_in[1]).bfloat16()
        assert torch.equal(packed(x), F.linear(x, dense.weight, dense.bias)), rows
    x = torch.randn(3, 5, out_in[1]).bfloat16()
    assert torch.equal(packed(x), F.linear(x, dense.weight, dense.bias))
    assert torch.equal(packed.weight, dense.weight) and packed.bias is dense.bias


def test_the_packed_model_gives_the_dense_models_logits_bitwise():
    torch.manual_seed(0)
    model = random_qwen(QwenConfig.preset("tiny"), seed=3).bfloat16().eval()
    ids = torch.randint(0, 1000, (2, 40))
    with torch.inference_mode():
        want_full = model(ids)
        cache = model.new_cache(2, 48)
        want_prefill = model(ids, cache=cache)
        want_step = model(ids[:, :1], cache=cache)
    before = parameter_count(model)
    swapped = pack_cpu_linears(model)
    assert swapped == 2 * model.config.num_layers + 3 * model.config.num_layers + (0 if model.config.tie_word_embeddings else 1)
    assert parameter_count(model) == before
    with torch.inference_mode():
        cache = model.new_cache(2, 48)
        assert torch.equal(model(ids), want_full)
        assert torch.equal(model(ids, cache=cache), want_prefill)
        assert torch.equal(model(ids[:, :1], cache=cache), want_step)


def test_fp32_and_tied_weights_stay_dense():
    model = random_qwen(QwenConfig.preset("tiny"), seed=3).eval()
    assert pack_cpu_linears(model) == 0  # fp32: MKL's packed sgemm is not bitwise F.linear's
    tied = random_qwen(QwenConfig.preset("tiny", tie_word_embeddings=True), seed=3).bfloat16().eval()
    pack_cpu_linears(tied)
    assert isinstance(tied.lm_head, nn.Linear) and tied.lm_head.weight is tied.embed.weight


def test_the_bundled_backend_packs_bf16_and_answers_as_the_dense_one():
    from qwen_eval.backends import build

    cfg = {"backend": "qwen", "name": "tiny", "preset": "tiny", "device": "cpu", "dtype": "bfloat16"}
    packed, dense = build(cfg), build({**cfg, "packed_weights": False})
    assert packed.describe()["packed_weights"] > 0 and dense.describe()["packed_weights"] == 0
    assert packed.describe()["parameters"] == dense.describe()["parameters"]
    assert packed.fingerprint == dense.fingerprint  # the same answers: one cache
    requests = [Choice("2 + 2 =", (" 4", " five")), Choice("The sky is", (" blue", " green"))]
    assert packed.choice(requests) == dense.choice(requests)
    generate = [Generate("Once upon a time", max_new_tokens=12), Generate("def f(x):", max_new_tokens=9)]
    assert packed.generate(generate) == dense.generate(generate)
    assert packed.rolling([Rolling("one two three four " * 20)]) == dense.rolling([Rolling("one two three four " * 20)])
