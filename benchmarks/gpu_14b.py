"""Qwen-14B shapes on one GPU: prefill TFLOP/s, decode tokens/s, a 32K forward, an MMLU-style engine run.

    python benchmarks/gpu_14b.py results/bench/gpu_14b.json
    python benchmarks/gpu_14b.py out.json --decode-batches 1,8,32 --long-length 16384
    python benchmarks/gpu_14b.py /tmp/smoke.json --preset tiny --allow-cpu   # smoke test of this script

Random bf16 weights of `QwenConfig.preset("qwen-14b")` are created directly on the GPU (meta
device -> empty CUDA storage -> normal_ on the GPU), so no 28 GB ever passes through the host.
Every section is timed with CUDA synchronisation after warm-up runs; peak memory is
torch.cuda.max_memory_allocated per section. A section that fails is recorded in the JSON under
"errors" and the others still run (exit status 1 if any failed).

  prefill      B x T random tokens, one forward, lm_head on the last position only (what the
               engine does for MMLU-style single-token choices). Useful FLOPs = 2 x (linear-layer
               parameters) x tokens + causal attention 2 x T^2 x hidden per layer and sequence
               + the last-position lm_head; TFLOP/s against the bf16 dense peak (--peak-tflops).
  decode       a P-token prompt prefilled into the KV cache, then S greedy steps at batch B:
               tokens/s and the implied memory bandwidth (weights + KV read per step).
  long         one 32K-token forward with dynamic NTK + LogN (hidden states only), then the
               chunked loss the engine's Rolling requests take: seconds and peak memory.
  engine_mmlu  Engine.choice over 4 subjects x N questions sharing a 5-shot prefix, batches of 64.
Variants: with flash-attn when it is installed (the model's cache-less path uses it), and with
PyTorch SDPA (flash-attn switched off in the model module).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import traceback
from pathlib import Path

H200_BF16_DENSE_TFLOPS = 989.0  # H100/H200 SXM tensor cores, dense bf16
H200_HBM_TBPS = 4.8


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="JSON file to write the figures to")
    p.add_argument("--preset", default="qwen-14b")
    p.add_argument("--prefill-batch", type=int, default=8)
    p.add_argument("--prefill-length", type=int, default=1024)
    p.add_argument("--decode-batches", default="1,32")
    p.add_argument("--decode-prompt", type=int, default=512)
    p.add_argument("--decode-steps", type=int, default=128)
    p.add_argument("--long-length", type=int, default=32768)
    p.add_argument("--mmlu-questions", type=int, default=64, help="questions per subject (4 subjects)")
    p.add_argument("--sections", default="prefill,decode,long,engine_mmlu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS)
    p.add_argument("--peak-tbps", type=float, default=H200_HBM_TBPS)
    p.add_argument("--allow-cpu", action="store_true",
                   help="run on CPU in fp32 (only to smoke-test this script with --preset tiny)")
    return p.parse_args(argv)


class Bench:
    def __init__(self, args):
        import torch

        self.torch = torch
        self.args = args
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32

    # -- timing --------------------------------------------------------------------------------
    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 2 ** 30 if self.device.type == "cuda" else None

    def timed(self, fn, repeats: int, warmup: int = 1) -> tuple[float, object]:
        """Median seconds of `repeats` calls after `warmup` calls, and the last result."""
        out = None
        for _ in range(warmup):
            out = fn()
        self.sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2], out

    # -- the model -----------------------------------------------------------------------------
    def build(self) -> dict:
        from qwen_eval.model.model import Qwen, QwenConfig

        torch = self.torch
        cfg = QwenConfig.preset(self.args.preset)
        self.reset_peak()
        start = time.perf_counter()
        with torch.device("meta"):
            model = Qwen(cfg)
        model = model.to(dtype=self.dtype).to_empty(device=self.device)
        gen = torch.Generator(device=self.device).manual_seed(0)
        out_std = 0.02 / math.sqrt(2 * cfg.num_layers)
        with torch.no_grad():  # Qwen's initialisation (docs/model.md), drawn on the device
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                elif name.endswith(".bias"):
                    p.zero_()
                else:
                    p.normal_(0.0, out_std if name.endswith(("attn.out.weight", "mlp.down.weight")) else 0.02,
                              generator=gen)
        self.sync()
        self.model = model.eval().requires_grad_(False)
        self.cfg = cfg
        self.linear_params = sum(p.numel() for n, p in model.named_parameters()
                                 if n.startswith("layers.") and n.endswith(".weight") and p.dim() == 2)
        params = sum(p.numel() for p in model.parameters())
        return {"preset": self.args.preset, "parameters": params, "linear_parameters_in_layers": self.linear_params,
                "weights_gib": params * self.dtype.itemsize / 2 ** 30, "build_seconds": time.perf_counter() - start,
                "peak_gib": self.peak_gib()}

    def attention_variants(self) -> list[str]:
        from qwen_eval.model import model as model_module

        self.flash = model_module.flash_attn_varlen_func
        return (["flash_attn"] if self.flash is not None and self.device.type == "cuda" else []) + ["sdpa"]

    def use_variant(self, variant: str) -> None:
        from qwen_eval.model import model as model_module

        model_module.flash_attn_varlen_func = self.flash if variant == "flash_attn" else None

    def random_ids(self, *shape):
        return self.torch.randint(0, 151851, shape, device=self.device,
                                  generator=self.torch.Generator(device=self.device).manual_seed(1))

    # -- sections ------------------------------------------------------------------------------
    def prefill(self) -> list[dict]:
        torch, cfg, a = self.torch, self.cfg, self.args
        b, t = a.prefill_batch, a.prefill_length
        ids = self.random_ids(b, t)
        flops = (2 * self.linear_params * b * t + 2 * t * t * cfg.hidden_size * cfg.num_layers * b
                 + 2 * cfg.vocab_size * cfg.hidden_size * b)
        rows = []
        for variant in self.attention_variants():
            self.use_variant(variant)
            self.reset_peak()

            def step():
                hidden = self.model(ids, return_hidden=True)
                return self.model.logits(hidden[:, -1])

            with torch.inference_mode():
                seconds, logits = self.timed(step, a.repeats)
            rows.append({"attention": variant, "batch": b, "length": t, "seconds": seconds,
                         "tokens_per_second": b * t / seconds, "tflops": flops / seconds / 1e12,
                         "fraction_of_peak": flops / seconds / 1e12 / a.peak_tflops,
                         "finite": bool(torch.isfinite(logits).all()), "peak_gib": self.peak_gib()})
        return rows

    def decode(self) -> list[dict]:
        torch, cfg, a = self.torch, self.cfg, self.args
        model = self.model
        rows = []
        weight_bytes = (sum(p.numel() for p in model.parameters()) - model.embed.weight.numel()) * self.dtype.itemsize
        for b in (int(x) for x in a.decode_batches.split(",")):
            self.reset_peak()
            ids = self.random_ids(b, a.decode_prompt)
            lengths = torch.full((b,), a.decode_prompt, device=self.device)

            def run(steps: int) -> tuple[float, float]:
                cache = model.new_cache(b, a.decode_prompt + steps)
                start = time.perf_counter()
                hidden = model.prefill_cache(cache, ids, lengths)
                logits = model.logits(hidden[:, -1])
                self.sync()
                prefill_s = time.perf_counter() - start
                start = time.perf_counter()
                for _ in range(steps):
                    logits = model(logits.argmax(-1, keepdim=True), cache=cache)[:, -1]
                self.sync()
                return prefill_s, time.perf_counter() - start

            with torch.inference_mode():
                run(4)  # warm-up
                prefill_s, decode_s = run(a.decode_steps)
            mean_len = a.decode_prompt + a.decode_steps / 2
            kv_bytes = 2 * cfg.num_layers * b * mean_len * cfg.num_kv_heads * cfg.head_dim * self.dtype.itemsize
            step_s = decode_s / a.decode_steps
            rows.append({"batch": b, "prompt": a.decode_prompt, "steps": a.decode_steps,
                         "prefill_seconds": prefill_s, "decode_seconds": decode_s, "ms_per_step": 1e3 * step_s,
                         "tokens_per_second": b * a.decode_steps / decode_s,
                         "bandwidth_tbps": (weight_bytes + kv_bytes) / step_s / 1e12,
                         "fraction_of_hbm_peak": (weight_bytes + kv_bytes) / step_s / 1e12 / a.peak_tbps,
                         "peak_gib": self.peak_gib()})
        return rows

    def long(self) -> list[dict]:
        from qwen_eval.model.engine import Engine
        from qwen_eval.model.model import LongContextOptions, ntk_alpha
        from qwen_eval.model.tokenizer import load_tokenizer

        torch, cfg, a = self.torch, self.cfg, self.args
        n = a.long_length
        options = LongContextOptions(use_dynamic_ntk=True, use_logn_attn=True, window_attn=False)
        ids = self.random_ids(1, n)
        engine = Engine(self.model, load_tokenizer(None), max_length=n)
        flops = 2 * self.linear_params * n + 2 * n * n * cfg.hidden_size * cfg.num_layers
        rows = []
        for variant in self.attention_variants():
            self.use_variant(variant)
            self.reset_peak()
            with torch.inference_mode():
                seconds, hidden = self.timed(lambda: self.model(ids, options=options, return_hidden=True), 1)
                finite = bool(torch.isfinite(hidden).all())
                del hidden
                forward_peak = self.peak_gib()
                self.reset_peak()
                request_s, loglik = self.timed(lambda: engine._window_loglik(ids[0].tolist(), 1, options), 1)
            rows.append({"attention": variant, "length": n, "ntk_alpha": ntk_alpha(n, cfg.seq_length),
                         "forward_seconds": seconds, "forward_tflops": flops / seconds / 1e12,
                         "forward_peak_gib": forward_peak, "rolling_request_seconds": request_s,
                         "rolling_request_peak_gib": self.peak_gib(), "ppl": math.exp(-loglik / (n - 1)),
                         "finite": finite})
        return rows

    def engine_mmlu(self) -> dict:
        from qwen_eval.model.engine import Engine
        from qwen_eval.model.tokenizer import load_tokenizer
        from qwen_eval.requests import Choice

        torch, a = self.torch, self.args
        self.use_variant(self.attention_variants()[0])
        engine = Engine(self.model, load_tokenizer(None), max_length=2048, max_batch_tokens=65536)
        requests = []
        for subject in ("astronomy", "college physics", "world religions", "high school statistics"):
            shots = "".join(
                f"Question {k} about {subject}: which of the following statements about case {k * 7 + 3} "
                f"is correct when the quantity is {k * 13 % 97} and the observer reports {k * 29 % 83}?\n"
                f"A. It increases by {k}\nB. It decreases by {k + 1}\nC. It stays at {k + 2}\n"
                f"D. None of the above\nAnswer: {'ABCD'[k % 4]}\n\n" for k in range(5))
            prefix = f"The following are multiple choice questions (with answers) about {subject}.\n\n{shots}"
            for q in range(a.mmlu_questions):
                requests.append(Choice(
                    prefix + f"Question {q}: what is the value of {q} times {q + 11} minus {3 * q}, rounded to the "
                             f"nearest ten?\nA. {q * (q + 11) - 3 * q}\nB. {q + 5}\nC. {q * 2}\nD. {q * q}\nAnswer:",
                    (" A", " B", " C", " D")))
        requests.sort(key=lambda r: r.context)  # as the runner does: subjects stay together
        batches = [requests[i:i + 64] for i in range(0, len(requests), 64)]
        self.reset_peak()
        with torch.inference_mode():
            engine.choice(batches[0])  # warm-up
            self.sync()
            before, start = engine.tokens_processed, time.perf_counter()
            for batch in batches:
                engine.choice(batch)
            self.sync()
            seconds = time.perf_counter() - start
        tokens = engine.tokens_processed - before
        prompt_tokens = sum(len(engine.tokenizer.encode(r.context)) for r in requests)
        return {"requests": len(requests), "batch": 64, "seconds": seconds, "requests_per_second": len(requests) / seconds,
                "prompt_tokens": prompt_tokens, "tokens_computed": tokens,
                "prefix_reuse_saving": 1 - tokens / prompt_tokens,
                "prompt_tokens_per_second": prompt_tokens / seconds, "peak_gib": self.peak_gib()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("benchmarks/gpu_14b.py needs a CUDA GPU (torch.cuda.is_available() is False here); it builds the "
              "14B model in bf16 on the device. Nothing was run.", file=sys.stderr)
        return 2
    bench = Bench(args)
    report: dict = {"device": torch.cuda.get_device_name() if bench.device.type == "cuda" else platform.processor(),
                    "torch": torch.__version__, "cuda": torch.version.cuda, "dtype": str(bench.dtype),
                    "peak_tflops_assumed": args.peak_tflops, "peak_tbps_assumed": args.peak_tbps, "errors": {}}
    try:
        import flash_attn

        report["flash_attn"] = flash_attn.__version__
    except Exception as e:  # not installed, or a broken build
        report["flash_attn"] = None
        report["flash_attn_import"] = f"{type(e).__name__}: {e}"
    report["build"] = bench.build()
    print(json.dumps(report["build"]), flush=True)
    for section in args.sections.split(","):
        start = time.perf_counter()
        try:
            report[section] = getattr(bench, section)()
        except Exception as e:
            report["errors"][section] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
            print(f"{section} FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            if bench.device.type == "cuda":
                torch.cuda.empty_cache()
        else:
            print(f"{section} ({time.perf_counter() - start:.0f} s): {json.dumps(report[section])}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # after every section: nothing is lost
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
