"""Qwen-14B shapes on one GPU: prefill TFLOP/s, decode tokens/s, a 32K forward, an MMLU-style engine run.

    python benchmarks/gpu_14b.py results/bench/gpu_14b.json
    python benchmarks/gpu_14b.py out.json --decode-batches 1,8,32 --long-length 16384
    python benchmarks/gpu_14b.py /tmp/smoke.json --preset tiny --allow-cpu   # smoke test of this script
    python benchmarks/gpu_14b.py /tmp/dry.json --dry-run    # every section at tiny shapes on CPU (the tests run it)

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
  check        the device's logits (bf16) against CPU fp32 logits of the same weights, for every
               attention phase (no cache, prompts into a cache, decoding, prompts after a shared
               prefix, decoding after it) and every attention kernel, with long-context switches
               off and on (NTK, LogN, windows that bite). The model is the preset's shape with
               --check-layers layers (so the CPU reference stays cheap); decoding is teacher-forced
               (the same tokens on both sides). Records max |diff|, its ratio to the logits' spread,
               top-1 agreement, and seconds per phase on the device. The math kernel on the device
               is the yardstick for bf16 rounding.
Attention kernels (model.attention, --attention): every one that resolves on the device (flash
needs flash-attn; math runs only in the check section). Each timed section runs once per kernel.
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
    p.add_argument("--sections", default="check,prefill,decode,long,engine_mmlu")
    p.add_argument("--attention", default="flash,sdpa,flex,math",
                   help="attention kernels to run (those that cannot run on the device are listed as unavailable)")
    p.add_argument("--check-layers", type=int, default=4)
    p.add_argument("--check-length", type=int, default=320, help="longest row of the check (seq_length = half)")
    p.add_argument("--check-prefix", type=int, default=160)
    p.add_argument("--check-steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS)
    p.add_argument("--peak-tbps", type=float, default=H200_HBM_TBPS)
    p.add_argument("--allow-cpu", action="store_true",
                   help="run on CPU in fp32 (only to smoke-test this script with --preset tiny)")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, preset tiny, tiny shapes, bf16 as the 'device' dtype of the check: runs every section")
    args = p.parse_args(argv)
    if args.dry_run:
        args.allow_cpu = True
        args.preset = "tiny"
        for key, value in dict(prefill_batch=2, prefill_length=32, decode_batches="2", decode_prompt=16,
                               decode_steps=3, long_length=300, mmlu_questions=3, repeats=1, check_layers=2,
                               check_length=40, check_prefix=16, check_steps=3).items():
            setattr(args, key, value)
    return args


class Bench:
    def __init__(self, args):
        import torch

        self.torch = torch
        self.args = args
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.unavailable: dict[str, str] = {}  # kernel -> why it cannot run here
        # the check's device side: bf16 on a GPU; in a dry run bf16 on the CPU too
        self.check_dtype = torch.bfloat16 if self.device.type == "cuda" or args.dry_run else self.dtype

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
        from qwen_eval.model.model import Qwen, QwenConfig, init_weights

        torch = self.torch
        cfg = QwenConfig.preset(self.args.preset)
        self.reset_peak()
        start = time.perf_counter()
        with torch.device("meta"):
            model = Qwen(cfg)
        model = model.to(dtype=self.dtype).to_empty(device=self.device)
        init_weights(model, seed=0, device=self.device)  # drawn on the device: no 28 GB host copy
        self.sync()
        self.model = model.eval().requires_grad_(False)
        self.cfg = cfg
        self.linear_params = sum(p.numel() for n, p in model.named_parameters()
                                 if n.startswith("layers.") and n.endswith(".weight") and p.dim() == 2)
        params = sum(p.numel() for p in model.parameters())
        return {"preset": self.args.preset, "parameters": params, "linear_parameters_in_layers": self.linear_params,
                "weights_gib": params * self.dtype.itemsize / 2 ** 30, "build_seconds": time.perf_counter() - start,
                "peak_gib": self.peak_gib()}

    def attention_variants(self, *, dtype=None, include_math: bool = False) -> list[str]:
        """The --attention kernels that resolve on the device (math only where asked for)."""
        from qwen_eval.model.attention import AttentionUnavailable, resolve_kernel

        kernels = []
        for name in self.args.attention.split(","):
            if name == "math" and not include_math:
                continue
            try:
                resolve_kernel(name, self.device, dtype or self.dtype)
            except AttentionUnavailable as e:
                self.unavailable[name] = str(e)
            else:
                kernels.append(name)
        return kernels

    def use_variant(self, variant: str, model=None) -> None:
        (model or self.model).set_attention(variant)

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
        for variant, b in ((v, int(x)) for v in self.attention_variants() for x in a.decode_batches.split(",")):
            self.use_variant(variant)
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
            rows.append({"attention": variant, "batch": b, "prompt": a.decode_prompt, "steps": a.decode_steps,
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
                request_s, loglik = self.timed(lambda: engine.scorer.window_loglik(ids[0].tolist(), 1, options), 1)
            rows.append({"attention": variant, "length": n, "ntk_alpha": ntk_alpha(n, cfg.seq_length),
                         "forward_seconds": seconds, "forward_tflops": flops / seconds / 1e12,
                         "forward_peak_gib": forward_peak, "rolling_request_seconds": request_s,
                         "rolling_request_peak_gib": self.peak_gib(), "ppl": math.exp(-loglik / (n - 1)),
                         "finite": finite})
        return rows

    def engine_mmlu(self) -> list[dict]:
        from qwen_eval.requests import Choice

        a = self.args
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
        rows, first_answers = [], None
        for variant in self.attention_variants():
            row, answers = self._engine_mmlu_run(variant, requests, batches)
            first_answers = first_answers or answers
            row["answers_equal_to_" + self.attention_variants()[0]] = answers == first_answers
            rows.append(row)
        return rows

    def _engine_mmlu_run(self, variant: str, requests, batches) -> tuple[dict, list[int]]:
        from qwen_eval.model.engine import Engine
        from qwen_eval.model.tokenizer import load_tokenizer

        torch = self.torch
        self.use_variant(variant)
        engine = Engine(self.model, load_tokenizer(None), max_length=2048, max_batch_tokens=65536)
        self.reset_peak()
        answers = []
        with torch.inference_mode():
            engine.choice(batches[0])  # warm-up
            self.sync()
            before, start = engine.tokens_processed, time.perf_counter()
            for batch in batches:
                answers += [max(range(4), key=lambda i: r.logprobs[i]) for r in engine.choice(batch)]
            self.sync()
            seconds = time.perf_counter() - start
        tokens = engine.tokens_processed - before
        prompt_tokens = sum(len(engine.tokenizer.encode(r.context)) for r in requests)
        return {"attention": variant, "requests": len(requests), "batch": 64, "seconds": seconds,
                "requests_per_second": len(requests) / seconds, "prompt_tokens": prompt_tokens,
                "tokens_computed": tokens, "prefix_reuse_saving": 1 - tokens / prompt_tokens,
                "prompt_tokens_per_second": prompt_tokens / seconds, "peak_gib": self.peak_gib()}, answers

    # -- check: device logits against CPU fp32 logits, per phase and kernel ----------------------
    def check(self) -> dict:
        """Every attention phase and kernel on the device against the CPU fp32 reference."""
        from dataclasses import replace

        from qwen_eval.model.model import LongContextOptions, Qwen, QwenConfig, init_weights, window_schedule

        torch, a = self.torch, self.args
        n = a.check_length
        cfg = replace(QwenConfig.preset(a.preset, num_layers=a.check_layers), seq_length=n // 2)
        reference = init_weights(Qwen(cfg), seed=0).eval()  # CPU fp32
        with torch.device("meta"):
            device_model = Qwen(cfg)
        device_model = device_model.to_empty(device=self.device).to(self.check_dtype)
        device_model.load_state_dict(reference.state_dict())
        device_model.eval()
        # lower layers see half of seq_length: the window bites in every phase (and reaches into the prefix)
        windows = tuple(cfg.seq_length // 2 if w else 0 for w in window_schedule(cfg.num_layers, cfg.seq_length,
                                                                                  groups=2))
        settings = {"plain": LongContextOptions(False, False, False),
                    "long": LongContextOptions(True, True, windows)}  # NTK, LogN and a window that bites
        inputs = self._check_inputs(cfg, n)
        report = {"layers": cfg.num_layers, "seq_length": cfg.seq_length, "windows": list(windows),
                  "device_dtype": str(self.check_dtype), "rows": []}
        with torch.inference_mode():
            for name, options in settings.items():
                reference.set_attention("auto")
                want, _ = self._check_phases(reference, inputs, options, torch.device("cpu"))
                for kernel in self.attention_variants(dtype=self.check_dtype, include_math=True):
                    device_model.set_attention(kernel)
                    self._check_phases(device_model, inputs, options, self.device)  # warm-up (and compiles)
                    got, seconds = self._check_phases(device_model, inputs, options, self.device)
                    for phase, ref in want.items():
                        diff = (got[phase] - ref).abs()
                        report["rows"].append({
                            "options": name, "attention": kernel, "phase": phase, "seconds": seconds[phase],
                            "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                            "max_diff_over_logit_std": float(diff.max() / ref.std()),
                            "top1_agreement": float((got[phase].argmax(-1) == ref.argmax(-1)).float().mean()),
                            "finite": bool(torch.isfinite(got[phase]).all())})
        del device_model
        return report

    def _check_inputs(self, cfg, n: int) -> dict:
        torch, a = self.torch, self.args
        gen = torch.Generator().manual_seed(3)
        vocab = min(cfg.vocab_size, 151851)
        lengths = torch.tensor([n, n - 17, n // 2])
        suffix = torch.tensor([n - a.check_prefix, (n - a.check_prefix) // 2, 5])
        return {"ids": torch.randint(0, vocab, (3, n), generator=gen), "lengths": lengths,
                "prefix": torch.randint(0, vocab, (1, a.check_prefix), generator=gen),
                "suffix_ids": torch.randint(0, vocab, (3, int(suffix.max())), generator=gen), "suffix": suffix,
                "steps": torch.randint(0, vocab, (3, a.check_steps), generator=gen)}

    def _check_phases(self, model, inputs: dict, options, device) -> tuple[dict, dict]:
        """Logits (fp32, on CPU) of the real positions of every phase, and seconds per phase."""
        torch, a = self.torch, self.args
        x = {k: v.to(device) for k, v in inputs.items()}
        real = lambda lengths, width: torch.arange(width, device=device)[None, :] < lengths[:, None]  # noqa: E731
        out, seconds = {}, {}

        def timed(name, fn):
            self.sync() if device.type == "cuda" else None
            start = time.perf_counter()
            value = fn()
            self.sync() if device.type == "cuda" else None
            seconds[name] = time.perf_counter() - start
            out[name] = value.float().cpu()

        ids, lengths = x["ids"], x["lengths"]
        timed("no_cache", lambda: model(ids, lengths=lengths, options=options)[real(lengths, ids.shape[1])])
        cache = model.new_cache(3, ids.shape[1] + a.check_steps)
        timed("prefill", lambda: model.prefill_cache(cache, ids, lengths, options, return_hidden=False)[
            real(lengths, ids.shape[1])])
        steps = x["steps"]
        timed("decode", lambda: torch.cat([model(steps[:, s:s + 1], cache=cache, options=options)[:, 0]
                                           for s in range(steps.shape[1])]))
        alpha = model.row_alphas([int(lengths.max())], options)[0]
        shared = model.new_cache(1, x["prefix"].shape[1])

        def after_prefix():
            model.prefill_cache(shared, x["prefix"], torch.tensor([x["prefix"].shape[1]], device=device), options,
                                alphas=[alpha])
            rows = model.new_cache(3, x["suffix_ids"].shape[1] + a.check_steps)
            rows.load_prefix(shared.keys, shared.values, alpha)
            self._rows = rows
            logits = model(x["suffix_ids"], cache=rows, lengths=x["suffix"], options=options)
            return logits[real(x["suffix"], x["suffix_ids"].shape[1])]
        timed("prefix_prefill", after_prefix)
        timed("prefix_decode", lambda: torch.cat([model(steps[:, s:s + 1], cache=self._rows, options=options)[:, 0]
                                                  for s in range(steps.shape[1])]))
        return out, seconds


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
        report["attention_unavailable"] = bench.unavailable
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # after every section: nothing is lost
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
