"""The attention paths side by side: model/model.py before the one-entry-point change against now.

    python benchmarks/attention_paths.py                      # the real 0.5B shape, random weights
    python benchmarks/attention_paths.py --kernels sdpa,math  # also other kernels of the new code
    python benchmarks/attention_paths.py --quick              # tiny shapes: checks the script runs

The old model.py is read from git (`--old-rev`, default the last commit before the change) into
a module of its own; both models get the same random weights of Qwen2.5-0.5B's shape (24 layers,
hidden 896, 14 query heads / 2 kv heads, head_dim 64, MLP 4864; a small vocabulary, since only
the last positions go through lm_head). Each phase runs old and new in turn (ABAB...), the same
inputs; the table gives the median seconds, new / old, and the largest difference between their
outputs (0.0: bitwise equal).

Phases, as the engine runs them:
  mmlu_prefix   a 5-shot-like prefix (P tokens) once, then batches of B right-padded questions
                of 40-90 tokens over it (cascade attention), hidden states of every position.
  gsm8k_decode  an 8-shot-like prefix, B prompts of 50-110 tokens over it, then S greedy-style
                steps in which rows finish at staggered steps (keep_rows).
  prefill       B x T prompts into an empty cache (generation without a shared prefix).
  decode        S steps after that prefill, no prefix.
  rolling       one cache-less forward of L tokens (perplexity).
  keep_rows     the cache alone: 64 rows (--light: 32) holding an 800-token prefix + 400 own
                positions of a capacity of 400 + 256 new; rows finish one at a time, in a fixed
                random order, until one is left (old: index_select of every layer into new storage;
                new: in place, only the rows after the first finished one move, only the positions
                they hold).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OLD_REV = "7953595"  # the last commit whose model/model.py chose among six attention paths itself


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old-rev", default=OLD_REV, help="git revision of the old model/model.py")
    p.add_argument("--kernels", default="sdpa", help="kernels of the new code to time (comma-separated)")
    p.add_argument("--phases", default="mmlu_prefix,gsm8k_decode,prefill,decode,rolling,keep_rows")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test of the script)")
    p.add_argument("--light", action="store_true",
                   help="the real shape with less work per phase (1 MMLU batch, 24 decode steps, 32 rows to drop)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return p.parse_args(argv)


def load_old_module(rev: str):
    source = subprocess.run(["git", "show", f"{rev}:model/model.py"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="old_model_")) / "old_qwen_model.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_qwen_model", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_qwen_model"] = module
    spec.loader.exec_module(module)
    return module


def shape(quick: bool) -> dict:
    if quick:
        return dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)
    return dict(vocab_size=4096, hidden_size=896, num_layers=24, num_heads=14, num_kv_heads=2, intermediate_size=4864)


def build_pair(old_module, quick: bool):
    from qwen_eval.model.model import Qwen, QwenConfig, init_weights

    common = dict(shape(quick), rope_base=1e6, seq_length=32768, use_dynamic_ntk=False, use_logn_attn=False,
                  tie_word_embeddings=True, qkv_bias=True)
    new = init_weights(Qwen(QwenConfig(**common)), seed=0).eval()
    old = old_module.Qwen(old_module.QwenConfig(**common)).eval()
    old.load_state_dict(new.state_dict())
    return old, new


def sizes(quick: bool, light: bool = False) -> dict:
    if light and not quick:
        return dict(prefix=450, batch=16, q_lo=40, q_hi=90, g_prefix=800, g_lo=50, g_hi=110, steps=24, p_batch=8,
                    p_len=256, roll=1024, batches=1, drop_rows=32)
    if quick:
        return dict(prefix=40, batch=4, q_lo=8, q_hi=20, g_prefix=48, g_lo=6, g_hi=14, steps=6, p_batch=3, p_len=24,
                    roll=64, batches=2, drop_rows=6)
    return dict(prefix=450, batch=16, q_lo=40, q_hi=90, g_prefix=800, g_lo=50, g_hi=110, steps=64, p_batch=8,
                p_len=256, roll=2048, batches=4, drop_rows=64)


def ids(gen, *shape_):
    return torch.randint(0, 500, shape_, generator=gen)


# -- the phases: each takes a model and returns (outputs, seconds) ----------------------------------

def mmlu_prefix(model, s, gen_seed):
    gen = torch.Generator().manual_seed(gen_seed)
    prefix = ids(gen, 1, s["prefix"])
    batches = []
    for _ in range(s["batches"]):
        lengths = torch.randint(s["q_lo"], s["q_hi"] + 1, (s["batch"],), generator=gen)
        batches.append((ids(gen, s["batch"], int(lengths.max())), lengths))
    start = time.perf_counter()
    shared = model.new_cache(1, s["prefix"])
    model.prefill_cache(shared, prefix, torch.tensor([s["prefix"]]))
    outs = []
    for tokens, lengths in batches:
        cache = model.new_cache(tokens.shape[0], tokens.shape[1])
        cache.load_prefix(shared.keys, shared.values, 1.0)
        hidden = model(tokens, cache=cache, lengths=lengths, return_hidden=True)
        outs.append(hidden[torch.arange(len(lengths)), lengths - 1])
    return torch.cat(outs), time.perf_counter() - start


def _decode(model, cache, logits, steps, finish, new_api):
    """Greedy steps; row r leaves after finish[r] steps (keep_rows as each engine did it)."""
    active = list(range(logits.shape[0]))
    out = []
    for step in range(steps):
        keep = [p for p, r in enumerate(active) if finish[r] > step]
        if not keep:
            break
        if len(keep) < len(active):
            cache.keep_rows(keep if new_api else torch.tensor(keep))
            active = [active[p] for p in keep]
            logits = logits[keep]
        token = logits.argmax(-1, keepdim=True) % 500
        logits = model(token, cache=cache)[:, -1]
        out.append(sorted(zip(active, logits.float().sum(-1).tolist())))
    return out


def gsm8k_decode(model, s, gen_seed, new_api):
    gen = torch.Generator().manual_seed(gen_seed)
    prefix = ids(gen, 1, s["g_prefix"])
    lengths = torch.randint(s["g_lo"], s["g_hi"] + 1, (s["batch"],), generator=gen)
    tokens = ids(gen, s["batch"], int(lengths.max()))
    finish = torch.randint(s["steps"] // 4, s["steps"] + 1, (s["batch"],), generator=gen).tolist()
    start = time.perf_counter()
    shared = model.new_cache(1, s["g_prefix"])
    model.prefill_cache(shared, prefix, torch.tensor([s["g_prefix"]]))
    cache = model.new_cache(s["batch"], tokens.shape[1] + s["steps"])
    cache.load_prefix(shared.keys, shared.values, 1.0)
    hidden = model(tokens, cache=cache, lengths=lengths, return_hidden=True)
    logits = model.logits(hidden[torch.arange(s["batch"]), lengths - 1])
    trace = _decode(model, cache, logits, s["steps"], finish, new_api)
    return torch.tensor([v for step in trace for _, v in step]), time.perf_counter() - start


def prefill_and_decode(model, s, gen_seed, new_api, decode_too):
    gen = torch.Generator().manual_seed(gen_seed)
    lengths = torch.randint(s["p_len"] // 2, s["p_len"] + 1, (s["p_batch"],), generator=gen)
    lengths[0] = s["p_len"]
    tokens = ids(gen, s["p_batch"], s["p_len"])
    finish = torch.randint(s["steps"] // 4, s["steps"] + 1, (s["p_batch"],), generator=gen).tolist()
    cache = model.new_cache(s["p_batch"], s["p_len"] + s["steps"])
    start = time.perf_counter()
    hidden = model.prefill_cache(cache, tokens, lengths)
    logits = model.logits(hidden[torch.arange(s["p_batch"]), lengths - 1])
    prefill_s = time.perf_counter() - start
    if not decode_too:
        return logits, prefill_s
    start = time.perf_counter()
    trace = _decode(model, cache, logits, s["steps"], finish, new_api)
    return torch.tensor([v for step in trace for _, v in step]), time.perf_counter() - start


def rolling(model, s, gen_seed):
    tokens = ids(torch.Generator().manual_seed(gen_seed), 1, s["roll"])
    start = time.perf_counter()
    hidden = model(tokens, return_hidden=True)
    return hidden[0, -8:], time.perf_counter() - start


def keep_rows(model, s, gen_seed, new_api):
    """Rows finishing one at a time; returns a checksum of what each survivor holds."""
    rows = s["drop_rows"]
    own, capacity = (12, 20) if rows < 8 else (400, 656)
    cache = model.new_cache(rows, capacity)
    shared = [torch.zeros(1, 8 if rows == 6 else 800, *cache.keys[0].shape[2:])] * len(cache.keys)
    cache.load_prefix(shared, shared, 1.0)
    for store in (cache.keys, cache.values):
        for layer, t in enumerate(store):
            t[:, :own] = torch.arange(rows, dtype=t.dtype)[:, None, None, None] + layer
    cache.lengths += own
    if new_api:
        cache.host_lengths = [n + own for n in cache.host_lengths]
    order = torch.randperm(rows, generator=torch.Generator().manual_seed(gen_seed)).tolist()
    active = list(range(rows))
    start = time.perf_counter()
    for finished in order[:-1]:
        keep = [p for p, r in enumerate(active) if r != finished]
        cache.keep_rows(keep if new_api else torch.tensor(keep))
        active = [active[p] for p in keep]
    seconds = time.perf_counter() - start
    return torch.tensor([float(cache.keys[-1][0, :own].mean()), float(active[0])]), seconds


def run_phase(name, model, s, new_api):
    if name == "mmlu_prefix":
        return mmlu_prefix(model, s, 1)
    if name == "gsm8k_decode":
        return gsm8k_decode(model, s, 2, new_api)
    if name in ("prefill", "decode"):
        return prefill_and_decode(model, s, 3, new_api, decode_too=name == "decode")
    if name == "rolling":
        return rolling(model, s, 4)
    if name == "keep_rows":
        return keep_rows(model, s, 5, new_api)
    raise SystemExit(f"unknown phase {name!r}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    old_module = load_old_module(args.old_rev)
    old, new = build_pair(old_module, args.quick)
    s = sizes(args.quick, args.light)
    kernels = [k for k in args.kernels.split(",") if k]
    rows = []
    with torch.inference_mode():
        for phase in args.phases.split(","):
            variants = [("old", old, False)] + [(f"new:{k}", new, True) for k in kernels]
            times: dict[str, list[float]] = {label: [] for label, _, _ in variants}
            outputs = {}
            for _ in range(1 + args.repeats):  # the first round warms up and is not timed
                for label, model, new_api in variants:
                    if new_api:
                        model.set_attention(label.split(":")[1])
                    out, seconds = run_phase(phase, model, s, new_api)
                    times[label].append(seconds)
                    outputs[label] = out
            base = sorted(times["old"][1:])[len(times["old"][1:]) // 2]
            for label, _, _ in variants:
                timed = sorted(times[label][1:])
                median = timed[len(timed) // 2]
                diff = float((outputs[label].float() - outputs["old"].float()).abs().max())
                rows.append({"phase": phase, "variant": label, "median_s": median, "min_s": timed[0],
                             "vs_old": median / base, "max_abs_diff_vs_old": diff})
                print(f"{phase:13s} {label:11s} median {median:8.3f} s  min {timed[0]:8.3f} s  "
                      f"new/old {median / base:5.2f}  max|diff| vs old {diff:.3g}", flush=True)
    new.set_attention("auto")
    if args.json:
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "quick": args.quick,
                                         "old_rev": args.old_rev, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
