"""``ponder improve``: the self-improvement loop (AlphaLLM), with critics that learn alongside the policy.

Each iteration i = 1..N:

1. **imagine**: new training problems (never a test problem, never a validation one);
2. **search**: MCTS over them with the current policy, guided by the critics of iteration i-1
   (iteration 1 has none yet and values leaves by verifier-scored rollouts alone);
3. **extract**: verified traces (SFT), sibling step pairs (DPO), per-step targets (value, PRM, ORM)
   from the trees of the last ``replay`` iterations (verified traces from every iteration so far);
4. **train**: the policy by rejection-sampling fine-tuning, then step-level DPO against the
   fine-tuned model; the critics (unlike AlphaLLM's, which stay frozen) by further training on the
   new trees (``retrain_critics=False`` freezes them after iteration 1, as in the paper);
5. **evaluate** on the test split: greedy, best-of-N and MCTS at a fixed token budget;
6. **watch** for collapse on held-out validation problems: sample diversity, per-token entropy and
   validation accuracy; a drop can roll the next iteration back to the best checkpoint.

Iteration 0 is the starting policy (the tiny model bootstrapped from scratch on random legal
traces, or ``--model``), evaluated the same way.

The run folder holds the resolved config (``config.yaml``), ``metrics.jsonl`` (a line per finished
iteration), every checkpoint and search tree, and ``report.md`` with plots. Every phase records
itself in ``iter-I/phases.json`` when it finishes, and the search and evaluation files are
append-only JSONL written as each batch finishes, so ``--resume`` after a crash or ``kill -9``
redoes only the unfinished phase and loses no finished search.
"""

# No ``from __future__ import annotations``: ``config.build`` resolves the nested config types.
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

from .config import build, check_literals, check_positive, nested, option, to_dict
from .errors import PonderError
from .io import read_rows, write_jsonl, write_text
from .models.tiny import TinyConfig
from .search.mcts import MCTSConfig
from .tasks import Problem, Task, get_task
from .train.critic import CriticConfig
from .train.dpo import DPOConfig
from .train.expert import ExpertConfig
from .train.parallel import is_main_process
from .train.sft import SFTConfig
from .tracking import HELP as REPORT_TO_HELP, ReportTo, Tracker, get_tracker, require

PolicyUpdate = Literal["expert", "sft", "sft+dpo", "none"]
TrainFrom = Literal["previous", "initial"]
CRITIC_KINDS = ("value", "prm", "orm")


def _bootstrap_defaults() -> SFTConfig:
    """Bootstrap of the from-scratch model on random legal traces. With observations the model learns only
    to write actions (the task computes their results), which 150 steps teach; free text needs ~900 to
    learn the arithmetic as well."""
    return SFTConfig(steps=150)


def _sft_defaults() -> SFTConfig:
    """Rejection-sampling fine-tuning on verified traces, each iteration."""
    return SFTConfig(steps=80, lr=5e-4, warmup=10, checkpoint_every=1000)


def _search_defaults() -> MCTSConfig:
    """MCTS over the imagined training problems. Wide (k = 8, widened to 16): on Game of 24 a state has
    up to 36 legal actions, and at k = 4 (widened to 6) the bootstrap policy's search solved 33-36% of
    its training puzzles, against 78% at k = 8 (held-out training puzzles, ranks 801-900)."""
    return MCTSConfig(simulations=64, k=8, k_max=16, rollouts=1, value_weight=0.5, max_nodes=512, skip_finished=True,
                      seed=0)


def _eval_mcts_defaults() -> MCTSConfig:
    """MCTS at test time, stopped at a fixed budget of 2,000 generated tokens per problem. The width was
    chosen on held-out training puzzles (ranks 801-900), never on the test split: with the bootstrap
    policy and rollouts alone, 64 simulations at k = 4 solved 40% of them, at k = 6 62% (a k = 6 tree
    is exhausted after 216 leaves), and 300 simulations at k = 8 widened to 16 92% (1,263 generated
    tokens per puzzle)."""
    return MCTSConfig(simulations=300, token_budget=2000, k=8, k_max=16, rollouts=1, value_weight=0.5, max_nodes=2048,
                      skip_finished=True, seed=0)


def _critic_defaults() -> CriticConfig:
    """Critic training each iteration. A quarter of each batch comes from paths that succeed: with 2-3% of
    the labels positive, uniform batches leave the critics at the label mean (held-out AUC 0.54 for the
    value head, 0.76 for the PRM on the demo's iteration-3 data; 0.95 and 0.98 with balance 0.25)."""
    return CriticConfig(steps=30, batch_size=16, balance=0.25)


@dataclass
class WatchConfig:
    """The collapse watch, on held-out validation problems after each iteration."""

    samples: int = option(8, "traces sampled per validation problem to measure diversity and entropy")
    min_diversity: float = option(0.2, "warn when distinct traces / samples falls below this")
    max_drop: float = option(0.1, "warn when validation accuracy falls this far below the best so far")
    rollback: bool = option(True, "after a warning, start the next iteration from the best checkpoint")

    def __post_init__(self):
        check_positive(self, "samples")


@dataclass
class ImproveConfig:
    """The self-improvement loop: imagine -> search -> learn -> evaluate, repeated."""

    task: str = option("game24", "task to improve on")
    data: str | None = option(None, "your own problem file for the task")
    model: str | None = option(None, "starting policy (a model folder, .gguf or smollm2); None = bootstrap the tiny model")
    iterations: int = option(2, "iterations of imagine -> search -> learn -> evaluate")
    problems: int = option(200, "new training problems searched per iteration")
    validation: int = option(100, "held-out training-distribution problems for the collapse watch (with 100, one "
                                  "standard error of its greedy accuracy is at most 5 points)")
    search_batch: int = option(200, "problems searched together (larger batches keep the model's calls fuller)")
    free_text: bool = option(
        False, "the model writes every step whole; off: where the task can, the model writes the action and the task "
        "its observation, and every search scores all legal actions (Game of 24; with it, give the bootstrap --set bootstrap.steps=900 to learn the arithmetic too)")
    policy_update: PolicyUpdate = option(
        "expert", "how the policy learns: expert (the search's improved policy at every searched state, plus SFT on "
        "verified traces), sft (verified traces only), sft+dpo (then step-level DPO on sibling pairs), or none")
    lora_r: int = option(0, "train the policy through LoRA adapters of this rank (PEFT), merged after each phase; 0 = full fine-tuning")
    train_from: TrainFrom = option(
        "previous", "where each iteration's policy training starts: the previous policy, or the initial one "
        "(STaR's restart: all verified traces so far, learned afresh, instead of fine-tuning on fine-tuning)")
    sft_mix: float = option(0.25, "share of each SFT batch drawn from the task's synthetic traces (keeps the basics)")
    traces_per_problem: int = option(4, "most distinct verified traces per problem for SFT")
    sft_epochs: float = option(
        8.0, "most passes over the verified traces per iteration: SFT stops after this many, before sft.steps, "
        "so a few traces are not memorised (which sharpens the policy onto them and starves search)"
    )
    pair_margin: float = option(0.2, "least Q gap between a chosen and a rejected sibling step")
    critics: tuple[str, ...] | None = option(
        None, "critics to train: any of value, prm, orm (default: value and prm, and orm where the task has no "
        "verifier: with one, nothing reads an ORM)")
    guide: str = option("value@1,prm@1", "critics (and weights) that guide MCTS from iteration 2 on")
    prm_label: Literal["rollout", "q"] = option("rollout", "PRM step labels: rollout success share or MCTS Q")
    retrain_critics: bool = option(True, "train critics every iteration (False: only after iteration 1, as AlphaLLM)")
    replay: int = option(2, "iterations of trees that pairs and critic targets come from")
    eval_limit: int | None = option(None, "first N test problems (None = the whole split)")
    eval_n: int = option(16, "N of best-of-N at evaluation")
    eval_methods: tuple[str, ...] = option(("greedy", "best-of-n", "mcts"), "decoding methods evaluated each iteration")
    eval_batch: int = option(100, "problems evaluated together")
    device: str | None = option(None, "torch device (default: cuda if available)")
    report_to: ReportTo = option("none", REPORT_TO_HELP)
    seed: int = option(0, "seed of everything: added to the seed of every option group (bootstrap, sft, search, ...)")
    tiny: TinyConfig = nested(TinyConfig)
    bootstrap: SFTConfig = nested(_bootstrap_defaults)
    sft: SFTConfig = nested(_sft_defaults)
    dpo: DPOConfig = nested(DPOConfig)
    expert: ExpertConfig = nested(ExpertConfig)
    critic: CriticConfig = nested(_critic_defaults)
    search: MCTSConfig = nested(_search_defaults)
    eval_mcts: MCTSConfig = nested(_eval_mcts_defaults)
    watch: WatchConfig = nested(WatchConfig)

    def __post_init__(self):
        check_positive(self, "iterations", "problems", "search_batch", "eval_n", "eval_batch", "replay", "traces_per_problem")
        check_literals(self)
        if self.lora_r < 0:
            raise PonderError(f"--lora-r must be >= 0, got {self.lora_r}")
        if self.validation < 0:
            raise PonderError(f"--validation must be >= 0, got {self.validation}")
        check_positive(self, "sft_epochs")
        if not 0 <= self.sft_mix < 1:
            raise PonderError(f"--sft-mix must be in [0, 1), got {self.sft_mix}")
        bad = [c for c in self.critics or () if c not in CRITIC_KINDS]
        if bad:
            raise PonderError(f"--critics: unknown {', '.join(bad)}; choose from {', '.join(CRITIC_KINDS)}")
        bad = [m for m in self.eval_methods if m not in ("greedy", "best-of-n", "mcts", "self-consistency")]
        if bad:
            raise PonderError(f"--eval-methods: unknown {', '.join(bad)}; choose from greedy, best-of-n, self-consistency, mcts")
        for kind, _ in guide_terms(self.guide):
            if self.critics is not None and kind not in self.critics:
                raise PonderError(f"--guide uses the {kind} critic, which --critics does not train")


def seeded(cfg: ImproveConfig) -> ImproveConfig:
    """``cfg`` with its ``seed`` added to every option group's own seed, so that ``--seed`` varies
    everything (data order, initialisation, sampling, critic splits); seed 0 changes nothing."""
    if not cfg.seed:
        return cfg
    groups = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    return replace(cfg, **{name: replace(g, seed=g.seed + cfg.seed) for name, g in groups.items()
                           if is_dataclass(g) and isinstance(getattr(g, "seed", None), int)})


def guide_terms(spec: str) -> list[tuple[str, float]]:
    """``value@1,prm@0.5`` -> [("value", 1.0), ("prm", 0.5)]: learned critics the loop trains, with weights."""
    from .critics import parse_critic

    out = []
    for term in spec.split(","):
        kind, _, w = term.strip().partition("@")
        if kind not in CRITIC_KINDS:
            raise PonderError(f"--guide: {kind!r} is not a learned critic; choose from {', '.join(CRITIC_KINDS)}")
        [t] = parse_critic(f"{kind}:-" + (f"@{w}" if w else ""))  # checks the weight
        out.append((kind, t.weight))
    return out


# --- the run folder ---------------------------------------------------------------------------------


class Run:
    """A run folder: config, per-iteration phases and paths, metrics."""

    def __init__(self, root: Path, cfg: ImproveConfig):
        self.root, self.cfg = root, cfg

    def it(self, i: int) -> Path:
        return self.root / f"iter-{i}"

    def phases(self, i: int) -> dict[str, Any]:
        p = self.it(i) / "phases.json"
        if not p.exists():
            return {}
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            raise PonderError(f"{p}: damaged (not JSON); delete it to redo iteration {i}") from None

    def mark(self, i: int, phase: str, info: Any) -> None:
        done = self.phases(i)
        done[phase] = info
        write_text(self.it(i) / "phases.json", json.dumps(done, indent=2))

    def metrics(self) -> list[dict]:
        return read_rows(self.root / "metrics.jsonl")  # a line torn by a crash is dropped


def open_run(root: str | Path, cfg: ImproveConfig | None, resume: bool, iterations: int | None = None) -> Run:
    """Create a run folder, or reopen one to resume. Resuming with a different config is refused, except
    for ``iterations``: a finished run can be extended (its earlier iterations are kept as they are)."""
    import yaml

    root = Path(root)
    path = root / "config.yaml"
    if path.exists():
        try:
            saved = build(ImproveConfig, yaml.safe_load(path.read_text()) or {}, str(path))
        except yaml.YAMLError:
            raise PonderError(f"{path}: not a readable config") from None
        if not resume:
            raise PonderError(f"{root} already holds a run; continue it with --resume {root}, or choose another --out")
        if cfg is not None and to_dict(cfg) != to_dict(saved):
            diff = [k for k, v in to_dict(cfg).items() if to_dict(saved).get(k) != v]
            raise PonderError(f"{root} was run with another config (differs in: {', '.join(diff)}); resume it without options")
        if iterations is not None and iterations != saved.iterations:
            saved = replace(saved, iterations=int(iterations))  # validated by __post_init__
            write_text(path, yaml.safe_dump(to_dict(saved), sort_keys=False))
        return Run(root, saved)
    if resume:
        raise PonderError(f"nothing to resume: {path} not found")
    root.mkdir(parents=True, exist_ok=True)
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return Run(root, cfg)


# --- phases -------------------------------------------------------------------------------------------


def say(msg: str) -> None:
    if is_main_process():  # under a training launcher, one voice
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def held_out(task: Task, cfg: ImproveConfig) -> tuple[list[Problem], Callable[[int, set[str]], list[Problem]]]:
    """The validation problems and a function giving iteration i's training problems.

    Tasks that can imagine make new problems (never a test one); others draw from the train split.
    Either way validation problems and earlier iterations' problems are never handed out again; the
    function returns fewer than ``cfg.problems`` once no fresh problem is left (Game of 24 with
    numbers 1-13 has only 1,262 puzzles outside the test split), and ``Improver`` tops the rest up.
    """
    if type(task).imagine is not Task.imagine:
        val = task.imagine(cfg.validation, seed=cfg.seed * 7919 + 1) if cfg.validation else []

        def imagined(i: int, used: set[str]) -> list[Problem]:
            out: list[Problem] = []
            for attempt in range(20):  # fresh seeds until enough unused problems turn up
                seen = used | {p.question for p in out}
                out += [p for p in task.imagine(cfg.problems * 2, cfg.seed * 7919 + 100 + i + 1000 * attempt)
                        if p.question not in seen][: cfg.problems - len(out)]
                if len(out) == cfg.problems:
                    break
            return out

        return val, imagined
    pool = task.problems("train")
    random.Random(cfg.seed).shuffle(pool)
    val = pool[: cfg.validation]

    def from_split(i: int, used: set[str]) -> list[Problem]:
        return [p for p in pool[cfg.validation :] if p.question not in used][: cfg.problems]

    return val, from_split


def problem_rows(path: Path) -> list[Problem]:
    return [Problem.from_dict(r) for r in read_rows(path)]


class Improver:
    """Runs the phases of each iteration, skipping the ones a previous run already finished."""

    def __init__(self, run: Run, progress: bool = True, ray: str | None = None, workers: int | None = None,
                 launcher: str | None = None):
        self.run, self.cfg, self.progress = run, seeded(run.cfg), progress  # the folder keeps the config as given
        self.task = get_task(self.cfg.task, self.cfg.data, self.cfg.free_text)
        self.val, self.new_problems = held_out(self.task, self.cfg)
        self._policy_cache: tuple[str, Any] | None = None
        self.ray, self.workers = ray, workers
        self.pool = None  # Ray actors for search and evaluation, started on first use
        self.launcher = launcher  # e.g. "accelerate launch --multi_gpu --num_processes 8": trains the policy
        self.tracker = Tracker()  # logs nothing until run_all (or a launched trainer) opens --report-to's backend

    # --- models -----------------------------------------------------------------------------------
    def policy(self, spec: str):
        from .models import load_policy

        if self._policy_cache is None or self._policy_cache[0] != spec:
            self._policy_cache = (spec, load_policy(spec, device=self.cfg.device, seed=self.cfg.seed))
        return self._policy_cache[1]

    def local_policy(self, spec: str, what: str):
        """The policy as a local model: training needs its weights, which a server does not lend."""
        from .models.server import is_server_spec

        if is_server_spec(spec):
            raise PonderError(f"{what} needs a local model, and {spec.split('?')[0]} is a server: a server model serves "
                              "search and evaluation only; start from a model folder (--model DIR), or use ponder eval")
        return self.policy(spec)

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

    def search(self, policy: str, critic: str | None, method: str, config, problems, out: Path | None, batch: int,
               seed: int, settings: dict | None = None, save_trees: bool = False):
        """``run_eval`` with the policy and critic given by spec: loaded here, or by the Ray workers with ``--ray``."""
        from .critics import get_critic
        from .evaluate import run_eval

        if self.ray:
            from .distributed import RayPool, WorkerSpec

            spec = WorkerSpec(self.task.name, self.cfg.data, policy, self.cfg.device, "auto", critic, self.cfg.seed,
                              self.cfg.free_text)
            if self.pool is None:
                self.pool = RayPool(spec, self.ray, self.workers)
            self.pool.use(spec)
            pol = crit = None
        else:
            pol = self.policy(policy)
            crit = get_critic(critic, self.task, pol) if critic else None
        return run_eval(self.task, pol, method, config, problems, out, crit, batch, seed, settings, self.progress,
                        save_trees, self.pool)

    # --- iteration 0 --------------------------------------------------------------------------------
    def iteration0(self) -> None:
        run, cfg = self.run, self.cfg
        if "policy" not in run.phases(0):
            if cfg.model:
                run.mark(0, "policy", cfg.model)
            else:
                from .models.tiny import tiny_model
                from .train import train_sft

                out = run.it(0) / "policy"
                say(f"bootstrap: the tiny model from scratch on {cfg.bootstrap.steps} x {cfg.bootstrap.batch_size} random legal traces")
                model, tok = tiny_model(cfg.tiny, seed=cfg.seed, device=cfg.device)
                t0 = time.time()
                seed = cfg.bootstrap.seed
                train_sft(model, tok, lambda n, step: self.task.bootstrap_segments(n, seed * 1_000_003 + step),
                          cfg.bootstrap, out, progress=self.progress, tracker=self.tracker.under("bootstrap"))
                run.mark(0, "policy", str(out))
                run.mark(0, "bootstrap", {"seconds": round(time.time() - t0, 1)})
        self.evaluate_and_watch(0)

    # --- iterations ---------------------------------------------------------------------------------
    def iteration(self, i: int) -> None:
        run, cfg = self.run, self.cfg
        it = run.it(i)
        it.mkdir(parents=True, exist_ok=True)
        start = self.start_policy(i)
        if "imagine" not in run.phases(i):
            problems, again = self.imagine(i)
            write_jsonl(it / "problems.jsonl", [p.to_dict() for p in problems])
            run.mark(i, "imagine", {"problems": len(problems), "searched_again": again})
        problems = problem_rows(it / "problems.jsonl")

        if "search" not in run.phases(i):
            from .critics import critic_name

            guide = self.guide(i - 1)
            name = critic_name(guide, self.task) if guide else None
            scfg = cfg.search if guide is not None else replace(cfg.search, value_weight=0.0)
            say(f"iteration {i}: MCTS over {len(problems)} training problems "
                f"({'guided by ' + name if guide else 'rollouts only: no critics yet'})")
            t0 = time.time()
            s, _ = self.search(start, guide, "mcts", scfg, problems, it / "search.jsonl", cfg.search_batch, cfg.seed + i,
                               {"phase": "search", "iteration": i, "policy": start}, save_trees=True)
            run.mark(i, "search", {"solved": s.accuracy, "tokens_generated": s.tokens_generated,
                                   "seconds": round(time.time() - t0, 1), "guide": name})

        if "extract" not in run.phases(i):
            run.mark(i, "extract", self.extract(i))

        if "policy" not in run.phases(i):
            if self.launcher:
                self.launch_policy_training(i)
            else:
                run.mark(i, "policy", self.train_policy(i, start))

        if "critics" not in run.phases(i):
            run.mark(i, "critics", self.train_critics(i))
        self.evaluate_and_watch(i)

    def imagine(self, i: int) -> tuple[list[Problem], int]:
        """Iteration i's training problems and how many of them are earlier ones searched again.

        Fresh problems while any are left; then earlier iterations' problems again, those no search has
        solved yet first, least recently searched first: a long run goes on with what the policy still
        gets wrong instead of stopping."""
        used = {p.question for p in self.val}
        last: dict[str, tuple[int, Problem]] = {}  # question -> (last iteration that searched it, problem)
        solved: set[str] = set()
        for j in range(1, i):
            solved |= {r["question"] for r in read_rows(self.run.it(j) / "search.jsonl") if r.get("correct")}
            for p in problem_rows(self.run.it(j) / "problems.jsonl"):
                last[p.question] = (j, p)
        problems = self.new_problems(i, used | set(last))
        if len(problems) == self.cfg.problems:
            return problems, 0
        order = sorted(last, key=lambda q: (q in solved, last[q][0]))
        again = [last[q][1] for q in order][: self.cfg.problems - len(problems)]
        if not problems and not again:
            raise PonderError(f"{self.task.name}: no training problem left for iteration {i}")
        say(f"iteration {i}: {len(problems)} fresh problems left; {len(again)} earlier ones are searched again "
            f"(unsolved first)")
        return problems + again, len(again)

    def extract(self, i: int) -> dict:
        from .search.tree import Node
        from .train import data

        it = self.run.it(i)
        sft, pairs, targets = [], [], []
        crit: dict[str, list] = {k: [] for k in CRITIC_KINDS}
        labels = {"prm": data.prm_label(self.cfg.prm_label), "orm": data.orm_label}
        for j in range(1, i + 1):
            rows = read_rows(self.run.it(j) / "search.jsonl")
            recent = j > i - self.cfg.replay
            for r in rows:
                problem = Problem(r["problem_id"], r["question"], r.get("reference"), r.get("meta") or {})
                tree = Node.from_dict(r["tree"])
                sft += data.verified_traces(problem, tree, self.task, [r["steps"]], self.cfg.traces_per_problem)
                if recent:
                    pairs += data.step_pairs(problem, tree, self.cfg.pair_margin)
                    targets += data.policy_targets(problem, tree, self.task)
                    labels["value"] = data.value_label_with_proofs(problem, tree, self.task)
                    for k in CRITIC_KINDS:
                        crit[k] += data.critic_records(problem, tree, labels[k])
        # a problem searched again in a later iteration may find a trace found before: keep it once
        sft = list({(r["problem"]["question"], *r["steps"]): r for r in sft}.values())
        (it / "data").mkdir(exist_ok=True)
        write_jsonl(it / "data" / "sft.jsonl", sft)
        write_jsonl(it / "data" / "pairs.jsonl", pairs)
        write_jsonl(it / "data" / "policy_targets.jsonl", targets)
        for k, recs in crit.items():
            write_jsonl(it / "data" / f"{k}.jsonl", recs)
        counts = {"sft": len(sft), "pairs": len(pairs), "policy_targets": len(targets), **{k: len(v) for k, v in crit.items()}}
        say(f"iteration {i}: data {counts}")
        return counts

    def train_policy(self, i: int, start: str) -> str:
        """SFT on verified traces, then step-DPO against the fine-tuned model; returns the new policy's path."""
        from .models.hf import render_prompt
        from .train import save_checkpoint, train_sft
        from .train.dpo import train_dpo
        from .train.lora import lora_adapters

        cfg, it = self.cfg, self.run.it(i)
        if cfg.policy_update == "none":
            return start
        sft = read_rows(it / "data" / "sft.jsonl")
        pairs = read_rows(it / "data" / "pairs.jsonl") if cfg.policy_update == "sft+dpo" else []
        targets = read_rows(it / "data" / "policy_targets.jsonl") if cfg.policy_update == "expert" else []
        if not sft and not pairs and not targets:
            say(f"iteration {i}: no verified trace and no step pair; the policy stays {start}")
            return start
        info: dict[str, Any] = {"processes": int(os.environ.get("WORLD_SIZE", "1"))}
        base = start if cfg.train_from == "previous" else self.policy_path(0)
        info["from"] = base
        policy = self.local_policy(base, "policy training")
        self._policy_cache = None  # the model is trained in place below
        texts = [self.task.segments(render_prompt(policy.tokenizer, self.task, Problem.from_dict(r["problem"])), r["steps"])
                 for r in sft]
        if targets:
            return self.train_expert_policy(i, policy, targets, texts, info)
        if sft:
            with lora_adapters(policy, cfg.lora_r):
                mix = cfg.sft_mix if self._has_bootstrap() else 0.0

                def batch(n: int, step: int) -> list[str]:
                    rng = random.Random(cfg.sft.seed * 1_000_003 + step + 7 * i)
                    k = round(n * mix)
                    extra = self.task.bootstrap_segments(k, rng.randrange(1 << 30)) if k else []
                    return [rng.choice(texts) for _ in range(n - k)] + extra

                per_step = max(1, cfg.sft.batch_size - round(cfg.sft.batch_size * mix))  # traces per step
                steps = max(1, min(cfg.sft.steps, math.ceil(cfg.sft_epochs * len(texts) / per_step)))
                sft_cfg = replace(cfg.sft, steps=steps, warmup=min(cfg.sft.warmup, max(1, steps // 5)))
                say(f"iteration {i}: SFT on {len(texts)} verified traces ({steps} steps)")
                t0 = time.time()
                try:
                    losses = train_sft(policy.model, policy.tokenizer, batch, sft_cfg, it / "policy-sft", progress=self.progress,
                                       tracker=self.tracker.under(f"sft/iter-{i}"))
                except PonderError as e:  # a NaN loss: this iteration's policy stays the one it started from
                    say(f"iteration {i}: {e}; the policy stays {start}")
                    if is_main_process():
                        write_text(it / "policy-train.json", json.dumps({"sft": {"error": str(e)}}, indent=2))
                    return start
                finally:
                    if is_main_process():
                        shutil.rmtree(it / "policy-sft", ignore_errors=True)  # scratch: the policy is saved below
                info["sft"] = {"traces": len(texts), "steps": steps, "loss_first": losses[0], "loss_last": losses[-1],
                               "seconds": round(time.time() - t0, 1)}
        if pairs:
            # the model DPO starts from is its reference: kept so that `ponder credit` and the implicit-reward
            # critic can read r = beta * log(pi / pi_ref) later (the model training started from when there was no SFT)
            info["reference"] = base
            if sft:
                if is_main_process():
                    save_checkpoint(policy.model, policy.tokenizer, it / "reference")
                info["reference"] = str(it / "reference")
            with lora_adapters(policy, cfg.lora_r):
                say(f"iteration {i}: step-level DPO on {len(pairs)} sibling pairs")
                t0 = time.time()
                before = {k: v.detach().clone() for k, v in policy.model.state_dict().items()}
                try:
                    info["dpo"] = {**train_dpo(policy, self.task, pairs, cfg.dpo, it / "dpo.losses.jsonl", self.progress,
                                               self.tracker.under(f"dpo/iter-{i}")),
                                   "seconds": round(time.time() - t0, 1)}
                except PonderError as e:  # a NaN: back to the weights before DPO, say so, go on
                    say(f"iteration {i}: {e}; the policy stays as before DPO")
                    policy.model.load_state_dict(before)
                    info["dpo"] = {"error": str(e)}
        if is_main_process():
            save_checkpoint(policy.model, policy.tokenizer, it / "policy")
            write_text(it / "policy-train.json", json.dumps(info, indent=2))
        return str(it / "policy")

    def train_expert_policy(self, i: int, policy, targets: list[dict], texts: list, info: dict) -> str:
        """Expert iteration: the improved policy at every searched state, plus SFT on the verified traces."""
        from .train import save_checkpoint
        from .train.expert import train_expert
        from .train.lora import lora_adapters

        cfg, it = self.cfg, self.run.it(i)
        say(f"iteration {i}: expert iteration on {len(targets)} searched states and {len(texts)} verified traces")
        with lora_adapters(policy, cfg.lora_r):
            try:
                info["expert"] = train_expert(policy, self.task, targets, texts, replace(cfg.expert, seed=cfg.expert.seed + i),
                                              it / "expert.losses.jsonl", self.progress, self.tracker.under(f"expert/iter-{i}"))
            except PonderError as e:  # a NaN loss: this iteration's policy stays the one it started from
                say(f"iteration {i}: {e}; the policy stays {info['from']}")
                write_text(it / "policy-train.json", json.dumps({"expert": {"error": str(e)}}, indent=2))
                return info["from"]
        save_checkpoint(policy.model, policy.tokenizer, it / "policy")
        write_text(it / "policy-train.json", json.dumps(info, indent=2))
        return str(it / "policy")

    def launch_policy_training(self, i: int) -> None:
        """Run iteration i's policy training as ``LAUNCHER -m ponder.cli train-policy RUN --iteration i``
        (data-parallel under accelerate); its rank 0 saves the policy and marks the phase done."""
        import shlex
        import subprocess
        import sys

        cmd = [*shlex.split(self.launcher), "-m", "ponder.cli", "train-policy", str(self.run.root), "--iteration", str(i)]
        if not self.progress:
            cmd.append("--quiet")
        say(f"iteration {i}: policy training through: {' '.join(cmd)}")
        self._policy_cache = None  # the launched processes write a new policy
        try:
            code = subprocess.run(cmd, stdin=subprocess.DEVNULL).returncode
        except FileNotFoundError:
            raise PonderError(f"--train-launcher: {cmd[0]!r} not found (e.g. 'accelerate launch --num_processes 2' "
                              f"with accelerate installed next to {sys.executable})") from None
        if code != 0:
            raise PonderError(f"--train-launcher: policy training exited with code {code}: {' '.join(cmd)}")
        if "policy" not in self.run.phases(i):
            raise PonderError(f"--train-launcher: {' '.join(cmd)} finished without saving iteration {i}'s policy")

    def train_critics(self, i: int) -> dict:
        from .critics.scalar import ScalarCritic
        from .train.critic import train_critic

        cfg, it = self.cfg, self.run.it(i)
        if not cfg.retrain_critics and i > 1:
            return {"frozen": True}
        out: dict[str, Any] = {}
        for kind in self.critic_kinds():
            records = read_rows(it / "data" / f"{kind}.jsonl")
            if not records:
                out[kind] = {"skipped": "no labels"}
                continue
            prev = self.critic_dir(i - 1, kind)
            critic = (ScalarCritic.load(prev, self.task, device=self.cfg.device) if prev is not None
                      else ScalarCritic.from_policy(self.local_policy(self.policy_path(i), "critic training"), self.task, kind,
                                                    seed=cfg.seed))
            say(f"iteration {i}: train the {kind} critic on {len(records)} paths" + (f" (from {prev})" if prev else ""))
            t0 = time.time()
            try:
                metrics = train_critic(critic, records, replace(cfg.critic, seed=cfg.critic.seed + i),
                                       it / "critics.losses.jsonl", self.progress, self.tracker.under(f"{kind}_critic/iter-{i}"))
            except PonderError as e:
                say(f"iteration {i}: {e}; the {kind} critic stays as it was")
                out[kind] = {"error": str(e)}
                continue
            critic.save(it / "critics" / kind)
            out[kind] = {**metrics, "seconds": round(time.time() - t0, 1)}
        return out

    def critic_kinds(self) -> tuple[str, ...]:
        """The critics trained each iteration: ``--critics``, else value and PRM, and the ORM where the task
        has no verifier (with one, best-of-N ranks by the verifier and nothing reads an ORM)."""
        if self.cfg.critics is not None:
            return tuple(self.cfg.critics)
        return CRITIC_KINDS if not self.task.checkable else ("value", "prm")

    def _has_bootstrap(self) -> bool:
        return self.task.can_bootstrap

    # --- evaluation and the collapse watch ----------------------------------------------------------
    def eval_setup(self, method: str, i: int):
        """(config, critic spec) of an evaluation method at iteration i; (None, None) to skip it."""
        from .search import get_method

        cfg = self.cfg
        if method == "greedy":
            return get_method("greedy").config(), None
        if method == "self-consistency":
            return get_method("self-consistency").config(n=cfg.eval_n), None
        if method == "best-of-n":
            if self.task.checkable:
                return get_method("best-of-n").config(n=cfg.eval_n), "verifier"
            orm = self.critic_dir(i, "orm")
            if orm is None:
                return None, None  # nothing honest to rank by yet
            return get_method("best-of-n").config(n=cfg.eval_n), f"orm:{orm}"
        guide = self.guide(i)
        mcfg = cfg.eval_mcts
        if not self.task.checkable:  # no reading the gold answer at test time: critics only
            if guide is None:
                return None, None
            mcfg = replace(mcfg, rollouts=0, value_weight=1.0, prefer_verified=False)
        elif guide is None:
            mcfg = replace(mcfg, value_weight=0.0)
        return mcfg, guide

    def evaluate_and_watch(self, i: int) -> None:
        from .critics import critic_name

        run, cfg = self.run, self.cfg
        it = run.it(i)
        if "eval" not in run.phases(i):
            test = self.task.problems("test")[: cfg.eval_limit]
            results = {}
            for method in cfg.eval_methods:
                mcfg, critic = self.eval_setup(method, i)
                if mcfg is None:
                    continue
                say(f"iteration {i}: evaluate {method} on {len(test)} test problems")
                name = critic_name(critic, self.task) if critic else None
                settings = {"phase": "eval", "iteration": i, "policy": self.policy_path(i), "critic": name}
                s, _ = self.search(self.policy_path(i), critic, method, mcfg, test, it / f"eval-{method}.jsonl",
                                   cfg.eval_batch, cfg.seed, settings)
                results[method] = {"accuracy": s.accuracy, "tokens_generated": s.tokens_generated,
                                   "tokens_read": s.tokens_read, "seconds": round(s.seconds, 1), "problems": s.problems,
                                   "critic": name}
            run.mark(i, "eval", results)
        if "watch" not in run.phases(i):
            run.mark(i, "watch", self.watch(i))
        self.record(i)

    def watch(self, i: int) -> dict:
        """Validation accuracy (greedy), sample diversity and per-token entropy of the policy.

        diversity = distinct traces / samples, averaged over problems; entropy = the mean of
        -log pi(token) over sampled tokens at temperature 1, a Monte-Carlo estimate of the policy's
        per-token entropy. A policy collapsing onto a few traces shows both falling.
        """
        from .evaluate import run_eval
        from .models import SamplingParams
        from .search import SearchEnv, get_method

        cfg = self.cfg
        if not self.val:
            return {}
        policy = self.policy(self.policy_path(i))
        g, _ = run_eval(self.task, policy, "greedy", get_method("greedy").config(), self.val, None,
                        batch=cfg.eval_batch, seed=cfg.seed, progress=False)
        env = SearchEnv(policy, self.task)
        if hasattr(policy, "seed"):
            policy.seed(cfg.seed)
        params = SamplingParams(1.0, 1.0, self.task.max_step_tokens * self.task.max_steps, stop=())
        distinct, nll, tokens = [], 0.0, 0
        for k in range(0, len(self.val), cfg.eval_batch):
            chunk = self.val[k : k + cfg.eval_batch]
            out = policy.sample([env.prompt(p) for p in chunk], cfg.watch.samples, params)
            for samples in out.steps:
                distinct.append(len({s.text for s in samples}) / len(samples))
                nll -= sum(s.logprob for s in samples)
                tokens += sum(s.num_tokens for s in samples)
        diversity = sum(distinct) / len(distinct)
        entropy = nll / max(1, tokens)
        prev = [m["watch"]["val_accuracy"] for m in self.run.metrics() if m.get("watch") and m["iteration"] < i]
        best = max(prev, default=None)
        warnings = []
        if diversity < cfg.watch.min_diversity:
            warnings.append(f"sample diversity {diversity:.2f} < {cfg.watch.min_diversity}")
        if best is not None and g.accuracy < best - cfg.watch.max_drop:
            warnings.append(f"validation accuracy {g.accuracy:.2f} fell more than {cfg.watch.max_drop} below the best {best:.2f}")
        out = {"val_accuracy": g.accuracy, "diversity": round(diversity, 4), "entropy": round(entropy, 4),
               **self.step_watch(env), "warnings": warnings}
        for w in warnings:
            say(f"collapse watch, iteration {i}: {w}")
        if warnings and cfg.watch.rollback and prev:
            best_i = max((m for m in self.run.metrics() if m.get("watch") and m["iteration"] < i),
                         key=lambda m: m["watch"]["val_accuracy"])["iteration"]
            out["next_policy"] = self.policy_path(best_i)
            say(f"collapse watch: iteration {i + 1} starts from iteration {best_i}'s policy")
        return out

    def step_watch(self, env) -> dict:
        """The collapse watch at the step level, where the task lists actions: at each validation problem's
        first step, the entropy of the policy over the legal actions (nats) and the distinct actions among
        ``watch.samples`` drawn from it with replacement. A policy narrowing onto few moves shows both
        falling, even while whole traces stay diverse."""
        from .search import State
        from .search.env import softmax

        if not env.lists_actions:
            return {}
        rng = random.Random(self.cfg.seed)
        ent, distinct = [], []
        for legal, lps, _ in env.priors([State(p) for p in self.val]):
            if legal:
                probs = softmax(lps)
                ent.append(-sum(x * math.log(x) for x in probs if x > 0))
                distinct.append(len(set(rng.choices(range(len(legal)), probs, k=self.cfg.watch.samples))))
        for pr in self.val:
            env.take_compute(pr)
        return {"step_entropy": round(sum(ent) / max(1, len(ent)), 4),
                "step_distinct": round(sum(distinct) / max(1, len(distinct)), 3)}

    def record(self, i: int) -> None:
        """Append iteration i's metrics line (once) and rewrite the report; the tracker gets the line and the
        report's plots at step i, once too (a resumed run does not log a recorded iteration again)."""
        from .report.run_report import write_report

        new = not any(m["iteration"] == i for m in self.run.metrics())
        if new:
            ph = self.run.phases(i)
            line = {"iteration": i, "policy": ph.get("policy"), "eval": ph.get("eval", {}), "watch": ph.get("watch", {}),
                    "search": ph.get("search"), "data": ph.get("extract"), "critics": ph.get("critics")}
            train = self.run.it(i) / "policy-train.json"
            if train.exists():
                line["policy_train"] = json.loads(train.read_text())
            with (self.run.root / "metrics.jsonl").open("a") as fh:
                fh.write(json.dumps(line) + "\n")
            self.tracker.log({k: v for k, v in line.items() if k != "iteration"}, i)
        write_report(self.run.root, self.run.metrics(), self.cfg)
        if new:
            for png in sorted(self.run.root.glob("*.png")):
                self.tracker.log_image(f"report/{png.stem}", png, i)

    def run_all(self) -> None:
        self.tracker = get_tracker(self.cfg.report_to, self.run.root)
        try:
            self.iteration0()
            for i in range(1, self.cfg.iterations + 1):
                self.iteration(i)
        finally:
            self.tracker.close()
            if self.pool is not None:
                table = self.pool.report()
                say(f"Ray: {len(self.pool.stats)} workers over the whole run (busy seconds summed per worker)\n{table}")
                write_text(self.run.root / "ray-workers.md", table + "\n")
                self.pool.close()


def improve(
    out: str | Path, cfg: ImproveConfig | None = None, resume: bool = False, progress: bool = True,
    iterations: int | None = None, ray: str | None = None, workers: int | None = None, launcher: str | None = None,
) -> Path:
    """Run (or resume) the loop in ``out``; returns the report's path. ``iterations`` with ``resume``
    changes the run's number of iterations (e.g. to continue a finished run). ``ray`` (``auto`` or a
    cluster address) runs search and evaluation on ``workers`` Ray actors; training stays here. It is
    not part of the run's config: a run may resume with or without it. ``launcher`` (e.g. ``accelerate
    launch --multi_gpu --num_processes 8``) trains the policy in that many data-parallel processes."""
    if workers is not None and not ray:
        raise PonderError("--workers needs --ray")
    from .io import check_out_dir
    from .lock import hold

    root = Path(out)
    if cfg is not None:
        require(cfg.report_to)  # a missing tensorboard is said before the run folder is made
    if resume and not (root / "config.yaml").exists():
        raise PonderError(f"nothing to resume: {root / 'config.yaml'} not found")
    check_out_dir(root, "the run folder")  # created (new run) and writable, before any model is loaded
    with hold(root / LOCK, f"the run folder {root}"):  # one process per run folder (its launched trainers excepted)
        run = open_run(root, cfg, resume, iterations)
        Improver(run, progress, ray, workers, launcher).run_all()
    return run.root / "report.md"


LOCK = "ponder.lock"  # the lock file inside a run folder, held by the process running it


def train_policy_phase(root: str | Path, i: int, progress: bool = True) -> None:
    """Iteration i's policy training alone, in every process of a launcher (``ponder train-policy``);
    rank 0 saves the policy and marks the phase done."""
    from .train.parallel import use_local_gpu

    use_local_gpu()
    run = open_run(root, None, resume=True)
    if "extract" not in run.phases(i):
        raise PonderError(f"{run.it(i)}: no extracted training data yet (phase 'extract' not done)")
    imp = Improver(run, progress and is_main_process())
    if is_main_process():  # the launched processes' loss curves too, from rank 0
        imp.tracker = get_tracker(run.cfg.report_to, run.root)
    try:
        path = imp.train_policy(i, imp.start_policy(i))
    finally:
        imp.tracker.close()
    if is_main_process():
        run.mark(i, "policy", path)
