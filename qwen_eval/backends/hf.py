"""The reference backend: any causal LM through transformers' AutoModelForCausalLM.

    qwen-eval task=mmlu model=hf model.path=/path/to/checkpoint

It tokenizes, truncates and windows exactly like the bundled engine (token_plans), batches with
padding and an attention mask, and decodes with `model.generate`. It is the yardstick the bundled
engine is checked against, not the fast path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from qwen_eval.backends.base import Backend, unsupported
from qwen_eval.errors import UserError
from qwen_eval.provenance import folder_identity
from qwen_eval.model.devices import resolve_device, resolve_dtype
from qwen_eval.model.loading import weights_fingerprint
from qwen_eval.model.token_plans import ScoringRow, choice_results, plan_choices, rolling_tokens, rolling_windows
from qwen_eval.requests import (DEFAULT_MAX_LENGTH, Choice, ChoiceResult, Generate, GenerateResult, Rolling,
                                RollingResult, cut_at_stop, new_token_budget, request_key)


class HFBackend(Backend):
    def __init__(self, model, tokenizer, *, name: str, path: str, max_length: int, fingerprint: str,
                 dtype: torch.dtype, seed: int = 1234, batch_rows: int = 16):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.chat_template = tokenizer.chat_template  # for qwen_eval.chat
        self.name = name
        self.path = path
        self.max_length = max_length
        self.fingerprint = fingerprint
        self.dtype = dtype
        self.seed = seed
        self.batch_rows = batch_rows
        self.device = next(model.parameters()).device
        self.tokens_processed = 0
        self.checkpoint: dict[str, Any] = {}  # provenance.folder_identity of `path`
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, seed: int = 1234) -> "HFBackend":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = cfg.get("path")
        if not path or not Path(str(path)).expanduser().is_dir():
            raise UserError(f"model=hf needs model.path=DIR, a local transformers checkpoint folder "
                            f"(got {path!r})")
        path = str(Path(str(path)).expanduser())
        device = resolve_device(cfg.get("device"))
        dtype = resolve_dtype(cfg.get("dtype"), device)
        trust = bool(cfg.get("trust_remote_code", False))
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust,
                                                         local_files_only=True).to(device)
        except (OSError, ValueError, KeyError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"model=hf: cannot load a checkpoint from {path} ({first})") from None
        max_length = int(cfg.get("max_length") or DEFAULT_MAX_LENGTH)
        digest = hashlib.sha256(f"{weights_fingerprint(Path(path))}:{dtype}:{max_length}:{seed}".encode())
        backend = cls(model, tokenizer, name=str(cfg.get("name") or "hf"), path=path,
                      max_length=max_length, fingerprint="hf-" + digest.hexdigest()[:16],
                      dtype=dtype, seed=seed, batch_rows=int(cfg.get("batch_rows") or 16))
        backend.checkpoint = folder_identity(Path(path), model.config.to_dict(), "hf")
        return backend

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "backend": "hf", "path": self.path, "dtype": str(self.dtype).removeprefix("torch."),
                "device": str(self.device), "fingerprint": self.fingerprint,
                "class": type(self.model).__name__, "checkpoint": self.checkpoint}

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # -- scoring ----------------------------------------------------------------------------------
    def _score_rows(self, rows: list[ScoringRow]) -> list[tuple[list[float], list[bool]]]:
        scores: list[tuple[list[float], list[bool]]] = [([], [])] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i].tokens))
        for s in range(0, len(order), self.batch_rows):
            group = order[s:s + self.batch_rows]
            width = max(len(rows[i].tokens) for i in group)
            ids = torch.full((len(group), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros(len(group), width, dtype=torch.long)
            for b, i in enumerate(group):  # right padding: positions stay 0..n-1 for every row
                ids[b, :len(rows[i].tokens)] = torch.tensor(rows[i].tokens)
                mask[b, :len(rows[i].tokens)] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            self.tokens_processed += int(mask.sum())
            for b, i in enumerate(group):
                row = rows[i]
                logprobs = torch.log_softmax(logits[b, row.positions].float(), dim=-1)
                target = torch.tensor(row.targets, device=self.device)
                lp = logprobs.gather(1, target[:, None])[:, 0]
                scores[i] = (lp.tolist(), (logprobs.argmax(-1) == target).tolist())
        return scores

    @torch.inference_mode()
    def choice(self, requests: Sequence[Choice]) -> list[ChoiceResult]:
        rows, plans = plan_choices(requests, self._encode, self.max_length)
        return choice_results(plans, self._score_rows(rows))

    @torch.inference_mode()
    def rolling(self, requests: Sequence[Rolling]) -> list[RollingResult]:
        results = []
        for r in requests:
            lc = r.long_context
            if lc is not None and (lc.use_dynamic_ntk or lc.use_logn_attn or lc.window_attn):
                raise unsupported("hf", "Rolling requests with dynamic NTK, LogN or window attention",
                                  "use the bundled engine (model=tiny, qwen-14b, ...)")
            text = self._encode(r.text)
            ids = rolling_tokens(text, r.first_tokens)
            rows = [ScoringRow(ids[a:b], list(range(f - a - 1, b - a - 1)), ids[f:b])
                    for a, b, f in rolling_windows(len(ids), r.max_length or self.max_length, r.stride)]
            scores = self._score_rows(rows)
            results.append(RollingResult(float(sum(sum(lp) for lp, _ in scores)), sum(len(row.targets) for row in rows),
                                         len(text)))
        return results

    # -- generation -------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, requests: Sequence[Generate]) -> list[GenerateResult]:
        from transformers import StoppingCriteria, StoppingCriteriaList

        tokenizer = self.tokenizer

        class StopStrings(StoppingCriteria):
            def __init__(self, stops: Sequence[str], prompt_width: int):
                self.stops, self.width = [s for s in stops if s], prompt_width

            def __call__(self, input_ids, scores, **kwargs):
                texts = tokenizer.batch_decode(input_ids[:, self.width:])
                return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)

        out = []
        for r in requests:
            ids = torch.tensor([self._encode(r.context)], device=self.device)
            texts = [] if (budget := new_token_budget(r, ids.shape[1])) > 0 else [""] * r.n
            for sample in range(r.n if budget > 0 else 0):
                kwargs: dict[str, Any] = {"do_sample": False}
                if r.temperature > 0:
                    seed = int.from_bytes(hashlib.sha256(f"{request_key(r)}:{sample}:{self.seed}".encode()).digest()[:4], "little")
                    torch.manual_seed(seed)
                    kwargs = {"do_sample": True, "temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k}
                gen = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget,
                                          pad_token_id=self.pad_id, stopping_criteria=StoppingCriteriaList(
                                              [StopStrings(r.stop, ids.shape[1])]), **kwargs)
                new = gen[0, ids.shape[1]:].tolist()
                self.tokens_processed += ids.shape[1] + len(new)
                eos = tokenizer.eos_token_id
                if eos is not None and eos in new:
                    new = new[:new.index(eos)]
                texts.append(cut_at_stop(tokenizer.decode(new), r.stop))
            out.append(GenerateResult(tuple(texts)))
        return out
