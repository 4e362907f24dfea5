"""Analysis: what can the policy learn to play from PERFECT per-state targets? The ceiling of expert
iteration under a representation, before any search is involved.

    python bench/learnability.py POLICY --puzzles 600 --steps 300 [--score action|step]

The targets are exact (the brute-force solver marks which legal actions keep 24 reachable), so this
script is analysis only: the model it trains is thrown away and nothing it computes reaches the loop.
Puzzles are drawn like the loop's imagined ones (never a test puzzle, never one of the validation
puzzles it is measured on). At each solvable state at depths 0, 1 and 2 of each puzzle (up to
``--per-depth`` states a puzzle at depths 1 and 2), the target is the completed-Q improved policy with
Q = 1 at a solvable child and 0 elsewhere, every legal action visited once: the same transform and
loss (``train_expert``) the loop uses.

``--score``: what the policy's prior of an action reads.
- ``action`` (the loop today): the log-prob of the action the model writes (``4 + 8 =``); the model
  must work out what it leads to.
- ``step``: the log-prob of the whole step with the task's observation (``4 + 8 = 12 (left: 1 6 12)``),
  so the prior can judge the numbers left, which the task computed.

``--learn value`` trains a value head instead (from the policy's backbone, exact labels at every legal
first step and below a few solvable ones; ``--labels FILE`` trains it on a run's own critic records
instead, ``--search FILE`` on the states of a run's search labelled as the loop labels them, with
``--pool-proofs`` sharing proofs between trees by position, with ``--exact-labels`` labelled by the
solver instead) and measures its AUC against exact solvability on every legal state one action from
the validation puzzles, as ``bench/ladder.py`` does on the test ones.

Prints one JSON line: greedy by depth and the greedy solve rate on the validation puzzles before and
after training, and on 100 of the training puzzles (fit).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from ponder.io import read_rows
from ponder.models import load_policy
from ponder.tasks import Problem
from ponder.tasks.game24 import Game24, format_step, replay
from ponder.train.expert import ExpertConfig, train_expert

sys.path.insert(0, str(Path(__file__).parent))
from expert_probe import greedy_solve  # noqa: E402
from ladder import greedy_by_depth  # noqa: E402


class CopiedLeft(Game24):
    """Game of 24 as it was written before the numbers left were sorted: the untouched numbers in their
    order, then the result (as the model writes them in free text)."""

    def step_text(self, a, op, b, left):
        return format_step(a, op, b, left)


def wide_puzzles(task: Game24, n: int, max_number: int, rng: random.Random) -> list[Problem]:
    """``n`` distinct puzzles of four numbers 1..``max_number`` that are not test puzzles (``Game24.imagine``
    with a wider range: more root states than the 1,262 non-test puzzles of 1..13)."""
    from ponder.tasks.game24 import puzzle_key

    seen, out = set(), []
    while len(out) < n:
        nums = puzzle_key(rng.randint(1, max_number) for _ in range(4))
        if nums not in task.test_keys and nums not in seen:
            seen.add(nums)
            out.append(task._problem(nums, f"game24-wide-{'-'.join(map(str, nums))}"))
    return out


def exact_records(task: Game24, problems: list[Problem], per_depth: int, rng: random.Random) -> list[dict]:
    """Policy-target records (``data.policy_targets``' shape) at solvable states, Q = exact solvability."""
    out = []
    for p in problems:
        level: list[list[str]] = [[]]
        for depth in range(3):
            level = [s for s in level if task.can_reach(p, s)]
            if depth:
                rng.shuffle(level)
                level = level[:per_depth]
            nxt = []
            for s in level:
                acts = task.legal_actions(p, s)
                kids = [task.observe(p, s, a) for a in acts]
                out.append({"problem": p.to_dict(), "prefix": list(s), "actions": acts, "visits": [1] * len(acts),
                            "q": [float(task.can_reach(p, [*s, k])) for k in kids], "value": 1.0})
                nxt += [[*s, k] for k in kids]
            level = nxt
    return out


def value_records(task: Game24, problems: list[Problem], per_depth: int, rng: random.Random) -> list[dict]:
    """Critic records (``data.critic_records``' shape): one path per legal first step, labelled with its
    exact solvability, and through up to ``per_depth`` solvable first steps a second step likewise."""
    out = []
    for p in problems:
        firsts = [task.observe(p, [], a) for a in task.legal_actions(p, [])]
        for f in firsts:
            out.append({"problem": p.to_dict(), "steps": [f], "labels": [float(task.can_reach(p, [f]))]})
        good = [f for f in firsts if task.can_reach(p, [f])]
        for f in rng.sample(good, min(per_depth, len(good))):
            for a in task.legal_actions(p, [f]):
                s = task.observe(p, [f], a)
                out.append({"problem": p.to_dict(), "steps": [f, s], "labels": [None, float(task.can_reach(p, [f, s]))]})
    return out


def search_records(path: Path, task: Game24, pool: bool, exact: bool = False) -> list[dict]:
    """The value records the loop extracts from a run's ``search.jsonl`` (proven value, else Q); with
    ``pool``, a position proven in any of its trees labels the same numbers left, unproven, in every
    other (a transposition table; proofs come from the verifier only, so none conflict); with ``exact``,
    the same states labelled by exact solvability instead."""
    from ponder.search.tree import Node
    from ponder.train import data

    searched = [(Problem(r["problem_id"], r["question"], r.get("reference"), r.get("meta") or {}), Node.from_dict(r["tree"]))
                for r in read_rows(path)]

    def key(p, n):
        left = replay(task.numbers(p), n.steps())
        return None if left is None else tuple(sorted(left))

    proofs = [data.proven_values(p, tree, task) for p, tree in searched]
    table = {key(p, n): v for (p, _), proven in zip(searched, proofs) for n, v in proven.items()} if pool else {}
    table.pop(None, None)
    out = []
    for (p, tree), proven in zip(searched, proofs):
        def label(n, p=p, proven=proven):
            if exact:  # the same states, labelled by the solver: label noise removed, coverage kept
                return float(task.can_reach(p, n.steps())) if n.visits > 0 or n.terminal else None
            if n in proven:
                return proven[n]
            return table.get(key(p, n), data.value_label(n))

        out += data.critic_records(p, tree, label)
    return out


def value_probe(args, task: Game24, train: list[Problem], val: list[Problem]) -> dict:
    """Train a value head from the policy's backbone on exact labels; AUC against exact solvability on
    every legal state one action from the validation puzzles, as the ladder measures it on the test ones."""
    import torch

    from ponder.critics.scalar import ScalarCritic
    from ponder.train.critic import CriticConfig, auc, train_critic

    if args.labels:  # the loop's own labels (an iteration's data/value.jsonl) instead of exact ones
        records = read_rows(args.labels)
    elif args.search:
        records = search_records(args.search, task, args.pool_proofs, args.exact_labels)
    else:
        records = value_records(task, train, args.per_depth, random.Random(args.seed))
    critic = ScalarCritic.from_policy(load_policy(args.policy, device="cpu"), task, "value", seed=args.seed)
    states = [(p, [task.observe(p, [], a)]) for p in val for a in task.legal_actions(p, [])]
    truth = torch.tensor([task.can_reach(p, s) for p, s in states])

    def measure() -> float:
        return auc(torch.tensor(critic.score([p for p, _ in states], [s for _, s in states])), truth)

    before, t0 = measure(), time.time()
    info = train_critic(critic, records, CriticConfig(steps=args.steps, batch_size=args.batch, lr=args.lr,
                                                     balance=args.balance, seed=args.seed), progress=False)
    return {"records": len(records), "train": info, "seconds": round(time.time() - t0, 1),
            "auc_before": before, "auc_after": measure(), "states": len(states), "positive": int(truth.sum())}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("policy", help="the policy to train (a model folder, e.g. runs/demo/iter-0/policy)")
    ap.add_argument("--puzzles", type=int, default=600)
    ap.add_argument("--per-depth", type=int, default=4, help="most solvable states a puzzle at depths 1 and 2")
    ap.add_argument("--score", choices=["action", "step"], default="action")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--epochs", type=float, default=10.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--c-scale", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--learn", choices=["policy", "value"], default="policy",
                    help="what learns from the exact targets: the policy (greedy by depth) or a value head (AUC)")
    ap.add_argument("--balance", type=float, default=0.25, help="value: share of each batch from solvable paths")
    ap.add_argument("--labels", type=Path, default=None,
                    help="value: train on these critic records (a run's iter-I/data/value.jsonl) instead of exact labels")
    ap.add_argument("--search", type=Path, default=None,
                    help="value: label the states of this search.jsonl as the loop does (proven value, else Q)")
    ap.add_argument("--pool-proofs", action="store_true",
                    help="with --search: a position proven in one tree labels the same numbers left in every other")
    ap.add_argument("--exact-labels", action="store_true",
                    help="with --search: label those same states by exact solvability (what coverage alone allows)")
    ap.add_argument("--max-number", type=int, default=13,
                    help="draw the training puzzles' four numbers from 1..N (13: the game's own range; larger gives "
                         "more root states, never a test or validation puzzle)")
    ap.add_argument("--copied-left", action="store_true",
                    help="observations list the numbers left unsorted, as before (the task now sorts them)")
    args = ap.parse_args(argv)
    task = Game24(listed="step") if args.score == "step" else CopiedLeft() if args.copied_left else Game24()
    val = task.imagine(100, seed=args.seed * 7919 + 1)  # the loop's validation puzzles (loop.imagine.held_out)
    held = {p.question for p in val}
    pool = (task.imagine(args.puzzles + 200, seed=args.seed * 7919 + 2) if args.max_number == 13
            else wide_puzzles(task, args.puzzles + 200, args.max_number, random.Random(args.seed * 7919 + 2)))
    pool = [p for p in pool if p.question not in held]
    train = [p for p in pool if task.can_reach(p, [])][: args.puzzles]
    if args.learn == "value":
        print(json.dumps({"args": vars(args), "puzzles": len(train), **value_probe(args, task, train, val)}, default=str))
        return
    records = exact_records(task, train, args.per_depth, random.Random(args.seed))
    policy = load_policy(args.policy, device="cpu")
    before = greedy_by_depth(task, policy, val, 0), greedy_solve(task, policy, val)
    cfg = ExpertConfig(steps=args.steps, epochs=args.epochs, lr=args.lr, sft_batch=0, batch_size=args.batch,
                       c_scale=args.c_scale, seed=args.seed)
    t0 = time.time()
    info = train_expert(policy, task, records, [], cfg, progress=False)
    after = greedy_by_depth(task, policy, val, 0), greedy_solve(task, policy, val)
    fit = greedy_by_depth(task, policy, train[:100], 0), greedy_solve(task, policy, train[:100])
    print(json.dumps({"args": vars(args), "puzzles": len(train), "records": len(records), "train": info,
                      "seconds": round(time.time() - t0, 1),
                      "before": {"d": [round(x, 3) for x in before[0]], "greedy": before[1]},
                      "after": {"d": [round(x, 3) for x in after[0]], "greedy": after[1]},
                      "fit": {"d": [round(x, 3) for x in fit[0]], "greedy": fit[1]}}))


if __name__ == "__main__":
    sys.exit(main())
