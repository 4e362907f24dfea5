"""Credit localization on failed traces: how often does each critic blame the first bad step?

    python bench/credit_localization.py --iteration runs/demo/iter-2 [--samples 4] [--limit 100]

Samples ``--samples`` whole traces per test problem from the iteration's policy (temperature 1), keeps
the failed ones whose first bad step the task can tell (``Task.first_bad_step``), and scores the
implicit reward of the policy against its step-DPO reference, the iteration's value head and PRM (as
the change each step makes, and as the value after it), against a random step and "always the first
step" (``ponder.critics.localize``). Prints a markdown table; writes the cases to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
import yaml

from ponder.critics.implicit import ImplicitReward
from ponder.critics.localize import failed_with_first_bad, implicit_rater, localize, value_rater
from ponder.critics.scalar import ScalarCritic
from ponder.models.hf import HFPolicy
from ponder.search import SearchEnv, State
from ponder.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iteration", required=True, help="an iteration folder of ponder improve that ran step-DPO")
    ap.add_argument("--policy", help="another DPO policy to read against the iteration's reference (default: ITER/policy)")
    ap.add_argument("--samples", type=int, default=4, help="traces sampled per test problem")
    ap.add_argument("--limit", type=int, default=100, help="test problems (the first LIMIT)")
    ap.add_argument("--sample-from", choices=["policy", "reference"], default="policy",
                    help="the model the failed traces come from: the DPO policy (its own samples are biased towards "
                         "positive implicit reward: E_pi[log pi/pi_ref] = KL >= 0) or its reference (biased negative)")
    ap.add_argument("--min-steps", type=int, default=2, help="shortest failed trace kept (one step: nothing to localize)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="JSON file for the cases and the table (default: bench/out/credit-TASK.json)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    it = Path(args.iteration)
    run_cfg = yaml.safe_load((it.parent / "config.yaml").read_text())
    task = get_task(run_cfg["task"], run_cfg.get("data"))
    reward = ImplicitReward.from_iteration(it, task)
    if args.policy:
        reward.policy = ImplicitReward.load(args.policy, it / "policy", task).policy
    sampler = reward.policy if args.sample_from == "policy" else reward.reference
    policy = HFPolicy(sampler, reward.tokenizer, name=args.sample_from, seed=args.seed)
    problems = task.problems("test")[: args.limit]

    t0 = time.time()
    env = SearchEnv(policy, task)
    traces = env.rollout([State(p) for p in problems], args.samples)
    flat_p = [p for p, ts in zip(problems, traces) for _ in ts]
    flat_t = [t for ts in traces for t in ts]
    solved = sum(task.reward(p, t) for p, t in zip(flat_p, flat_t))
    cases = failed_with_first_bad(task, flat_p, flat_t, args.min_steps)
    failed = sum(1 for p, t in zip(flat_p, flat_t) if task.reward(p, t) == 0)

    raters = {f"implicit reward (beta {reward.beta:g})": implicit_rater(reward)}
    for kind in ("value", "prm"):
        path = it / "critics" / kind
        if (path / "critic.json").is_file():
            critic = ScalarCritic.load(path, task)
            raters[f"{kind}: change the step makes"] = value_rater(critic, "drop")
            raters[f"{kind}: value after the step"] = value_rater(critic, "level")
    hits = localize(cases, raters)
    positions = [0] * (1 + max([c[2] for c in cases], default=0))
    for c in cases:
        positions[c[2]] += 1

    # a second ground truth where the task can check each step on its own (it lists its actions: Game of 24):
    # the first illegal step (wrong arithmetic, a number not on the table), a local error of the kind step pairs
    # teach. A step is legal when it is the one the task writes for its action (in free text: the model wrote
    # the same arithmetic and numbers left, in the task's order)
    illegal_hits = None
    if task.legal_actions(problems[0], []) is not None:
        def legal(p, steps, step):
            return task.observe(p, steps, task.action_of(step)) == step

        illegal = [(p, t, next((i for i in range(len(t)) if not legal(p, t[:i], t[i])), None)) for p, t, _ in cases]
        illegal_hits = localize([c for c in illegal if c[2] is not None], raters)

    cmd = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
    print(f"$ {cmd}")
    print(f"# {task.name}: {len(flat_t)} traces sampled ({args.samples} x {len(problems)} test problems) from the {args.sample_from} of {it}, "
          f"{solved:.0f} solved, {failed} failed, {len(cases)} failed in >= {args.min_steps} steps with a first bad step; "
          f"first bad step at positions {positions}; seed {args.seed}; {platform.machine()} {platform.system()}, "
          f"{torch.get_num_threads()} thread(s), {time.time() - t0:.0f} s, {datetime.now().isoformat(timespec='seconds')}\n")
    print("| blames the lowest-rated step | hits | failed traces | hit rate | x random |")
    print("|---|---|---|---|---|")
    def table(hits):
        rnd = hits[0].rate or 1e-9
        for h in hits:
            print(f"| {h.name} | {h.hits:.1f} | {h.traces} | {100 * h.rate:.1f}% | {h.rate / rnd:.2f} |")

    table(hits)
    if illegal_hits:
        print("\nSame traces, those with an illegal step; a hit = blaming the first illegal step:\n")
        print("| blames the lowest-rated step | hits | failed traces | hit rate | x random |")
        print("|---|---|---|---|---|")
        table(illegal_hits)

    out = Path(args.out or f"bench/out/credit-{task.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": cmd, "iteration": str(it), "seed": args.seed, "sample_from": args.sample_from, "positions": positions,
        "table": [{"name": h.name, "hits": h.hits, "traces": h.traces, "rate": h.rate} for h in hits],
        "first_illegal_table": [{"name": h.name, "hits": h.hits, "traces": h.traces, "rate": h.rate} for h in illegal_hits or []],
        "cases": [{"problem": p.to_dict(), "steps": t, "first_bad": b} for p, t, b in cases],
    }, indent=1))
    print(f"\ncases: {out}")


if __name__ == "__main__":
    main()
