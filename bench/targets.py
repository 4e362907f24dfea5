"""Analysis only: how right are the expert-iteration targets, by depth? (The solver judges; nothing here
trains anything.)

For each searched state of an iteration (``data/policy_targets.jsonl``) that is still solvable, is the
argmax of the improved-policy target a move that keeps 24 reachable, and how much of the target's mass
sits on such moves, against the same for the prior of the policy that searched?

    python bench/targets.py RUN ITER [--q mean|proven|max] [--no-rescale] [--c-scale 0.1]

``--q`` says which value of a child the target reads: its mean backed-up Q (what the loop uses), its
proven value where the verifier settled it (else Q), or the best value met below it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

from ponder.io import read_rows
from ponder.models import load_policy
from ponder.tasks import Problem, get_task
from ponder.search.tree import Node
from ponder.train import data
from ponder.train.expert import ExpertConfig, searched_states


def max_values(tree: Node) -> dict:
    """Each node's best value below it: a terminal's reward, else the max of its own evaluation (Q at one
    visit: its rollout) and its children's max values."""
    out = {}

    def visit(n):
        kids = [visit(c) for c in n.children]
        if n.terminal and n.reward is not None:
            v = float(n.reward)
        else:
            own = n.scores.get("rollout", n.q if n.visits else 0.0)
            v = max([own, *kids]) if kids else (n.q if n.visits else 0.0)
        out[n] = v
        return v

    visit(tree)
    return out


def targets_of(problem, tree, task, mode):
    if mode == "mean":
        return data.policy_targets(problem, tree, task)
    proven = data.proven_values(problem, tree, task)
    mx = max_values(tree) if mode == "max" else {}
    val = (lambda n: proven.get(n, n.q)) if mode == "proven" else (lambda n: proven.get(n, mx[n]))
    return data.policy_targets(problem, tree, task, value=val)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("iteration", type=int)
    ap.add_argument("--c-scale", type=float, default=0.1)
    ap.add_argument("--most", type=int, default=3000)
    ap.add_argument("--no-rescale", dest="rescale", action="store_false", help="the completed Q-values unscaled")
    ap.add_argument("--q", choices=["mean", "proven", "max"], default="mean")
    args = ap.parse_args(argv)
    task = get_task("game24")
    it = args.run / f"iter-{args.iteration}"
    prev = args.run / f"iter-{args.iteration - 1}"
    policy = load_policy(json.loads((prev / "phases.json").read_text())["policy"], device="cpu")
    records = []
    for row in read_rows(it / "search.jsonl"):
        problem = Problem(row["problem_id"], row["question"], row.get("reference"), row.get("meta") or {})
        records += targets_of(problem, Node.from_dict(row["tree"]), task, args.q)
    records = records[: args.most]
    states = searched_states(policy, task, records, ExpertConfig(c_scale=args.c_scale, rescale=args.rescale))
    stats = defaultdict(lambda: defaultdict(float))
    for r, s in zip(records, states):
        problem = Problem.from_dict(r["problem"])
        prefix = r["prefix"]
        d = len(prefix)
        if not task.can_reach(problem, prefix):
            stats[d]["dead"] += 1
            continue
        good = torch.tensor([float(task.can_reach(problem, [*prefix, task.observe(problem, prefix, a)])) for a in s.actions])
        prior = torch.softmax(torch.tensor(policy.score([policy.render(task, problem) + "".join(prefix)], [s.actions]).logprobs[0]), -1)
        st = stats[d]
        st["n"] += 1
        st["target_top_right"] += float(good[s.target.argmax()])
        st["prior_top_right"] += float(good[prior.argmax()])
        st["target_mass_right"] += float((s.target * good).sum())
        st["prior_mass_right"] += float((prior * good).sum())
        st["share_right"] += float(good.mean())
        st["tried_right"] += float(any(good[s.actions.index(a)] for a in r["actions"]))
    print("depth | solvable states (dead) | target argmax right | prior argmax right | target mass right | prior mass right | right moves share | a right move tried")
    for d in sorted(stats):
        st = stats[d]
        n = max(st["n"], 1)
        print(f"{d} | {int(st['n'])} ({int(st['dead'])}) | {st['target_top_right'] / n:.0%} | {st['prior_top_right'] / n:.0%} | "
              f"{st['target_mass_right'] / n:.0%} | {st['prior_mass_right'] / n:.0%} | {st['share_right'] / n:.0%} | {st['tried_right'] / n:.0%}")


if __name__ == "__main__":
    sys.exit(main())
