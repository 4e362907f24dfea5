"""Do the loop's critics rank states at all, and does drawing more successful paths per batch help?

Trains each critic kind afresh on one ``ponder improve`` iteration's extracted labels (``data/KIND.jsonl``,
backbone = that iteration's policy) once per ``critic.balance`` value, with everything else the loop's
defaults, and reports held-out loss against the label-mean baseline and held-out AUC (the chance that a
state labelled above 0.5 scores above one labelled below: what search needs from a critic).

    python bench/critic_balance.py --iteration runs/demo-v3/iter-3 --balance 0,0.25,0.5 --out bench/out/critic_balance.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from ponder.critics.scalar import ScalarCritic
from ponder.io import read_rows
from ponder.loop import ImproveConfig
from ponder.models import load_policy
from ponder.tasks import get_task
from ponder.train.critic import train_critic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iteration", required=True, help="an iteration folder of ponder improve (with data/ and phases.json)")
    ap.add_argument("--task", default="game24")
    ap.add_argument("--kinds", default="value,prm")
    ap.add_argument("--balance", default="0,0.25,0.5", help="comma-separated critic.balance values")
    ap.add_argument("--steps", type=int, default=None, help="critic steps (default: the loop's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/out/critic_balance.jsonl")
    ap.add_argument("--save", help="also save each critic as SAVE/KIND-bBALANCE (for ponder eval --critic)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    it = Path(args.iteration)
    policy_path = json.loads((it / "phases.json").read_text())["policy"]
    task = get_task(args.task)
    base = ImproveConfig().critic
    if args.steps:
        base = replace(base, steps=args.steps)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["kind"], r["balance"]) for r in read_rows(out)} if out.exists() else set()
    policy = load_policy(policy_path, device="cpu")
    print("| critic | balance | paths | labels > 0.5 | train loss | held-out loss | baseline | held-out AUC | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        records = read_rows(it / "data" / f"{kind}.jsonl")
        pos = sum(1 for r in records for y in r["labels"] if y is not None and y > 0.5)
        for b in (float(x) for x in args.balance.split(",")):
            if (kind, b) in done:
                continue
            critic = ScalarCritic.from_policy(policy, task, kind, seed=args.seed)
            t0 = time.time()
            m = train_critic(critic, records, replace(base, balance=b, seed=args.seed), progress=False)
            if args.save:
                critic.save(Path(args.save) / f"{kind}-b{b:g}")
            row = {"kind": kind, "balance": b, "iteration": str(it), "steps": base.steps, "seed": args.seed,
                   "positives": pos, **m, "seconds": round(time.time() - t0, 1)}
            with out.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            auc = row.get("holdout_auc")
            print(f"| {kind} | {b:g} | {m['paths']} | {pos} | {m['train_loss']:.4f} | {m.get('holdout_loss', float('nan')):.4f} "
                  f"| {m.get('holdout_baseline_loss', float('nan')):.4f} | {'-' if auc is None else f'{auc:.3f}'} "
                  f"| {row['seconds']} |", flush=True)


if __name__ == "__main__":
    main()
