"""Game of 24 after bootstrap: step legality, greedy and best-of-N (verifier) solve rates on the 100
test puzzles at N = 1, 4, 16, 64, each with the tokens it spent. Prints a markdown table.

    python bench/game24.py --model runs/demo/model [--ns 1,4,16,64] [--seed 0]
"""

from __future__ import annotations

import argparse
import platform
from datetime import date
from pathlib import Path

import torch

from ponder.critics import Verifier
from ponder.evaluate import run_eval
from ponder.models import load_policy
from ponder.search.best_of_n import BestOfNConfig
from ponder.search.sampling import GreedyConfig
from ponder.tasks import get_task
from ponder.search import Node


def legality(task, rows) -> tuple[int, int]:
    """(legal, total) sampled steps, from the saved trees: a node's visits count the samples through it,
    and a trace ends at its first illegal step, so every counted step had a legal prefix. A step is legal
    when it is the one the task writes for its action (an illegal action keeps the model's text)."""
    legal = total = 0
    problems = {p.id: p for p in task.problems("test")}
    for r in rows:
        root = Node.from_dict(r["tree"])
        for node in root:
            if node.parent is not None:
                total += node.visits
                prefix = node.parent.steps()
                legal += node.visits * (task.observe(problems[r["problem_id"]], prefix, task.action_of(node.step)) == node.step)
    return legal, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--ns", default="1,4,16,64")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--out", default="bench/out/game24")
    args = ap.parse_args()
    torch.set_num_threads(2)
    task = get_task("game24")
    problems = task.problems("test")
    policy = load_policy(args.model, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    summary, _ = run_eval(task, policy, "greedy", GreedyConfig(), problems, out / "greedy.jsonl", batch=args.batch, seed=args.seed, progress=False)
    rows.append(("greedy", summary))
    legal_counts = None
    for n in map(int, args.ns.split(",")):
        s, r = run_eval(task, policy, "best-of-n", BestOfNConfig(n=n), problems, out / f"bon{n}.jsonl", Verifier(task), args.batch, args.seed,
                        progress=False, save_trees=True)
        rows.append((f"best-of-{n} (verifier)", s))
        legal_counts = (n, r)
    print(f"# Game of 24 test (100 puzzles), model {args.model}, seed {args.seed}, {platform.machine()}, {torch.get_num_threads()} threads, {date.today()}")
    print("| method | solved | tokens generated / puzzle | tokens read / puzzle | seconds |")
    print("|---|---|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {100 * s.accuracy:.0f}% | {s.tokens_generated:,.0f} | {s.tokens_read:,.0f} | {s.seconds:.1f} |")
    if legal_counts:
        n, r = legal_counts
        legal, total = legality(task, r)
        print(f"\nlegal steps among the best-of-{n} samples: {legal}/{total} = {100 * legal / max(1, total):.1f}%")


if __name__ == "__main__":
    main()
