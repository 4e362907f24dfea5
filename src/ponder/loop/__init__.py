"""``ponder improve``: the self-improvement loop (AlphaLLM), with critics that learn alongside the policy.

Each iteration i = 1..N:

1. **imagine**: new training problems (never a test problem, never a validation one);
2. **search**: MCTS over them with the current policy, guided by the critics of iteration i-1
   (iteration 1 has none yet and values leaves by verifier-scored rollouts alone); or, with
   ``--search-method best-of-n``, N whole traces sampled per problem and no tree search (STaR);
3. **extract**: verified traces (SFT), sibling step pairs (DPO), per-step targets (value, PRM, ORM)
   from the trees of the last ``replay`` iterations (verified traces from every iteration so far);
4. **train**: the policy by rejection-sampling fine-tuning, then step-level DPO against the
   fine-tuned model; the critics (unlike AlphaLLM's, which stay frozen) by further training on the
   new trees (``retrain_critics=False`` freezes them after iteration 1, as in the paper);
   with ``--rollout-model distill``, also the fast rollout model that the next iteration's MCTS
   rolls out with (a smaller tiny model, SFT on the same verified traces);
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

Each phase is a function of the run's state (``Improver``) and the iteration, in a module of its own:
``imagine``, ``search``, ``extract``, ``learn`` (policy and critics), ``evaluate`` and ``watch``; the
options are in ``config``, the run folder in ``run``. This module runs them in order (``run_all``,
``iteration0``, ``iteration``) and records each finished iteration (``record``).
"""

import json
import time
from pathlib import Path

from ..errors import PonderError
from ..io import write_text
from ..tracking import get_tracker, require
from . import evaluate, extract, imagine, learn, search, watch
from .config import CRITIC_KINDS, ImproveConfig, PolicyUpdate, SearchMethod, TrainFrom, WatchConfig, guide_terms, seeded
from .imagine import held_out
from .improver import Improver
from .learn import train_policy_phase
from .run import LOCK, Run, open_run, problem_rows, say, soak_pause

__all__ = [
    "CRITIC_KINDS", "LOCK", "ImproveConfig", "Improver", "PolicyUpdate", "Run", "SearchMethod", "TrainFrom",
    "WatchConfig", "bootstrap", "evaluate_and_watch", "guide_terms", "held_out", "improve", "iteration", "iteration0",
    "open_run", "problem_rows", "record", "run_all", "say", "seeded", "train_policy_phase",
]


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
    from ..io import check_out_dir
    from ..lock import hold

    root = Path(out)
    if cfg is not None:
        require(cfg.report_to)  # a missing tensorboard is said before the run folder is made
        from ..tasks import get_task

        get_task(cfg.task, cfg.data, cfg.free_text, **cfg.task_options)  # and so is a bad task, file or task option
    if resume and not (root / "config.yaml").exists():
        raise PonderError(f"nothing to resume: {root / 'config.yaml'} not found")
    check_out_dir(root, "the run folder")  # created (new run) and writable, before any model is loaded
    with hold(root / LOCK, f"the run folder {root}"):  # one process per run folder (its launched trainers excepted)
        run = open_run(root, cfg, resume, iterations)
        run_all(Improver(run, progress, ray, workers, launcher))
    return run.root / "report.md"


def run_all(imp: Improver) -> None:
    """Runs the phases of each iteration, skipping the ones a previous run already finished."""
    imp.tracker = get_tracker(imp.cfg.report_to, imp.run.root, config=imp.cfg)  # its hyper-parameters once per run
    try:
        iteration0(imp)
        for i in range(1, imp.cfg.iterations + 1):
            iteration(imp, i)
    finally:
        imp.tracker.close()
        if imp.pool is not None:
            table = imp.pool.report()
            say(f"Ray: {len(imp.pool.stats)} workers over the whole run (busy seconds summed per worker)\n{table}")
            write_text(imp.run.root / "ray-workers.md", table + "\n")
            imp.pool.close()


def iteration0(imp: Improver) -> None:
    """The starting policy (``--model``, or the tiny model bootstrapped on random legal traces), evaluated."""
    run, cfg = imp.run, imp.cfg
    if "policy" not in run.phases(0):
        if cfg.model:
            run.mark(0, "policy", cfg.model)
        else:
            bootstrap(imp)
    if cfg.rollout_model == "distill" and "rollout" not in run.phases(0):
        run.mark(0, "rollout", learn.bootstrap_rollout(imp))
    evaluate_and_watch(imp, 0)


def bootstrap(imp: Improver) -> str:
    """The tiny model trained from scratch on the task's random legal traces (``tiny``, ``bootstrap`` options),
    saved in ``iter-0/policy`` and marked as iteration 0's policy (with its seconds); returns its path. A
    policy already marked is kept (a resumed run, or ``bench/improve_vs_grpo.py``'s shared bootstrap)."""
    from ..models.tiny import tiny_model
    from ..train import train_sft

    run, cfg = imp.run, imp.cfg
    if "policy" in run.phases(0):
        return run.phases(0)["policy"]
    out = run.it(0) / "policy"
    say(f"bootstrap: the tiny model from scratch on {cfg.bootstrap.steps} x {cfg.bootstrap.batch_size} random legal traces")
    model, tok = tiny_model(cfg.tiny, seed=cfg.seed, device=cfg.device)
    t0 = time.time()
    seed = cfg.bootstrap.seed
    train_sft(model, tok, lambda n, step: imp.task.bootstrap_segments(n, seed * 1_000_003 + step),
              cfg.bootstrap, out, progress=imp.progress, tracker=imp.tracker.under("bootstrap"))
    run.mark(0, "policy", str(out))
    run.mark(0, "bootstrap", {"seconds": round(time.time() - t0, 1)})
    return str(out)


def iteration(imp: Improver, i: int) -> None:
    """Iteration i's phases in order, each recorded in ``iter-I/phases.json`` when it finishes."""
    run = imp.run
    run.it(i).mkdir(parents=True, exist_ok=True)
    start = imp.start_policy(i)
    if "imagine" not in run.phases(i):
        run.mark(i, "imagine", imagine.imagine(imp, i))
    if "search" not in run.phases(i):
        run.mark(i, "search", search.search(imp, i, start))
    if "extract" not in run.phases(i):
        run.mark(i, "extract", extract.extract(imp, i))
    if "policy" not in run.phases(i):
        if imp.launcher:
            learn.launch_policy_training(imp, i)  # its rank 0 marks the phase
        else:
            run.mark(i, "policy", learn.train_policy(imp, i, start))
    if "critics" not in run.phases(i):
        run.mark(i, "critics", learn.train_critics(imp, i))
    if imp.cfg.rollout_model == "distill" and "rollout" not in run.phases(i):
        run.mark(i, "rollout", learn.train_rollout(imp, i))
    evaluate_and_watch(imp, i)


def evaluate_and_watch(imp: Improver, i: int) -> None:
    """The test-split evaluation and the collapse watch of iteration i's policy, then its metrics line."""
    run = imp.run
    if "eval" not in run.phases(i):
        run.mark(i, "eval", evaluate.evaluate(imp, i))
    if "watch" not in run.phases(i):
        run.mark(i, "watch", watch.watch(imp, i))
    record(imp, i)


def record(imp: Improver, i: int) -> None:
    """Append iteration i's metrics line (once) and rewrite the report; the tracker gets the line and the
    report's plots at step i, once too (a resumed run does not log a recorded iteration again). A resume
    rewrites the report once, at the last recorded iteration (a crash may have come before it was written),
    not once per finished iteration."""
    from ..report.run_report import write_report

    recorded = [m["iteration"] for m in imp.run.metrics()]
    new = i not in recorded
    if not new and i != max(recorded):
        return
    if new:
        ph = imp.run.phases(i)
        line = {"iteration": i, "policy": ph.get("policy"), "eval": ph.get("eval", {}), "watch": ph.get("watch", {}),
                "search": ph.get("search"), "data": ph.get("extract"), "critics": ph.get("critics")}
        if "rollout" in ph:  # --rollout-model distill: the rollout model this iteration's policy searches with
            line["rollout"] = ph["rollout"]
        train = imp.run.it(i) / "policy-train.json"
        if train.exists():
            line["policy_train"] = json.loads(train.read_text())
        with (imp.run.root / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        imp.tracker.log({k: v for k, v in line.items() if k != "iteration"}, i)
        soak_pause()
    write_report(imp.run.root, imp.run.metrics(), imp.cfg)
    if new:
        for png in sorted(imp.run.root.glob("*.png")):
            imp.tracker.log_image(f"report/{png.stem}", png, i)
