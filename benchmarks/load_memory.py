"""Peak memory of loading a multi-shard checkpoint: streamed (from_pretrained) vs a naive full state dict.

    python benchmarks/load_memory.py                         # ~670 MB fp32 checkpoint in 8 shards
    python benchmarks/load_memory.py --weights bin --shards 4
    python benchmarks/load_memory.py --keep /tmp/ckpt         # keep the checkpoint folder

Writes a random Qwen-architecture checkpoint (stored in fp32, so checkpoint size = model size),
then loads it in fresh processes and reports each one's resident memory: after the imports, at its
peak (VmHWM, i.e. ru_maxrss), and after loading. `streamed` is `from_pretrained`; `naive` reads every
shard into one in-memory state dict before copying it into a model built the ordinary way (what
`model.load_state_dict(torch.load(...))` does), which holds two copies of the weights. The figure
that matters is (peak - after imports) / model size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1 << 20


def memory_mib() -> dict[str, float]:
    """VmRSS and VmHWM (peak) of this process, from /proc (Linux)."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024  # kB
    return values


def child(mode: str, directory: Path) -> dict:
    import safetensors.torch  # noqa: F401  (imported before the baseline, like the rest)
    import torch

    from qwen_eval.model.loading import (from_pretrained, read_checkpoint_config, tensor_targets,
                                         weight_files)
    from qwen_eval.model.model import Qwen

    before = memory_mib()["VmRSS"]
    start = time.perf_counter()
    if mode == "streamed":
        model = from_pretrained(directory, dtype=torch.float32, device="cpu")
    else:
        from safetensors.torch import load

        cfg, fmt = read_checkpoint_config(directory)
        state = {}  # every shard read into memory (safetensors' load_file would map them lazily)
        for file in weight_files(directory):
            state.update(load(file.read_bytes()) if file.suffix == ".safetensors" else
                         torch.load(file, map_location="cpu", weights_only=True))
        model = Qwen(cfg)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, target in tensor_targets(cfg, fmt).items():
                view = params[target.param]
                (view if target.rows is None else view[target.rows[0]:target.rows[1]]).copy_(state.pop(name))
        del state
    seconds = time.perf_counter() - start
    after = memory_mib()
    model_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / MIB
    return {"mode": mode, "rss_after_imports_mib": before, "peak_rss_mib": after["VmHWM"],
            "rss_after_load_mib": after["VmRSS"], "model_mib": model_mib, "load_seconds": seconds,
            "peak_over_imports_mib": after["VmHWM"] - before,
            "peak_over_imports_per_model": (after["VmHWM"] - before) / model_mib}


def write(directory: Path, args) -> None:
    import torch

    from qwen_eval.model.loading import save_checkpoint
    from qwen_eval.model.model import Qwen, QwenConfig

    cfg = QwenConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                     num_heads=args.hidden // 128, intermediate_size=args.intermediate, seq_length=2048)
    with torch.device("meta"):
        model = Qwen(cfg)
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=gen)
    total = sum(p.numel() * 4 for p in model.parameters())
    save_checkpoint(model, directory, format=args.format, weights=args.weights, dtype=torch.float32,
                    max_shard_bytes=total // args.shards + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=2816)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--shards", type=int, default=8, help="about this many shards")
    parser.add_argument("--format", choices=["qwen", "qwen2"], default="qwen2")
    parser.add_argument("--weights", choices=["safetensors", "bin"], default="safetensors")
    parser.add_argument("--modes", default="streamed,naive")
    parser.add_argument("--keep", type=Path, default=None, help="write the checkpoint here and keep it")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        directory = args.keep or Path(tmp) / "checkpoint"
        write(directory, args)
        files = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin"))
        sizes = [p.stat().st_size / MIB for p in files]
        print(f"checkpoint: {len(files)} {args.weights} shards ({args.format} format), {sum(sizes):.0f} MiB in all, "
              f"largest {max(sizes):.0f} MiB")
        rows = []
        for mode in args.modes.split(","):
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(directory)], check=True,
                                 capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
        print("| mode | RSS after imports (MiB) | peak RSS (MiB) | RSS after load (MiB) | peak - imports (MiB) "
              "| (peak - imports) / model | load (s) |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['mode']} | {r['rss_after_imports_mib']:.0f} | {r['peak_rss_mib']:.0f} | "
                  f"{r['rss_after_load_mib']:.0f} | {r['peak_over_imports_mib']:.0f} | "
                  f"{r['peak_over_imports_per_model']:.2f} | {r['load_seconds']:.1f} |")
        print(f"model: {rows[0]['model_mib']:.0f} MiB of fp32 parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
