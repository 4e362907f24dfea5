"""The ladder of a Game-of-24 run, one row per iteration: which rung holds the search back.

    python bench/ladder.py runs/demo [--limit 100] [--seed 0] [--free-text-too]

For each iteration's policy (and its value critic), on the 100 test puzzles:

- **legal**: share of legal steps among 32 sampled at each puzzle's root, the model writing the whole
  step (free text) and, with observations, writing only the action (the task writes the rest);
  with listed actions every step is legal by construction (100%).
- **distinct**: distinct legal moves among those 32 samples, and among k = 4 proposals of the one
  expansion path (Gumbel-top-k over the exact priors of every legal action).
- **coverage**: share of roots whose k = 4 proposals hold a move that keeps 24 reachable.
- **exact ceiling**: beam search (width 1 and 3, k = 16 proposals) guided by the exact solvability
  check: what a perfect critic could reach with these proposals.
- **value critic** on every legal state one action from a test puzzle: AUC against exact solvability,
  and beam search over ALL legal actions guided by it at width 1 and 5 (a random score and the exact
  check as the floor and the ceiling).
- **greedy step by depth**: on solvable states at each depth (the roots; solvable states one and two
  legal actions in, up to 300 of each), the share where the policy's most likely legal action keeps 24
  reachable: which step a greedy trace gets wrong.
- **search yield** (share of the iteration's training problems its search solved) and the test table
  (greedy, MCTS) come from the run folder.

The brute-force solver is used here for analysis only; nothing it says reaches training.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
from datetime import date
from pathlib import Path

import torch

from ponder.critics.scalar import ScalarCritic
from ponder.io import read_rows
from ponder.models import SamplingParams, load_policy
from ponder.search import SearchEnv, State, get_method
from ponder.search.beam import BeamConfig
from ponder.tasks import get_task
from ponder.tasks.game24 import apply_step, replay
from ponder.tracking import HELP as TRACK_HELP, get_tracker
from ponder.train.critic import auc


class Exact:
    """Exact solvability of a state (brute force): analysis only."""

    name = "exact"

    def __init__(self, task):
        self.task = task

    def score(self, problems, steps):
        return [float(self.task.can_reach(p, s)) for p, s in zip(problems, steps)]


class Random:
    name = "random"

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def score(self, problems, steps):
        return [self.rng.random() for _ in problems]


def solve_rate(task, policy, critic, problems, width: int, k: int, free_text: bool = False) -> float:
    t = get_task("game24", free_text=free_text)
    env = SearchEnv(policy, t, critic)
    env.seed(0)
    cfg = BeamConfig(beam_width=width, k=k, temperature=1.0, max_nodes=4096, prefer_verified=False)
    res = get_method("beam").run(problems, env, cfg)
    return sum(task.reward(r.problem, r.steps) for r in res) / len(res)


def root_samples(task, policy, problems, observe: bool) -> tuple[float, float]:
    """(legal share, distinct legal moves) of 32 samples at each root."""
    t = get_task("game24", free_text=not observe)
    env = SearchEnv(policy, t)
    env.seed(0)
    stop = t.action_stop if observe else t.step_stop
    out = policy.sample([env.prefix(State(p)) for p in problems], 32,
                        SamplingParams(1.0, 1.0, t.max_step_tokens, stop))
    legal = total = distinct = 0
    for p, steps in zip(problems, out.steps):
        moves = set()
        for s in steps:
            text = env._observed(State(p), s.text) if observe else s.text
            after = apply_step(replay(t.numbers(p), []), text)
            total += 1
            if after is not None:
                legal += 1
                moves.add(text)
        distinct += len(moves)
    return legal / total, distinct / len(problems)


def greedy_by_depth(task, policy, problems, seed: int, most: int = 300) -> list[float]:
    """Per depth, the share of solvable states whose most likely legal action keeps 24 reachable."""
    rng = random.Random(seed)
    env = SearchEnv(policy, task)
    level = [State(p) for p in problems]
    out = []
    for _ in range(3):
        level = [s for s in level if task.can_reach(s.problem, list(s.steps))]
        rng.shuffle(level)
        level = level[:most]
        right = 0
        for s, (acts, lps, _) in zip(level, env.priors(level)):
            best = max(range(len(acts)), key=lps.__getitem__)
            right += task.can_reach(s.problem, [*s.steps, task.observe(s.problem, list(s.steps), acts[best])])
        out.append(right / max(1, len(level)))
        level = [State(s.problem, (*s.steps, task.observe(s.problem, list(s.steps), a)))
                 for s in level for a in task.legal_actions(s.problem, list(s.steps))]
    return out


def ladder_row(run: Path, i: int, task, problems, seed: int) -> dict:
    phases = json.loads((run / f"iter-{i}" / "phases.json").read_text())
    policy = load_policy(phases["policy"], device="cpu")
    row: dict = {"iteration": i}
    row["legal_free"], row["distinct_free"] = root_samples(task, policy, problems, observe=False)
    row["legal_observed"], row["distinct_observed"] = root_samples(task, policy, problems, observe=True)
    env = SearchEnv(policy, task)
    env.seed(seed)
    props = env.expand([State(p) for p in problems], 4)
    row["distinct_k4"] = sum(len({x.text for x in ps}) for ps in props) / len(problems)
    row["coverage_k4"] = sum(any(task.can_reach(p, [x.text]) for x in ps) for p, ps in zip(problems, props)) / len(problems)
    exact = Exact(task)
    row["greedy_d0"], row["greedy_d1"], row["greedy_d2"] = greedy_by_depth(task, policy, problems, seed)
    row["ceiling_w1"] = solve_rate(task, policy, exact, problems, 1, 16)
    row["ceiling_w3"] = solve_rate(task, policy, exact, problems, 3, 16)
    value_dir = next((run / f"iter-{j}" / "critics" / "value" for j in range(i, 0, -1)
                      if (run / f"iter-{j}" / "critics" / "value" / "critic.json").exists()), None)
    if value_dir is not None:
        critic = ScalarCritic.load(value_dir, task, device="cpu")
        states = [(p, [task.observe(p, [], a)]) for p in problems for a in task.legal_actions(p, [])]
        scores = critic.score([p for p, _ in states], [s for _, s in states])
        row["value_auc_one_step"] = auc(torch.tensor(scores), torch.tensor([task.can_reach(p, s) for p, s in states]))
        for w in (1, 5):
            row[f"value_beam_w{w}"] = solve_rate(task, policy, critic, problems, w, 64)
    for name, method in (("search_yield", "search.jsonl"),):
        f = run / f"iter-{i}" / method
        rows = read_rows(f) if f.exists() else []
        row[name] = sum(r.get("correct", False) for r in rows) / len(rows) if rows else None
    for m, e in phases.get("eval", {}).items():
        row[f"test_{m}"] = e["accuracy"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--floors", action="store_true", help="also the random and exact critics over all legal actions")
    ap.add_argument("--report-to", default="none", help="also log each row, as ladder/RUNG at step = iteration, to the "
                    "run's own tracker: " + TRACK_HELP)
    args = ap.parse_args()
    tracker = get_tracker(args.report_to, args.run)
    task = get_task("game24")
    problems = task.problems("test")[: args.limit]
    iters = sorted(int(p.name.split("-")[1]) for p in args.run.glob("iter-*") if (p / "phases.json").exists())
    rows = []
    with (args.run / "ladder.jsonl").open("w") as fh:  # row by row: a long ladder keeps what it measured
        for i in iters:
            if "policy" in json.loads((args.run / f"iter-{i}" / "phases.json").read_text()):
                rows.append(ladder_row(args.run, i, task, problems, args.seed))
                fh.write(json.dumps(rows[-1]) + "\n")
                fh.flush()
                print(json.dumps(rows[-1]), flush=True)
                tracker.log({k: v for k, v in rows[-1].items() if k != "iteration"}, i, prefix="ladder")
    tracker.close()
    if args.floors:
        policy = load_policy(json.loads((args.run / "iter-0" / "phases.json").read_text())["policy"], device="cpu")
        for name, critic in (("random", Random(args.seed)), ("exact", Exact(task))):
            print(f"beam over all legal actions guided by {name}: "
                  f"w1 {solve_rate(task, policy, critic, problems, 1, 64):.2f}, w5 {solve_rate(task, policy, critic, problems, 5, 64):.2f}")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    print(f"ladder of {args.run} on {len(problems)} test puzzles, seed {args.seed}, {platform.machine()} "
          f"{platform.system()}, {date.today()}; command: {' '.join(sys.argv)}")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join("-" if r.get(c) is None else f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c])
                                for c in cols) + " |")


if __name__ == "__main__":
    main()
