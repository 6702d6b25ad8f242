"""The bundled Qwen implementation (importable as `qwen_eval.model`).

    from qwen_eval.model import from_pretrained, load_tokenizer, Engine
    model = from_pretrained("/ckpt/Qwen-14B", dtype=torch.bfloat16, device="cuda")   # or a .gguf file
    logits = model(input_ids)                          # [B, T] -> [B, T, V]
"""

from qwen_eval.model.model import KVCache, LongContextOptions, Qwen, QwenConfig, init_weights, window_schedule

__all__ = ["KVCache", "LongContextOptions", "Qwen", "QwenConfig", "init_weights", "window_schedule",
           "from_pretrained", "load_tokenizer", "Engine"]


def __getattr__(name: str):
    # loading, the tokenizer and the engine import more; keep `import qwen_eval.model` light
    if name == "from_pretrained":  # every format model.path takes: folders and GGUF files
        from qwen_eval.model.checkpoint import from_pretrained
        return from_pretrained
    if name == "load_tokenizer":
        from qwen_eval.model.tokenizer import load_tokenizer
        return load_tokenizer
    if name == "Engine":
        from qwen_eval.model.engine import Engine
        return Engine
    raise AttributeError(name)
