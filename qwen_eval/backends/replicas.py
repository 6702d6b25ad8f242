"""Data parallel over Ray: `model.replicas=N` runs N copies of any backend as Ray actors.

    qwen-eval task=mmlu model=vllm model.path=/models/Qwen2.5-7B model.replicas=8            # one node, 8 GPUs
    qwen-eval task=mmlu model=vllm model.path=... model.replicas=16 model.ray_address=auto   # a Ray cluster

Each replica is an actor that builds the configured backend once (`backends.build` with the
config less `replicas`) and answers chunks of requests; the pool is itself a backend, so the runner, the
answer cache and the chat layer treat it as one engine. Requests arrive sorted (the runner keeps
few-shot prefixes together) and are cut into contiguous chunks of `model.replica_chunk`, so a chunk
still shares its prefix; each replica holds two chunks at a time and takes the next as one returns.
Every answer is reported as its chunk returns, and the runner commits it to the answer cache: a
killed run resumes with what was answered. A replica that dies (its node lost, the process killed)
is replaced, up to `model.replica_restarts` times, and its unfinished chunks go to the others.

Resources per replica: `model.replica_gpus` GPUs (null: tensor x pipeline parallel size when the
cluster has GPUs, else 0) and `model.replica_cpus` CPUs (null: 1 with GPUs; without, the local
machine's cores shared out). Without `model.ray_address` a local Ray instance is started.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable, Mapping, Sequence

from qwen_eval.backends.base import Backend
from qwen_eval.errors import UserError
from qwen_eval.requests import Request

IN_FLIGHT_PER_REPLICA = 2  # chunks a replica holds: one computing, one waiting, so it never idles


class Replica:
    """One Ray actor's backend (the class is wrapped by ray.remote in ReplicaPool)."""

    def __init__(self, build: Callable[..., Backend], cfg: Mapping[str, Any], seed: int):
        self.backend = build(cfg, seed=seed)

    def info(self) -> dict[str, Any]:
        b = self.backend
        return {"name": b.name, "fingerprint": b.fingerprint, "max_length": b.max_length,
                "chat_template": b.chat_template, "checkpoint_format": b.checkpoint_format, "path": b.path,
                "special_tokens": b.special_tokens(), "describe": b.describe(), "pid": os.getpid()}

    def answer(self, kind: str, requests: Sequence[Request]) -> tuple[list[Any], int]:
        """The answers, and the tokens the backend processed for them."""
        before = self.backend.tokens_processed
        results = {"choice": self.backend.choice, "generate": self.backend.generate,
                   "rolling": self.backend.rolling}[kind](list(requests))
        return results, self.backend.tokens_processed - before


def import_ray():
    try:
        import ray
    except ModuleNotFoundError:
        raise UserError("model.replicas > 1 runs replicas on Ray: pip install 'qwen-eval[ray]'") from None
    return ray


class ReplicaPool(Backend):
    streams = frozenset({"choice", "generate", "rolling"})

    def __init__(self, cfg: Mapping[str, Any], build: Callable[..., Backend], *, seed: int = 1234):
        """build(cfg, seed=...) makes one replica's backend (backends.build, handed in so this
        module does not import the package that imports it)."""
        ray = import_ray()
        self._build = build
        self._ray = ray
        self.replicas = int(cfg.get("replicas") or 1)
        self.chunk = int(cfg.get("replica_chunk") or 16)
        self.max_restarts = int(cfg.get("replica_restarts") if cfg.get("replica_restarts") is not None else 3)
        self.restarts = 0
        self.inner_cfg = {**dict(cfg), "replicas": 1}
        self.seed = seed
        if not ray.is_initialized():
            address = cfg.get("ray_address")
            ray.init(address=address or None, include_dashboard=False, log_to_driver=bool(cfg.get("ray_logs", False)),
                     **({} if address else {"num_cpus": len(os.sched_getaffinity(0))}))
        gpus = cfg.get("replica_gpus")
        if gpus is None:
            per_replica = int(cfg.get("tensor_parallel_size") or 1) * int(cfg.get("pipeline_parallel_size") or 1)
            gpus = per_replica if ray.cluster_resources().get("GPU", 0) > 0 else 0
        cpus = cfg.get("replica_cpus")
        if cpus is None:
            cpus = 1 if gpus else max(1, int(ray.cluster_resources().get("CPU", 1)) // self.replicas)
        self._actor_class = ray.remote(num_cpus=float(cpus), num_gpus=float(gpus))(Replica)
        self.resources = {"replica_cpus": float(cpus), "replica_gpus": float(gpus)}
        self.actors = [self._start() for _ in range(self.replicas)]
        infos = ray.get([a.info.remote() for a in self.actors])
        if len({i["fingerprint"] for i in infos}) != 1:
            raise UserError("the Ray replicas built backends with different fingerprints (different weights or "
                            "settings on different nodes); give every node the same model.path contents")
        first = infos[0]
        self.name = first["name"]
        self.fingerprint = first["fingerprint"]
        self.max_length = first["max_length"]
        self.chat_template = first["chat_template"]
        self.checkpoint_format = first["checkpoint_format"]
        self.path = first["path"]
        self._special = first["special_tokens"]
        self._describe = first["describe"]
        self.tokens_processed = 0

    def _start(self):
        return self._actor_class.remote(self._build, self.inner_cfg, self.seed)

    def describe(self) -> dict[str, Any]:
        return {**self._describe, "replicas": self.replicas, "ray": {**self.resources, "restarts": self.restarts}}

    def special_tokens(self) -> dict[str, str | None]:
        return dict(self._special)

    def choice(self, requests):
        return self.answer_streaming("choice", requests, lambda i, r: None)

    def generate(self, requests):
        return self.answer_streaming("generate", requests, lambda i, r: None)

    def rolling(self, requests):
        return self.answer_streaming("rolling", requests, lambda i, r: None)

    def answer_streaming(self, kind: str, requests: Sequence[Request], on_done: Callable[[int, Any], None]) -> list[Any]:
        ray = self._ray
        chunks = [list(range(s, min(s + self.chunk, len(requests)))) for s in range(0, len(requests), self.chunk)]
        waiting = deque(range(len(chunks)))
        results: list[Any] = [None] * len(requests)
        in_flight: dict[Any, tuple[int, int]] = {}  # object ref -> (replica slot, chunk)

        def submit(slot: int) -> None:
            while waiting and sum(1 for s, _ in in_flight.values() if s == slot) < IN_FLIGHT_PER_REPLICA:
                c = waiting.popleft()
                ref = self.actors[slot].answer.remote(kind, [requests[i] for i in chunks[c]])
                in_flight[ref] = (slot, c)

        for slot in range(len(self.actors)):
            submit(slot)
        while in_flight:
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            slot, c = in_flight.pop(ref)
            try:
                answers, tokens = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                self._replace(slot, e, in_flight, waiting, c)
                submit(slot)
                continue
            self.tokens_processed += tokens
            for i, answer in zip(chunks[c], answers):
                results[i] = answer
                on_done(i, answer)
            submit(slot)
        return results

    def _replace(self, slot: int, error: Exception, in_flight: dict, waiting: deque, chunk: int) -> None:
        """Replica `slot` died: its chunks go back to the front of the queue, a new replica takes its place."""
        lost = [chunk] + [in_flight.pop(ref)[1] for ref in [r for r, (s, _) in in_flight.items() if s == slot]]
        waiting.extendleft(sorted(lost, reverse=True))  # extendleft reverses: they go back in order
        if self.restarts >= self.max_restarts:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"Ray replica {slot} died and model.replica_restarts={self.max_restarts} replacements "
                            f"are used up ({first}); answers so far are cached, rerun to resume") from None
        self.restarts += 1
        self.actors[slot] = self._start()
        self._ray.get(self.actors[slot].info.remote())
