"""Checkpoint loading: both formats, shards, .bin, tied embeddings, GQA, the errors users see."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from helpers_checkpoints import REAL_VOCAB, random_model, tiny_config, write_checkpoint
from qwen_eval.backends.qwen import QwenBackend
from qwen_eval.errors import UserError
from qwen_eval.model.engine import Engine
from qwen_eval.model.loading import (config_from_checkpoint, from_pretrained, resolve_checkpoint,
                                     save_checkpoint, weight_files)
from qwen_eval.model.tokenizer import load_tokenizer
from qwen_eval.requests import Choice, Generate

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
SMALL = dict(vocab_size=512, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48, seq_length=64)


def assert_same_model(a, b) -> None:
    assert dataclasses.asdict(a.config) == dataclasses.asdict(b.config)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for name in pa:
        assert pa[name].dtype == pb[name].dtype, name
        assert torch.equal(pa[name], pb[name]), name


@pytest.fixture(scope="module")
def mha():
    return random_model(tiny_config(**SMALL), seed=1)


@pytest.fixture(scope="module")
def gqa_tied():
    """Qwen2.5-small-like: grouped-query attention and tied embeddings."""
    return random_model(tiny_config(**SMALL, num_kv_heads=2, tie_word_embeddings=True, use_dynamic_ntk=False,
                                    use_logn_attn=False, rope_base=1e6), seed=2)


# --- round trips ---------------------------------------------------------------------------------

def test_qwen1_format_round_trip_multi_shard(mha, tmp_path):
    write_checkpoint(mha, tmp_path, format="qwen", max_shard_bytes=40_000)
    assert len(weight_files(tmp_path)) >= 4
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["model_type"] == "qwen" and raw["intermediate_size"] == 2 * 48  # Qwen-1 stores 2F
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert "transformer.h.1.mlp.w2.weight" in index["weight_map"]
    import qwen_eval.model

    # the documented entry point reads every format; for a folder it is the folder loader's model
    assert torch.equal(qwen_eval.model.from_pretrained(tmp_path).lm_head.weight, from_pretrained(tmp_path).lm_head.weight)
    loaded = from_pretrained(tmp_path)
    assert_same_model(loaded, mha)
    assert loaded(torch.tensor([[1, 2, 3]])).shape == (1, 3, 512)


def test_qwen2_format_round_trip_gqa_tied(gqa_tied, tmp_path):
    write_checkpoint(gqa_tied, tmp_path, format="qwen2", max_shard_bytes=40_000)
    names = set(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"])
    assert "lm_head.weight" not in names and "model.layers.0.self_attn.k_proj.bias" in names
    first = load_file(weight_files(tmp_path)[0])
    assert first["model.embed_tokens.weight"].shape == (512, 32)
    model = from_pretrained(tmp_path)
    assert model.config.num_kv_heads == 2 and model.config.rope_base == 1e6
    assert model.lm_head.weight is model.embed.weight  # still tied after loading
    assert_same_model(model, gqa_tied)


def test_qwen2_format_of_a_qwen1_model_drops_ntk_and_logn(mha, tmp_path):
    write_checkpoint(mha, tmp_path, format="qwen2")
    cfg = config_from_checkpoint(tmp_path)
    assert (cfg.use_dynamic_ntk, cfg.use_logn_attn, cfg.seq_length) == (False, False, 64)
    loaded = dict(from_pretrained(tmp_path).named_parameters())
    for name, p in mha.named_parameters():
        assert torch.equal(loaded[name], p), name


@pytest.mark.parametrize("max_shard_bytes", [1 << 30, 40_000], ids=["single-file", "shards"])
def test_bin_checkpoints(mha, tmp_path, max_shard_bytes):
    write_checkpoint(mha, tmp_path, format="qwen", weights="bin", max_shard_bytes=max_shard_bytes)
    files = weight_files(tmp_path)
    assert all(f.suffix == ".bin" for f in files) and (len(files) == 1) == (max_shard_bytes > 1e6)
    assert_same_model(from_pretrained(tmp_path), mha)


def test_single_safetensors_file_and_dtypes(mha, tmp_path):
    write_checkpoint(mha, tmp_path, format="qwen", dtype=torch.bfloat16, max_shard_bytes=1 << 30)
    assert [f.name for f in weight_files(tmp_path)] == ["model.safetensors"]
    auto = from_pretrained(tmp_path)  # auto on CPU: fp32, whatever the checkpoint stores
    assert {p.dtype for p in auto.parameters()} == {torch.float32}
    bf16 = from_pretrained(tmp_path, dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert torch.equal(bf16.layers[1].mlp.gate.weight, mha.layers[1].mlp.gate.weight.bfloat16())
    assert torch.equal(auto.layers[1].mlp.gate.weight, mha.layers[1].mlp.gate.weight.bfloat16().float())
    assert not any(p.requires_grad for p in auto.parameters()) and not auto.training


def test_qwen1_v1_0_config_names(mha, tmp_path):
    """The Aug-2023 Qwen-7B v1.0 config.json: n_embd, n_head, n_layer, ffn_hidden_size, padded_vocab_size."""
    write_checkpoint(mha, tmp_path, format="qwen")
    raw = json.loads((tmp_path / "config.json").read_text())
    renamed = {"hidden_size": "n_embd", "num_attention_heads": "n_head", "num_hidden_layers": "n_layer",
               "intermediate_size": "ffn_hidden_size", "vocab_size": "padded_vocab_size"}
    raw = {renamed.get(k, k): v for k, v in raw.items()}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert dataclasses.asdict(config_from_checkpoint(tmp_path)) == dataclasses.asdict(mha.config)
    assert_same_model(from_pretrained(tmp_path), mha)


def test_transformers5_rope_parameters(gqa_tied, tmp_path):
    write_checkpoint(gqa_tied, tmp_path, format="qwen2")
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["rope_theta"], raw["rope_scaling"]
    raw["rope_parameters"] = {"rope_theta": 5e5, "rope_type": "default"}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert config_from_checkpoint(tmp_path).rope_base == 5e5


# --- errors --------------------------------------------------------------------------------------

def _rewrite_shard(directory: Path, edit) -> Path:
    """Apply `edit(tensors)` to the first shard and save it back."""
    shard = weight_files(directory)[0]
    tensors = load_file(shard)
    edit(tensors)
    save_file(tensors, shard, metadata={"format": "pt"})
    return shard


def test_missing_tensor_is_named(mha, tmp_path):
    write_checkpoint(mha, tmp_path, format="qwen", max_shard_bytes=1 << 30)
    _rewrite_shard(tmp_path, lambda t: t.pop("transformer.h.1.mlp.w1.weight"))
    with pytest.raises(UserError, match=r"lacks 1 tensor.*transformer\.h\.1\.mlp\.w1\.weight"):
        from_pretrained(tmp_path)


def test_wrong_shape_is_named(gqa_tied, tmp_path):
    write_checkpoint(gqa_tied, tmp_path, format="qwen2", max_shard_bytes=1 << 30)

    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:-1]
    shard = _rewrite_shard(tmp_path, shrink)
    with pytest.raises(UserError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight in .*%s has shape "
                                        r"\[15, 32\].*\[16, 32\]" % shard.name):
        from_pretrained(tmp_path)


def test_config_that_does_not_match_the_weights(mha, tmp_path):
    write_checkpoint(mha, tmp_path, format="qwen")
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["intermediate_size"] = 2 * 64
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(UserError, match=r"tensor transformer\.h\.0\.mlp\.(w1|w2|c_proj)\.weight in .* has shape "
                                        r"\[(48, 32|32, 48)\] but config\.json implies \[(64, 32|32, 64)\]"):
        from_pretrained(tmp_path)


def test_unexpected_and_duplicated_tensors(mha, tmp_path):
    write_checkpoint(mha, tmp_path, format="qwen", max_shard_bytes=40_000)
    _rewrite_shard(tmp_path, lambda t: t.update({"transformer.h.9.ln_1.weight": torch.ones(32)}))
    with pytest.raises(UserError, match=r"tensor transformer\.h\.9\.ln_1\.weight in .*00001.* is not part"):
        from_pretrained(tmp_path)

    write_checkpoint(mha, tmp_path, format="qwen", max_shard_bytes=40_000)
    last = weight_files(tmp_path)[-1]
    _rewrite_shard(tmp_path, lambda t: t.update(load_file(last)))
    with pytest.raises(UserError, match=r"is in both .*00001.* and .*%s" % last.name):
        from_pretrained(tmp_path)


def test_ignored_buffers_and_tied_lm_head(gqa_tied, tmp_path):
    """rotary_emb.inv_freq / masked_bias buffers and a tied model's lm_head copy are skipped."""
    write_checkpoint(gqa_tied, tmp_path, format="qwen2", max_shard_bytes=1 << 30)
    _rewrite_shard(tmp_path, lambda t: t.update({
        "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(4),
        "lm_head.weight": torch.zeros(512, 32)}))
    assert_same_model(from_pretrained(tmp_path), gqa_tied)


def test_missing_files_and_bad_configs(mha, tmp_path):
    with pytest.raises(UserError, match="config.json not found"):
        from_pretrained(tmp_path)
    write_checkpoint(mha, tmp_path, format="qwen", max_shard_bytes=40_000)
    weight_files(tmp_path)[1].unlink()
    with pytest.raises(UserError, match=r"index.json lists model-00002-of-\d+\.safetensors, which is not in"):
        from_pretrained(tmp_path)
    for f in tmp_path.glob("model*"):
        f.unlink()
    with pytest.raises(UserError, match="no weights in .*expected model.safetensors.index.json"):
        from_pretrained(tmp_path)

    config = tmp_path / "config.json"
    raw = json.loads(config.read_text())
    for edit, message in [
        ({"model_type": "llama"}, r"model_type 'llama' is not supported"),
        ({"seq_length": None}, r"has no 'seq_length'"),
        ({"kv_channels": 16}, r"kv_channels 16 x 4 heads != hidden_size 32"),
        ({"no_bias": False}, r"no_bias false"),
    ]:
        config.write_text(json.dumps({**raw, **edit}))
        with pytest.raises(UserError, match=message):
            config_from_checkpoint(tmp_path)
    qwen2 = {"model_type": "qwen2", "vocab_size": 512, "hidden_size": 32, "intermediate_size": 48,
             "num_hidden_layers": 2, "num_attention_heads": 4}
    for edit, message in [
        ({"use_sliding_window": True}, r"use_sliding_window true is not supported"),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, r"RoPE scaling 'yarn' is not implemented"),
        ({"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4}}, r"RoPE scaling 'dynamic'"),
        ({"num_key_value_heads": 3}, r"do not divide evenly"),
    ]:
        config.write_text(json.dumps({**qwen2, **edit}))
        with pytest.raises(UserError, match=message):
            config_from_checkpoint(tmp_path)
    config.write_text("{not json")
    with pytest.raises(UserError, match="cannot read .*config.json"):
        config_from_checkpoint(tmp_path)


def test_formats_that_cannot_hold_the_model(gqa_tied, tmp_path):
    with pytest.raises(UserError, match="Qwen-1 checkpoint format has no grouped-query attention"):
        save_checkpoint(gqa_tied, tmp_path, format="qwen")


# --- where checkpoints come from -----------------------------------------------------------------

def test_hub_id_absent_offline_says_how_to_point_model_path(tmp_path):
    with pytest.raises(UserError, match=r"model\.path Qwen/Qwen-14B is not a local folder and is not in the "
                                        r"Hugging Face cache; download it \(huggingface-cli download Qwen/Qwen-14B "
                                        r"--local-dir DIR\) and set model\.path=DIR"):
        resolve_checkpoint("Qwen/Qwen-14B", cache_dir=tmp_path)
    with pytest.raises(UserError, match=r"model\.path /no/such/dir does not exist"):
        resolve_checkpoint("/no/such/dir")
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(UserError, match="is a file; point it at the checkpoint folder"):
        resolve_checkpoint(tmp_path / "file.json")


def test_hub_id_found_in_the_local_cache(mha, tmp_path):
    """The Hugging Face cache layout: models--org--name/refs/main -> snapshots/<commit>/."""
    repo = tmp_path / "hub" / "models--someone--tiny-qwen"
    commit = "0123456789abcdef0123456789abcdef01234567"
    write_checkpoint(mha, repo / "snapshots" / commit, format="qwen")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert resolve_checkpoint("someone/tiny-qwen", cache_dir=tmp_path / "hub") == repo / "snapshots" / commit


@pytest.mark.parametrize("preset", ["qwen-14b", "qwen-7b"])
def test_presets_without_a_local_copy(preset, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{preset}.yaml"))
    with pytest.raises(UserError, match=rf"model\.path {cfg['path']} is not a local folder.*set model\.path=DIR"):
        QwenBackend.from_config({**cfg, "device": "cpu"})


def test_backend_with_a_checkpoint_path_end_to_end(tmp_path):
    """model=tiny-style config with model.path: loads the checkpoint (Qwen-1 format, so the packaged
    qwen.tiktoken) and answers exactly as an engine over the in-memory model."""
    model = random_model(tiny_config(hidden_size=32, intermediate_size=48), seed=3)
    write_checkpoint(model, tmp_path, format="qwen", max_shard_bytes=10 << 20)
    backend = QwenBackend.from_config({"name": "tiny", "preset": "tiny", "path": str(tmp_path), "device": "cpu",
                                       "dtype": "auto", "max_length": 96})
    assert backend.describe()["dtype"] == "float32" and backend.engine.model.config.vocab_size == REAL_VOCAB
    reference = Engine(model, load_tokenizer(None), max_length=96)
    choice = [Choice("Question: 2 + 2 = ?\nAnswer:", (" 4", " 5", " four"))]
    generate = [Generate("The capital of France is", stop=("\n",), max_new_tokens=8)]
    got, want = backend.choice(choice)[0], reference.choice(choice)[0]
    assert got.is_greedy == want.is_greedy
    assert got.logprobs == pytest.approx(want.logprobs, abs=1e-5) and all(lp < 0 for lp in got.logprobs)
    assert backend.generate(generate) == reference.generate(generate)
    assert backend.generate(generate)[0].texts[0]  # a random model still produces some text


def test_init_weights_draws_each_weight_as_randn_times_its_std_in_parameter_order():
    """The in-place draw (randn into the parameter, then a multiply) gives exactly the written-out
    rule, so model=tiny's weights (and every figure measured on them) stay what they were."""
    import math

    from qwen_eval.model.model import Qwen, QwenConfig, init_weights

    cfg = QwenConfig(vocab_size=7, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2,
                     intermediate_size=48, tie_word_embeddings=False)
    model = init_weights(Qwen(cfg), 11)
    gen = torch.Generator().manual_seed(11)
    drawn = 0
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.equal(p, torch.ones_like(p))
        elif name.endswith(".bias"):
            assert torch.equal(p, torch.zeros_like(p))
        else:
            std = 0.02 / math.sqrt(2 * cfg.num_layers) if name.endswith(("attn.out.weight", "mlp.down.weight")) else 0.02
            assert torch.equal(p, torch.randn(p.shape, generator=gen) * std), name
            drawn += 1
    assert drawn == 2 + 5 * cfg.num_layers  # embed, lm_head; qkv, out, up, gate, down a layer


@pytest.mark.parametrize("tied", [False, True])
def test_random_qwen_is_init_weights_without_the_default_init(tied):
    """Built without nn's default initialisation, the model has exactly init_weights' parameters,
    in the same order, a tied lm_head still shares the embedding, and the default initialisers are
    back in place afterwards."""
    from qwen_eval.model.model import Qwen, QwenConfig, init_weights, random_qwen

    defaults = torch.nn.Linear.reset_parameters, torch.nn.Embedding.reset_parameters

    cfg = QwenConfig(vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     intermediate_size=96, tie_word_embeddings=tied)
    reference, fast = init_weights(Qwen(cfg), 5).state_dict(), random_qwen(cfg, 5)
    state = fast.state_dict()
    assert list(state) == list(reference)
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    assert (fast.lm_head.weight is fast.embed.weight) == tied
    assert (torch.nn.Linear.reset_parameters, torch.nn.Embedding.reset_parameters) == defaults
