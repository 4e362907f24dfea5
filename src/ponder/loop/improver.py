"""``Improver``: what every phase of the loop reads, passed to each phase function.

The run folder and its (seeded) config, the task, the validation problems and where training problems
come from, the loaded policy (cached by spec), the Ray pool, the training launcher and the tracker; and
the look-ups the phases share: which policy an iteration starts or ends with, which critics guide it,
and ``run_eval`` on the policy and critic named by spec, here or on Ray workers.
"""

from pathlib import Path
from typing import Any

from ..errors import PonderError
from ..tasks import get_task
from ..tracking import Tracker
from .config import CRITIC_KINDS, guide_terms, seeded
from .imagine import held_out
from .run import Run

GRPO_ONE_PROCESS = ("--policy-update grpo trains in one process (its update is not data-parallel); "
                    "run it without --train-launcher")


class Improver:
    """The state of a run of the loop; the phases (``imagine``, ``search``, ...) are functions of it."""

    def __init__(self, run: Run, progress: bool = True, ray: str | None = None, workers: int | None = None,
                 launcher: str | None = None):
        self.run, self.cfg, self.progress = run, seeded(run.cfg), progress  # the folder keeps the config as given
        self.task = get_task(self.cfg.task, self.cfg.data, self.cfg.free_text, **self.cfg.task_options)
        self.val, self.new_problems = held_out(self.task, self.cfg)
        self.policy_cache: tuple[str, Any] | None = None  # (spec, policy) last loaded; dropped when training changes it
        self.rollout_cache: tuple[str, Any] | None = None  # (spec, rollout policy) last loaded
        if self.cfg.rollout_model == "distill" and not self.task.can_bootstrap:
            raise PonderError(f"--rollout-model distill bootstraps the rollout model on the task's synthetic traces, and "
                              f"task {self.task.name!r} has none; give a model spec instead")
        self.writer: tuple[str, Any] | None = None  # (spec, model) of --imagine model:SPEC, loaded on first use
        self.ray, self.workers = ray, workers
        self.pool = None  # Ray actors for search and evaluation, started on first use
        self.launcher = launcher  # e.g. "accelerate launch --multi_gpu --num_processes 8": trains the policy
        if launcher and self.cfg.policy_update == "grpo":
            raise PonderError(GRPO_ONE_PROCESS)
        self.tracker = Tracker()  # logs nothing until run_all (or a launched trainer) opens --report-to's backend

    # --- models -----------------------------------------------------------------------------------
    def policy(self, spec: str):
        from ..models import load_policy

        if self.policy_cache is None or self.policy_cache[0] != spec:
            self.policy_cache = (spec, load_policy(spec, device=self.cfg.device, seed=self.cfg.seed))
        return self.policy_cache[1]

    def local_policy(self, spec: str, what: str):
        """The policy as a local model: training needs its weights, which a server does not lend."""
        from ..models.server import is_server_spec

        if is_server_spec(spec):
            raise PonderError(f"{what} needs a local model, and {spec.split('?')[0]} is a server: a server model serves "
                              "search and evaluation only; start from a model folder (--model DIR), or use ponder eval")
        return self.policy(spec)

    def rollout_policy(self, spec: str):
        """The rollout model of ``spec``, loaded once (``models.load_rollout_policy``: errors name --rollout-model)."""
        from ..models import load_rollout_policy

        if self.rollout_cache is None or self.rollout_cache[0] != spec:
            self.rollout_cache = None
            self.rollout_cache = (spec, load_rollout_policy(spec, device=self.cfg.device, seed=self.cfg.seed))
        return self.rollout_cache[1]

    def rollout_spec(self, i: int) -> str | None:
        """The model whose rollouts a search with iteration i's policy uses: ``--rollout-model`` as given, with
        ``distill`` the one distilled at iteration i (``iter-I/rollout``; iteration 0's is the bootstrap); None
        for the policy itself."""
        spec = self.cfg.rollout_model
        if spec != "distill":
            return spec
        info = self.run.phases(i)
        if "rollout" not in info:
            raise PonderError(f"iteration {i} has no distilled rollout model yet")
        return info["rollout"]

    def policy_path(self, i: int) -> str:
        """The policy that iteration i ended with (iteration 0: the starting model)."""
        info = self.run.phases(i)
        if "policy" not in info:
            raise PonderError(f"iteration {i} has no policy yet")
        return info["policy"]

    def start_policy(self, i: int) -> str:
        """The policy iteration i starts from: iteration i-1's, or the best one after a rollback."""
        watch = self.run.phases(i - 1).get("watch") or {}
        return watch.get("next_policy") or self.policy_path(i - 1)

    def critic_dir(self, i: int, kind: str) -> Path | None:
        """The newest critic of this kind trained at or before iteration i."""
        for j in range(i, 0, -1):
            d = self.run.it(j) / "critics" / kind
            if (d / "critic.json").exists() and "critics" in self.run.phases(j):
                return d
        return None

    def guide(self, i: int) -> str | None:
        """The critic spec (a weighted mix) that guides search with iteration i's critics, or None before any exist."""
        terms = []
        for kind, weight in guide_terms(self.cfg.guide):
            d = self.critic_dir(i, kind)
            if d is not None:
                terms.append(f"{kind}:{d}@{weight}")
        return ",".join(terms) or None

    def run_eval(self, policy: str, critic: str | None, method: str, config, problems, out: Path | None, batch: int,
                 seed: int, settings: dict | None = None, save_trees: bool = False, rollout: str | None = None):
        """``run_eval`` with the policy, critic and rollout model (None: the policy) given by spec: loaded here, or
        by the Ray workers with ``--ray``."""
        from ..critics import get_critic
        from ..evaluate import run_eval

        if self.ray:
            from ..distributed import RayPool, WorkerSpec

            spec = WorkerSpec(self.task.name, self.cfg.data, policy, self.cfg.device, "auto", critic, self.cfg.seed,
                              self.cfg.free_text, task_options=dict(self.task.options), rollout_model=rollout)
            if self.pool is None:
                self.pool = RayPool(spec, self.ray, self.workers)
            self.pool.use(spec)
            pol = crit = roll = None
        else:
            pol = self.policy(policy)
            crit = get_critic(critic, self.task, pol) if critic else None
            roll = self.rollout_policy(rollout) if rollout else None
        return run_eval(self.task, pol, method, config, problems, out, crit, batch, seed, settings, self.progress,
                        save_trees, self.pool, rollout_policy=roll)

    def critic_kinds(self) -> tuple[str, ...]:
        """The critics trained each iteration: ``--critics``, else value and PRM, and the ORM where the task
        has no verifier (with one, best-of-N ranks by the verifier and nothing reads an ORM)."""
        if self.cfg.critics is not None:
            return tuple(self.cfg.critics)
        return CRITIC_KINDS if not self.task.checkable else ("value", "prm")
