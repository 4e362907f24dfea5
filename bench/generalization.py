"""Does ``ponder improve`` teach the policy to play, or to recite the puzzles its search solved?

For each chosen iteration of a Game-of-24 run, greedy decoding (one trace per puzzle, the cheapest
read of what the policy has learned) on four disjoint groups of puzzles:

- **solved**: training puzzles the run's search solved (up to that iteration): their traces were
  trained on, so these measure recall;
- **unsolved**: training puzzles the search tried and never solved (no trace of theirs was trained on);
- **unseen**: non-test puzzles the run never imagined (its validation puzzles among them): held out by construction, from the training distribution;
- **test**: the 100 test puzzles (ranks 901-1000, the hardest of the usual split).

Every puzzle's group is fixed by the run as a whole (all its searched iterations), so a group is the
same set for every iteration compared. One JSON line per (iteration, group) goes to ``--out``. ``--difficulty``
prints instead how likely a uniformly random legal trace is to solve each group of puzzles; ``--sft``
evaluates instead one SFT from iteration 0 on a data file, per share of random traces mixed in.

    python bench/generalization.py --run runs/demo-v3 --iterations 0,2,4,6,8 --out bench/out/generalization.jsonl
    python bench/generalization.py --run runs/demo-v3 --difficulty
    python bench/generalization.py --run runs/demo-v3 --sft runs/demo-v3/iter-8/data/sft.jsonl --mix 0,0.25,0.5
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import time
from fractions import Fraction
from pathlib import Path

import torch

from ponder.evaluate import run_eval
from ponder.io import read_rows
from ponder.models import load_policy
from ponder.search import get_method
from ponder.tasks import get_task
from ponder.tasks.game24 import OPS, apply, puzzle_key


def groups(run: Path, task, limit: int, seed: int) -> dict[str, list]:
    key = lambda q: puzzle_key(int(x) for x in q.split())  # noqa: E731
    tried, solved = set(), set()
    for it in sorted(run.glob("iter-*")):
        if not (it / "search.jsonl").is_file():
            continue
        tried |= {key(r["question"]) for r in read_rows(it / "problems.jsonl")}
        solved |= {key(r["question"]) for r in read_rows(it / "search.jsonl") if r.get("correct")}
    every = task.problems("train") + task.problems("test")
    out: dict[str, list] = {"solved": [], "unsolved": [], "unseen": [], "test": task.problems("test")}
    for p in every:
        k = key(p.question)
        if k in task.test_keys:
            continue
        out["solved" if k in solved else "unsolved" if k in tried else "unseen"].append(p)
    rng = random.Random(seed)
    return {g: rng.sample(ps, min(limit, len(ps))) if g != "test" else ps for g, ps in out.items()}


def path_share(nums) -> float:
    """Share of all legal move sequences with whole results in [0, 100] (the moves of the bootstrap's
    random traces) that reach 24: how often a random player's path solves the puzzle."""

    def walk(ns: list[Fraction]) -> tuple[int, int]:
        if len(ns) == 1:
            return int(ns[0] == 24), 1
        hits = total = 0
        for i, j in itertools.permutations(range(len(ns)), 2):
            for op in OPS:
                r = apply(ns[i], op, ns[j])
                if r is not None and r.denominator == 1 and 0 <= r <= 100:
                    h, t = walk([x for k, x in enumerate(ns) if k not in (i, j)] + [r])
                    hits, total = hits + h, total + t
        return hits, total

    hits, total = walk([Fraction(x) for x in nums])
    return hits / total


def difficulty(task) -> None:
    train = task.problems("train")
    for name, ps in [("train ranks 1-100", train[:100]), ("train ranks 1-900", train), ("test (ranks 901-1000)", task.problems("test")),
                     ("300 imagined puzzles", task.imagine(300, seed=0))]:
        share = statistics.mean(path_share(p.meta["numbers"]) for p in ps)
        print(f"{name}: {share:.4f} of all legal move sequences reach 24 (mean over {len(ps)} puzzles)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a ponder improve run folder on game24")
    ap.add_argument("--iterations", default="0", help="comma-separated iterations whose policy to evaluate")
    ap.add_argument("--limit", type=int, default=200, help="puzzles per group at most (a seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/out/generalization.jsonl")
    ap.add_argument("--difficulty", action="store_true", help="only print how hard each puzzle group is for a random player")
    ap.add_argument("--sft", help="instead: SFT the iteration-0 policy once on this sft.jsonl (e.g. the last iteration's data)")
    ap.add_argument("--mix", default="0,0.25,0.5", help="with --sft: comma-separated shares of random legal traces per batch")
    ap.add_argument("--sft-steps", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    run, task = Path(args.run), get_task("game24")
    if args.difficulty:
        return difficulty(task)
    sets = groups(run, task, args.limit, args.seed)
    policy_of = lambda i: json.loads((run / f"iter-{i}" / "phases.json").read_text()).get("policy") or str(run / f"iter-{i}" / "policy")  # noqa: E731
    if args.sft:  # one SFT from the run's iteration-0 policy on a data file, per mix
        for mix in [float(x) for x in args.mix.split(",")]:
            policy = load_policy(policy_of(0), device="cpu")
            sft_once(task, policy, args.sft, mix, args.sft_steps, args.seed)
            report(task, policy, sets, {"run": str(run), "sft": args.sft, "mix": mix, "steps": args.sft_steps}, args.out)
        return
    for i in [int(x) for x in args.iterations.split(",")]:
        report(task, load_policy(policy_of(i), device="cpu"), sets, {"run": str(run), "iteration": i}, args.out)


def sft_once(task, policy, data: str, mix: float, steps: int, seed: int) -> None:
    """SFT in place on every verified trace of ``data`` (an iteration's data/sft.jsonl), ``mix`` of each
    batch random legal traces, the loop's SFT settings otherwise."""
    import tempfile

    from ponder.models.hf import render_prompt
    from ponder.tasks.base import Problem
    from ponder.train import train_sft
    from ponder.train.sft import SFTConfig

    texts = [render_prompt(policy.tokenizer, task, Problem.from_dict(r["problem"])) + "".join(r["steps"]) for r in read_rows(data)]

    def batch(n: int, step: int) -> list[str]:
        rng = random.Random(seed * 1_000_003 + step)
        k = round(n * mix)
        return [rng.choice(texts) for _ in range(n - k)] + (task.bootstrap_texts(k, rng.randrange(1 << 30)) if k else [])

    with tempfile.TemporaryDirectory() as tmp:
        train_sft(policy.model, policy.tokenizer, batch, SFTConfig(steps=steps, batch_size=32, lr=5e-4, warmup=10, seed=seed),
                  Path(tmp) / "policy", progress=False)


def report(task, policy, sets: dict[str, list], tag: dict, out: str) -> None:
    for g, problems in sets.items():
        t0 = time.time()
        s, _ = run_eval(task, policy, "greedy", get_method("greedy").config(), problems, None, batch=100, progress=False)
        row = {**tag, "group": g, "problems": s.problems, "greedy": round(s.accuracy, 4), "seconds": round(time.time() - t0, 1)}
        print(json.dumps(row), flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")

if __name__ == "__main__":
    main()
