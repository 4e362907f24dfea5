"""Spread a run's problems over Ray actors that each hold a model (``--ray auto`` / ``--ray ADDRESS``).

Why actors and not Ray tasks: a model loads once per worker (seconds for SmolLM2, minutes for a 7B
model) and then serves chunk after chunk; a task would reload it every time. Each actor rebuilds
everything from plain specs (task name, model spec, critic spec), so nothing heavy is pickled and a
worker on another machine loads its own copy: a local model folder (same path on every node) or,
with ``--model openai:...``, a client of a generation server (then the actors need no GPU and the
servers do the batching).

Scheduling: the problems still to do are cut into chunks of at most ``--batch`` (smaller when there
are few, so every worker gets some); each actor holds one chunk at a time and takes the next when it
finishes, so a slow chunk does not hold the others back. The driver writes each chunk's rows to the
run file as it arrives (so a kill loses only chunks in flight, and a rerun resumes as without Ray)
and returns all rows in problem order. Each chunk seeds its worker's sampler with the run's seed plus
the chunk's position in the run, so the samples do not depend on which worker took which chunk.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from .errors import PonderError


@dataclass(frozen=True)
class WorkerSpec:
    """What an actor needs to rebuild the run's task, policy and critic on its own machine."""

    task: str
    data: str | None
    model: str
    device: str | None = None
    dtype: str = "auto"
    critic: str | None = None
    seed: int = 0
    free_text: bool = False
    budget: Any = None  # a compute.Budget: what each problem may spend
    task_options: dict[str, Any] = field(default_factory=dict)  # the task's knobs (``Task.options``)
    rollout_model: str | None = None  # the model leaf rollouts come from (None: the policy itself)

    @property
    def task_key(self) -> tuple:
        """What the actor's task is built from: a change rebuilds it."""
        return self.task, self.data, self.free_text, tuple(sorted(self.task_options.items()))


@dataclass
class WorkerStats:
    """One worker's share of a run: chunks, problems, tokens and the seconds it spent searching."""

    worker: int
    node: str = ""
    chunks: int = 0
    problems: int = 0
    tokens_generated: int = 0
    tokens_read: int = 0
    seconds: float = 0.0
    load_seconds: float = 0.0

    def row(self) -> str:
        rate = self.tokens_generated / self.seconds if self.seconds else 0.0
        per = self.problems / self.seconds if self.seconds else 0.0
        return (f"| {self.worker} | {self.node} | {self.chunks} | {self.problems} | {self.tokens_generated:,} "
                f"| {self.seconds:.1f} | {rate:,.1f} | {per:.3f} | {self.load_seconds:.1f} |")

    HEADER = ("| worker | node | chunks | problems | tokens generated | busy seconds | tokens generated / s "
              "| problems / s | model load s |\n|---|---|---|---|---|---|---|---|---|")


class _Worker:
    """The actor: loads the task, policy and critic once, then runs chunks of problems; ``load`` swaps
    in another policy or critic (``ponder improve`` has a new one every iteration)."""

    def __init__(self, spec: WorkerSpec, threads: int | None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.spec: WorkerSpec | None = None
        self.policy = self.critic = self.rollout_policy = None
        self.load_seconds = 0.0
        self.load(spec)

    def load(self, spec: WorkerSpec) -> float:
        """Load what differs from the current spec; returns the seconds it took."""
        from .critics import get_critic
        from .models import load_policy
        from .tasks import get_task

        t0 = time.perf_counter()
        old = self.spec
        if old is None or old.task_key != spec.task_key:
            self.task = get_task(spec.task, spec.data, spec.free_text, **spec.task_options)
        new_policy = old is None or (old.model, old.device, old.dtype) != (spec.model, spec.device, spec.dtype)
        if new_policy:
            self.policy = self.critic = None  # free the old model first: one at a time on the device
            self.policy = load_policy(spec.model, device=spec.device, dtype=spec.dtype, seed=spec.seed)
        if new_policy or old.critic != spec.critic or old.task_key != spec.task_key:
            self.critic = get_critic(spec.critic, self.task, self.policy) if spec.critic else None
        if old is None or (old.rollout_model, old.device, old.dtype) != (spec.rollout_model, spec.device, spec.dtype):
            from .models import load_rollout_policy

            self.rollout_policy = None
            self.rollout_policy = load_rollout_policy(spec.rollout_model, spec.device, spec.dtype, spec.seed) \
                if spec.rollout_model else None
        self.spec = spec
        seconds = time.perf_counter() - t0
        self.load_seconds += seconds
        return seconds

    def info(self) -> tuple[str, float]:
        import socket

        return f"{socket.gethostname()}:{os.getpid()}", self.load_seconds

    def run(self, method: str, config: Any, problems: list, seed: int, save_trees: bool) -> tuple[list[dict], float]:
        """The rows of one chunk and the seconds it took."""
        from .evaluate import result_row
        from .search import SearchEnv, get_method

        t0 = time.perf_counter()
        if hasattr(self.policy, "seed"):
            self.policy.seed(seed)
        if hasattr(self.rollout_policy, "seed"):
            self.rollout_policy.seed(seed)
        env = SearchEnv(self.policy, self.task, self.critic, budget=self.spec.budget, rollout_policy=self.rollout_policy)
        results = get_method(method).run(problems, env, config)
        rows = [result_row(self.task, method, r, save_trees) for r in results]
        return rows, time.perf_counter() - t0


def init_ray(address: str):
    """Join a Ray cluster: ``auto`` joins the one ``$RAY_ADDRESS`` names or starts a local one; anything
    else is a cluster address (``HOST:6379`` or ``ray://HOST:10001``)."""
    try:
        import ray
    except ImportError:
        raise PonderError("--ray needs the ray package: pip install 'ray>=2.9'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "auto" else address, log_to_driver=False,
                     include_dashboard=False, ignore_reinit_error=True)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise PonderError(f"--ray {address}: cannot join the Ray cluster ({str(e).splitlines()[0]})") from None
    return ray


@dataclass
class RayPool:
    """``workers`` actors, each holding the model ``spec`` names; see the module docstring.

    workers: actors to start (default: one per GPU in the cluster for a local model on CUDA, else
        one per CPU).
    cpus, gpus: Ray resources each actor reserves (gpus default: 1 for a local model when the cluster
        has GPUs, 0 for a server client); torch in an actor uses ``cpus`` threads.
    """

    spec: WorkerSpec
    address: str = "auto"
    workers: int | None = None
    cpus: float = 1.0
    gpus: float | None = None
    stats: list[WorkerStats] = field(default_factory=list)

    def __post_init__(self):
        from .models.server import is_server_spec

        if self.workers is not None and self.workers <= 0:
            raise PonderError(f"--workers must be > 0, got {self.workers}")
        ray = init_ray(self.address)
        res = ray.cluster_resources()
        if self.gpus is None:
            self.gpus = 1.0 if res.get("GPU", 0) >= 1 and not is_server_spec(self.spec.model) and self.spec.device != "cpu" else 0.0
        if self.workers is None:
            self.workers = max(1, int(res.get("GPU", 0) // self.gpus) if self.gpus else int(res.get("CPU", 1) // self.cpus))
        actor = ray.remote(_Worker).options(num_cpus=self.cpus, num_gpus=self.gpus)
        threads = max(1, int(self.cpus))
        self.actors = [actor.remote(self.spec, threads) for _ in range(self.workers)]
        try:
            infos = ray.get([a.info.remote() for a in self.actors])
        except Exception as e:  # an actor that failed to load its model: say why in one line
            self.close()
            raise PonderError(f"a Ray worker could not load its model: {_root(e)}") from None
        self.stats = [WorkerStats(i, node, load_seconds=round(s, 1)) for i, (node, s) in enumerate(infos)]

    def use(self, spec: WorkerSpec) -> None:
        """Point every worker at another policy or critic (each loads only what changed)."""
        import ray

        if spec == self.spec:
            return
        try:
            seconds = ray.get([a.load.remote(spec) for a in self.actors])
        except Exception as e:
            raise PonderError(f"a Ray worker could not load {spec.model}: {_root(e)}") from None
        for st, s in zip(self.stats, seconds):
            st.load_seconds = round(st.load_seconds + s, 1)
        self.spec = spec

    def chunk_size(self, todo: int, batch: int) -> int:
        """At most ``batch`` problems a chunk, and at least two chunks a worker where there are enough."""
        return max(1, min(batch, math.ceil(todo / (2 * self.workers))))

    def map(self, method: str, config: Any, chunks: Sequence[list], seeds: Sequence[int], save_trees: bool) -> Iterator[tuple[int, list[dict]]]:
        """(chunk index, rows) for every chunk, in the order they finish."""
        import ray

        queue = list(range(len(chunks)))
        running: dict[Any, tuple[int, int]] = {}  # object ref -> (chunk, worker)

        def give(w: int) -> None:
            if queue:
                c = queue.pop(0)
                running[self.actors[w].run.remote(method, config, list(chunks[c]), seeds[c], save_trees)] = (c, w)

        for w in range(len(self.actors)):
            give(w)
        try:
            while running:
                [ref], _ = ray.wait(list(running), num_returns=1)
                c, w = running.pop(ref)
                try:
                    rows, seconds = ray.get(ref)
                except Exception as e:
                    raise PonderError(f"Ray worker {w} failed on a chunk: {_root(e)}") from None
                st = self.stats[w]
                st.chunks += 1
                st.problems += len(rows)
                st.tokens_generated += sum(r["compute"]["tokens_generated"] for r in rows)
                st.tokens_read += sum(r["compute"]["tokens_read"] for r in rows)
                st.seconds += seconds
                give(w)
                yield c, rows
        finally:
            for ref in running:
                ray.cancel(ref, force=False)

    def report(self) -> str:
        return WorkerStats.HEADER + "\n" + "\n".join(s.row() for s in self.stats)

    def close(self) -> None:
        import ray

        for a in getattr(self, "actors", []):
            ray.kill(a)
        self.actors = []


def _root(e: BaseException) -> str:
    """The first line of the innermost error a Ray failure wraps (a PonderError's own message)."""
    cause = getattr(e, "cause", None) or e.__cause__
    if cause is not None and cause is not e:
        return _root(cause)
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[-1].strip() if lines else type(e).__name__
