"""Parity with transformers' Qwen2ForCausalLM on the same random weights (docs/model.md, Checkpoint weights).

Tiny configs with the real Qwen vocabulary (151,936 embedding rows) and the real tokenizer (the
Qwen2-style tokenizer.json rebuilt from qwen.tiktoken), fp32 on CPU. Within seq_length, Qwen-1
with dynamic NTK and LogN on is plain RoPE attention, which is what Qwen2 computes.
"""

from __future__ import annotations

import pytest
import torch

from helpers_checkpoints import PROMPTS, max_abs_diff, random_model, tiny_config, write_checkpoint
from qwen_eval.model.engine import Engine
from qwen_eval.model.loading import from_pretrained
from qwen_eval.model.tokenizer import load_tokenizer
from qwen_eval.requests import Generate

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
CONFIGS = {
    # Qwen-14B-like: MHA, untied, NTK + LogN on (inactive within seq_length)
    "mha": tiny_config(),
    # Qwen2.5-like: grouped-query attention, tied embeddings, a large rope_theta
    "gqa-tied": tiny_config(num_heads=8, num_kv_heads=2, tie_word_embeddings=True, rope_base=1e6,
                            use_dynamic_ntk=False, use_logn_attn=False),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, tmp_path_factory):
    """(our model, transformers' model, checkpoint dir) loaded from one Qwen2-format checkpoint."""
    reference = random_model(CONFIGS[request.param], seed=7)
    directory = write_checkpoint(reference, tmp_path_factory.mktemp(request.param), format="qwen2", tokenizer=True)
    ours = from_pretrained(directory)
    hf = transformers.Qwen2ForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    return ours, hf, directory


def padded_batch(lengths: list[int], vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (len(lengths), max(lengths)), generator=gen)
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    return ids.masked_fill(~mask, 0), mask


@torch.inference_mode()
@pytest.mark.parametrize("length", [1, 13, 48, 96])
def test_logits_match_transformers(pair, length):
    ours, hf, _ = pair
    assert length <= ours.config.seq_length
    ids, _ = padded_batch([length], 151851, seed=length)
    diff = max_abs_diff(ours(ids), hf(input_ids=ids).logits)
    assert diff < TOLERANCE, f"max |delta logit| {diff:.2e} at length {length}"


@torch.inference_mode()
def test_padded_batch_matches_transformers(pair):
    """Our right-padded rows with `lengths` vs transformers with an attention_mask, real tokens only."""
    ours, hf, _ = pair
    lengths = [96, 50, 7, 1, 96]
    ids, mask = padded_batch(lengths, 151851, seed=1)
    mine = ours(ids, lengths=torch.tensor(lengths))
    theirs = hf(input_ids=ids, attention_mask=mask.long()).logits
    diff = max_abs_diff(mine[mask], theirs[mask])
    assert diff < TOLERANCE, f"max |delta logit| {diff:.2e}"
    alone = ours(ids[2:3, :7])  # a padded row equals the same row alone
    assert max_abs_diff(mine[2, :7], alone[0]) < 1e-5


@torch.inference_mode()
def test_qwen1_and_qwen2_formats_give_identical_logits(tmp_path):
    reference = random_model(CONFIGS["mha"], seed=11)
    qwen1 = from_pretrained(write_checkpoint(reference, tmp_path / "qwen", format="qwen"))
    qwen2 = from_pretrained(write_checkpoint(reference, tmp_path / "qwen2", format="qwen2"))
    assert qwen1.config.use_dynamic_ntk and qwen1.config.use_logn_attn and not qwen2.config.use_logn_attn
    lengths = [96, 40, 3]
    ids, mask = padded_batch(lengths, 151851, seed=2)
    a = qwen1(ids, lengths=torch.tensor(lengths))
    b = qwen2(ids, lengths=torch.tensor(lengths))
    assert torch.equal(a[mask], b[mask])
    assert torch.equal(a[mask], reference(ids, lengths=torch.tensor(lengths))[mask])


@torch.inference_mode()
def test_greedy_generation_matches_transformers_generate(pair):
    """Engine.generate (batched, KV cache, rows of different lengths) vs transformers' generate,
    prompt by prompt, 32 new tokens, greedy."""
    ours, hf, directory = pair
    tokenizer = load_tokenizer(directory)
    engine = Engine(ours, tokenizer, max_length=96)
    answers = engine.generate([Generate(p, max_new_tokens=32) for p in PROMPTS])
    for prompt, answer in zip(PROMPTS, answers):
        ids = torch.tensor([tokenizer.encode(prompt)])
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=32,
                          eos_token_id=tokenizer.eod_id, pad_token_id=tokenizer.eod_id,
                          # ids past the tokenizer's are embedding padding rows, never emitted (Q11)
                          suppress_tokens=list(range(tokenizer.vocab_size, ours.config.vocab_size)))
        new = out[0, ids.shape[1]:].tolist()
        assert len(new) == 32 and tokenizer.eod_id not in new  # a full-length comparison
        assert answer.texts == (tokenizer.decode(new),)
