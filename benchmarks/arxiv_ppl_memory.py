"""Peak memory and time of one arXiv-PPL request: the first L tokens of a document in one forward.

    python benchmarks/arxiv_ppl_memory.py                      # tiny model, L = 32768, the four variants
    python benchmarks/arxiv_ppl_memory.py --length 8192 --variants base --threads 1

Each variant runs in a fresh process, so its peak RSS (ru_maxrss) is its own. Reported per variant:
RSS after building the model, peak RSS during the request, the request's wall time (what the
engine does for a Rolling request: tokenize, one forward over L tokens, the loss in chunks), and
a split of that time into the forward pass (embedding, layers, attention) and lm_head + log_softmax
over L x vocab (timed by running the forward again alone).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DOC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "arxiv" / "riscv-isa-manual" / \
    "vector-common.adoc"  # 64K tokens; a technical AsciiDoc text, not an arXiv paper
VARIANTS = ("base", "dynamic_ntk", "dynamic_ntk+logn", "dynamic_ntk+logn+window_attn")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(variant: str, length: int, doc: Path, threads: int | None) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from qwen_eval.backends.qwen import build_tiny
    from qwen_eval.model.engine import Engine
    from qwen_eval.model.scoring import long_context_options
    from qwen_eval.model.tokenizer import load_tokenizer
    from qwen_eval.requests import Rolling
    from qwen_eval.tasks.arxiv_ppl import parse_variant

    model = build_tiny(0).eval().requires_grad_(False)
    engine = Engine(model, load_tokenizer(None, None))
    text = doc.read_text(encoding="utf-8")
    _, lc = parse_variant(variant, "schedule")
    rss_setup = peak_rss_mib()

    start = time.perf_counter()
    (answer,) = engine.rolling([Rolling(text, first_tokens=length, max_length=length, long_context=lc)])
    request_s = time.perf_counter() - start
    rss_peak = peak_rss_mib()
    if answer.n_tokens == 0:
        raise SystemExit(f"{doc} has {answer.text_tokens} tokens, fewer than --length {length}")

    options = long_context_options(lc, model.config)  # as the engine resolves the request's switches
    ids = torch.tensor([engine.tokenizer.encode(text)[:length]])
    start = time.perf_counter()
    with torch.inference_mode():
        model(ids, options=options, return_hidden=True)
    forward_s = time.perf_counter() - start
    return {"variant": variant, "length": length, "threads": torch.get_num_threads(), "rss_setup_mib": rss_setup,
            "rss_peak_mib": rss_peak, "request_s": request_s, "forward_s": forward_s,
            "lm_head_and_loss_s": request_s - forward_s, "ppl": math.exp(-answer.loglikelihood / answer.n_tokens)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=32768)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="a document with at least --length tokens")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.child:
        print(json.dumps(measure(variants[0], args.length, args.doc, args.threads)))
        return 0

    print(f"tiny model, one request of {args.length} tokens from {args.doc.name}\n")
    print("| variant | threads | RSS after setup (MiB) | peak RSS (MiB) | request (s) | forward (s) | lm_head + loss (s) |")
    print("|---|---|---|---|---|---|---|")
    for variant in variants:
        cmd = [sys.executable, __file__, "--child", "--length", str(args.length), "--variants", variant,
               "--doc", str(args.doc)] + (["--threads", str(args.threads)] if args.threads else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"{variant} failed", file=sys.stderr)
            return 1
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"| {variant} | {r['threads']} | {r['rss_setup_mib']:.0f} | {r['rss_peak_mib']:.0f} | "
              f"{r['request_s']:.1f} | {r['forward_s']:.1f} | {r['lm_head_and_loss_s']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
