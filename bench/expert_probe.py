"""Analysis: retrain iteration i's policy offline from its search trees with a target variant, then
measure greedy by depth and greedy solve rate on held-out training-distribution puzzles (the run's
validation puzzles; the solver only judges).

    python bench/expert_probe.py RUN ITER [--q mean] [--no-rescale] --steps 60 [--epochs 3]

Prints one JSON line: greedy by depth and the greedy solve rate on the validation puzzles before and
after, and greedy by depth on 100 of the iteration's own training puzzles (``fit``: learned or not).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ponder.io import read_rows
from ponder.models import load_policy
from ponder.models.hf import render_prompt
from ponder.search.env import SearchEnv, State
from ponder.search.tree import Node
from ponder.tasks import Problem, get_task
from ponder.train.expert import ExpertConfig, train_expert

sys.path.insert(0, str(Path(__file__).parent))
from ladder import greedy_by_depth  # noqa: E402
from targets import targets_of  # noqa: E402


def greedy_solve(task, policy, problems) -> float:
    env = SearchEnv(policy, task)
    level = [State(p) for p in problems]
    for _ in range(3):
        nxt = []
        for s, (acts, lps, _) in zip(level, env.priors(level)):
            best = max(range(len(acts)), key=lps.__getitem__)
            nxt.append(State(s.problem, (*s.steps, task.observe(s.problem, list(s.steps), acts[best]))))
        level = nxt
    return sum(task.reward(s.problem, s.steps) for s in level) / len(level)


def run_seed(run: Path) -> int:
    import yaml

    return int((yaml.safe_load((run / "config.yaml").read_text()) or {}).get("seed", 0))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("iteration", type=int)
    ap.add_argument("--q", choices=["mean", "proven", "max"], default="mean")
    ap.add_argument("--no-rescale", dest="rescale", action="store_false", help="the completed Q-values unscaled")
    ap.add_argument("--c-scale", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--sft-weight", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--eval", type=Path, default=None, help="problems.jsonl to evaluate on (default: the run's validation)")
    args = ap.parse_args(argv)
    task = get_task("game24")
    it, prev = args.run / f"iter-{args.iteration}", args.run / f"iter-{args.iteration - 1}"
    policy = load_policy(json.loads((prev / "phases.json").read_text())["policy"], device="cpu")
    records = []
    for row in read_rows(it / "search.jsonl"):
        problem = Problem(row["problem_id"], row["question"], row.get("reference"), row.get("meta") or {})
        records += targets_of(problem, Node.from_dict(row["tree"]), task, args.q)
    sft = read_rows(it / "data" / "sft.jsonl")
    texts = [task.segments(render_prompt(policy.tokenizer, task, Problem.from_dict(r["problem"])), r["steps"]) for r in sft]
    val = [Problem.from_dict(r) for r in read_rows(args.eval)] if args.eval else task.imagine(100, seed=run_seed(args.run) * 7919 + 1)  # as loop.imagine.held_out
    train = [Problem.from_dict(r) for r in read_rows(it / "problems.jsonl")][:100]
    before = greedy_by_depth(task, policy, val, 0), greedy_solve(task, policy, val)
    fit0 = greedy_by_depth(task, policy, train, 0)
    cfg = ExpertConfig(steps=args.steps, epochs=args.epochs, lr=args.lr, sft_weight=args.sft_weight, batch_size=args.batch,
                       c_scale=args.c_scale, rescale=args.rescale)
    t0 = time.time()
    info = train_expert(policy, task, records, texts, cfg, progress=False)
    after = greedy_by_depth(task, policy, val, 0), greedy_solve(task, policy, val)
    fit1 = greedy_by_depth(task, policy, train, 0)
    print(json.dumps({"variant": vars(args) | {"run": str(args.run), "eval": str(args.eval)}, "records": len(records),
                      "train": info, "seconds": round(time.time() - t0, 1),
                      "before": {"d": [round(x, 3) for x in before[0]], "greedy": before[1]},
                      "after": {"d": [round(x, 3) for x in after[0]], "greedy": after[1]},
                      "fit": [[round(x, 3) for x in fit0], [round(x, 3) for x in fit1]]}))


if __name__ == "__main__":
    sys.exit(main())
