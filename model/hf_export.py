"""A GGUF checkpoint written once as a Hugging Face folder, for engines that cannot read GGUF (vLLM).

    folder = hf_folder_for("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", torch.float32)

The folder holds what the bundled engine itself reads from the file: the weights dequantized by
model/gguf.py (so both engines compute with the same numbers), config.json in Qwen2's format, the
file's own tokenizer as tokenizer.json (model/tokenizer.py's BPETokenizer, kept as is: no NFC step
is added), its chat template, and its eos ids. It is written under
`$QWEN_EVAL_CACHE/hf-export/<sha256 of the .gguf>-<dtype>/`, atomically (a temporary folder renamed
into place), and reused while the file's digest is unchanged; `export.json` there records what it
was made from.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from qwen_eval.errors import UserError

EXPORT_VERSION = "2"  # bump when the folder's content changes for the same input


def export_root() -> Path:
    return Path(os.environ.get("QWEN_EVAL_CACHE") or "~/.cache/qwen-eval").expanduser() / "hf-export"


def hf_folder_for(path: str | Path, dtype: torch.dtype) -> Path:
    """`path` itself when it is a Hugging Face checkpoint folder; for a .gguf file (or a folder
    holding one), the cached export of it in `dtype`, written first if missing."""
    from qwen_eval.model.gguf import find_gguf
    from qwen_eval.provenance import file_sha256

    gguf_file = find_gguf(path)
    if gguf_file is None:
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise UserError(f"model.path={path}: neither a .gguf file nor a checkpoint folder with config.json")
        return folder
    digest = file_sha256(gguf_file)
    target = export_root() / f"{digest[:24]}-{str(dtype).removeprefix('torch.')}"
    stamp = target / "export.json"
    if stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")).get("version") == EXPORT_VERSION:
        return target
    return write_hf_folder(gguf_file, target, dtype, sha256=digest)


def write_hf_folder(gguf_file: Path, target: Path, dtype: torch.dtype, *, sha256: str) -> Path:
    """Dequantize `gguf_file` into `target` (config, safetensors, tokenizer, chat template)."""
    from qwen_eval.model.gguf import from_gguf, gguf_tokenizer, open_gguf
    from qwen_eval.model.loading import save_checkpoint

    ckpt = open_gguf(gguf_file)
    if ckpt.arch != "qwen2":
        raise UserError(f"{gguf_file}: a {ckpt.arch!r} GGUF cannot be exported for vLLM; only Qwen2-family files "
                        f"(general.architecture qwen2) are")
    tokenizer = gguf_tokenizer(ckpt)
    stops = list(ckpt.stop_token_ids)
    template = ckpt.chat_template
    model = from_gguf(ckpt, dtype)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_checkpoint(model, partial, format="qwen2", dtype=dtype)
    del model

    config = json.loads((partial / "config.json").read_text(encoding="utf-8"))
    config["eos_token_id"] = stops[0] if len(stops) == 1 else stops
    config["bos_token_id"] = tokenizer.eod_id
    import transformers  # the version the folder is written for (older ones trip a Mistral-regex check)

    config["transformers_version"] = transformers.__version__
    (partial / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (partial / "generation_config.json").write_text(json.dumps({"eos_token_id": stops, "do_sample": False},
                                                               indent=2) + "\n", encoding="utf-8")
    (partial / "tokenizer.json").write_text(tokenizer.to_json(), encoding="utf-8")
    added = {str(i): {"content": text, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": i in tokenizer.special_ids} for i, text in sorted(tokenizer.added_tokens.items())}
    tokenizer_config = {
        # the generic fast tokenizer reads tokenizer.json as written; Qwen2Tokenizer would rebuild
        # the pipeline and add NFC, which the GGUF's tokenizer does not have
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token, "pad_token": tokenizer.eos_token,
        "unk_token": None, "clean_up_tokenization_spaces": False, "model_max_length": config["max_position_embeddings"],
        "added_tokens_decoder": added,
        **({"chat_template": template} if template else {}),
    }
    (partial / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")
    (partial / "export.json").write_text(json.dumps(
        {"version": EXPORT_VERSION, "source": str(gguf_file), "sha256": sha256, "dtype": str(dtype),
         "stop_token_ids": stops}, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(target)
    return target
