"""Compute-matched frontier on the Game of 24 test puzzles: accuracy against mean tokens generated per
puzzle for greedy, best-of-N, beam, DVTS, ToT-BFS, MCTS and A*, each at a few budget levels. Prints a
markdown table and draws one accuracy-vs-tokens line per method into a PNG.

    python bench/frontier.py --model runs/demo/model [--methods beam,mcts] [--levels s,m,l] [--limit 100]
    python bench/frontier.py --model ITER/policy --critic implicit:ITER --methods beam --out bench/out/implicit

``--critic SPEC`` (any ``--critic`` of ``ponder eval``: ``implicit:ITER``, ``value:DIR``, ...) makes the
tree searches rank states with that critic (``scorer="critic"``) instead of verifier-scored rollouts.

Every run is written to OUT/METHOD-LEVEL.jsonl and resumes where it stopped (``run_eval``); a rerun with
other settings for the same file is refused, so change --out when the level maps below change.
Tree searches value states with verifier-scored rollouts (``scorer="rollout"``): the verifier gives 0
to every unfinished state, so it cannot rank them itself. MCTS gets no critic, so its leaf values are
rollout outcomes alone.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from ponder.critics import Verifier, get_critic
from ponder.evaluate import run_eval
from ponder.models import load_policy
from ponder.search import get_method
from ponder.tasks import get_task

# Budget levels: name -> config fields. s < m < l (< xl) in compute, chosen so that the tree searches land
# near 200 / 700 / 2,700 tokens per puzzle with the 1,100-step bootstrapped model, between best-of-N's 4, 16,
# 32 and 64 traces (300 / 1,200 / 2,400 / 4,800 tokens), and the whole frontier runs in about 35 minutes of
# 1-thread CPU time on a slow 2-core EPYC (two levels only for DVTS, ToT and A*, to fit). Greedy has one
# level (run whenever "s" is among --levels). Tree searches get scorer="rollout" added below.
LEVELS: dict[str, dict[str, dict]] = {
    "greedy": {"s": {}},
    "best-of-n": {
        "s": dict(n=4),
        "m": dict(n=16),
        "l": dict(n=32),
        "xl": dict(n=64),  # past the tree searches' largest budgets: where best-of-N gets with twice their tokens
    },
    "beam": {
        "s": dict(beam_width=2, k=2, rollouts=1),
        "m": dict(beam_width=4, k=4, rollouts=1),
        "l": dict(beam_width=8, k=8, rollouts=1),
    },
    "dvts": {
        "s": dict(beam_width=2, subtrees=2, k=2, rollouts=1),
        "m": dict(beam_width=4, subtrees=2, k=4, rollouts=1),
    },
    "tot-bfs": {
        "s": dict(breadth=1, k=2, rollouts=1),
        "m": dict(breadth=3, k=4, rollouts=1),
    },
    # MCTS's tokens grow with the tree, not with the simulations: Game of 24 traces are 3 steps and an
    # illegal step ends a trace, so with k = 2 a tree is complete after a few simulations and the rest
    # re-visit terminal leaves for free (k = 2, 16 simulations measured 220 tokens per puzzle); the
    # budget is set by k (children per node) and simulations together
    "mcts": {
        "s": dict(simulations=8, k=2, k_max=4, rollouts=1),
        "m": dict(simulations=16, k=4, k_max=8, rollouts=1),
        "l": dict(simulations=32, k=8, k_max=8, rollouts=1),
    },
    "astar": {
        "s": dict(max_expansions=4, k=2, rollouts=1),
        "m": dict(max_expansions=8, k=4, rollouts=1),
    },
}
ROLLOUT_SCORED = {"beam", "dvts", "tot-bfs", "astar"}  # configs with a `scorer` field
LEVEL_ORDER = ["s", "m", "l", "xl"]


def make_config(method: str, level: str, critic: bool = False):
    fields = dict(LEVELS[method][level])
    if method in ROLLOUT_SCORED:
        if critic:
            fields.pop("rollouts", None)
        fields.setdefault("scorer", "critic" if critic else "rollout")
    return get_method(method).config(**fields)


def fmt_wall(wall: float | None) -> str:
    return "(earlier run)" if wall is None else f"{wall:.1f}s"


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in dict.fromkeys(r["method"] for r in results):
        pts = sorted((r["tokens_generated"], 100 * r["accuracy"], r["level"]) for r in results if r["method"] == method)
        xs, ys = [max(p[0], 1e-9) for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, marker="o", label=method)
        for x, y, lvl in pts:
            ax.annotate(lvl, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("mean tokens generated per puzzle (log)")
    ax.set_ylabel("solved (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--methods", default=",".join(LEVELS))
    ap.add_argument("--levels", default=",".join(LEVEL_ORDER), help="comma list of level names (s, m, l, xl)")
    ap.add_argument("--limit", type=int, default=100, help="puzzles (the first LIMIT of the test split)")
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--critic", help="rank tree-search states with this critic (a ponder eval --critic spec) instead of rollouts")
    ap.add_argument("--out", default="bench/out/frontier")
    ap.add_argument("--png", default="bench/out/frontier.png")
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    levels = [lv.strip() for lv in args.levels.split(",") if lv.strip()]
    for m in methods:
        if m not in LEVELS:
            ap.error(f"unknown method {m!r}; choose from {', '.join(LEVELS)}")
    for lv in levels:
        if lv not in LEVEL_ORDER:
            ap.error(f"unknown level {lv!r}; choose from {', '.join(LEVEL_ORDER)}")
    # build every config first, so a bad level map fails before any compute is spent
    plan = [(m, lv, make_config(m, lv, bool(args.critic))) for m in methods for lv in LEVEL_ORDER if lv in levels and lv in LEVELS[m]]

    torch.set_num_threads(args.threads)
    task = get_task("game24")
    problems = task.problems("test")[: args.limit]
    policy = load_policy(args.model, seed=args.seed)
    guide = get_critic(args.critic, task, policy) if args.critic else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    cmd = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
    header = (
        f"# Game of 24 frontier ({len(problems)} test puzzles), model {args.model}, "
        f"tree searches ranked by {args.critic or 'verifier rollouts'}, seed {args.seed}, "
        f"{platform.machine()} {platform.system()} ({platform.platform()}), {torch.get_num_threads()} threads, "
        f"{datetime.now().isoformat(timespec='seconds')}"
    )
    print(f"$ {cmd}\n{header}\n", flush=True)

    results = []
    for method, level, cfg in plan:
        critic = (guide if method in ROLLOUT_SCORED and guide else Verifier(task)) if get_method(method).needs_critic else None
        settings = {"model": args.model, "seed": args.seed, "task": "game24", "split": "test", "bench": "frontier", "level": level,
                    "critic": args.critic}
        path = out / f"{method}-{level}.jsonl"
        before = sum(1 for _ in path.open()) if path.exists() else 0  # rows already there (a resumed run)
        t0 = time.perf_counter()
        s, _ = run_eval(task, policy, method, cfg, problems, out / f"{method}-{level}.jsonl", critic, args.batch, args.seed,
                        settings=settings, progress=False)
        wall = time.perf_counter() - t0 if before < len(problems) else None  # None: read back, not run now
        tps = s.tokens_generated * s.problems / s.seconds if s.seconds > 0 else float("nan")
        r = dict(method=method, level=level, accuracy=s.accuracy, tokens_generated=s.tokens_generated,
                 tokens_read=s.tokens_read, seconds=s.seconds, tps=tps, problems=s.problems, wall=wall,
                 knobs={k: v for k, v in LEVELS[method][level].items() if not (guide and k == "rollouts")})
        results.append(r)
        print(f"  {method}-{level}: {100 * s.accuracy:.0f}% solved, {s.tokens_generated:,.0f} tok/puzzle, "
              f"{s.seconds:.1f}s attributed, {fmt_wall(wall)} wall, {tps:,.0f} tok/s", flush=True)

    order = {m: i for i, m in enumerate(LEVELS)}
    results.sort(key=lambda r: (order[r["method"]], r["tokens_generated"]))
    print(f"\n{header}\n")
    print("| method | level | knobs | solved | tokens generated / puzzle | tokens read / puzzle | seconds (attributed) "
          "| wall clock | tokens/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        knobs = ", ".join(f"{k}={v}" for k, v in r["knobs"].items()) or "-"
        print(f"| {r['method']} | {r['level']} | {knobs} | {100 * r['accuracy']:.0f}% | {r['tokens_generated']:,.0f} "
              f"| {r['tokens_read']:,.0f} | {r['seconds']:.1f} | {fmt_wall(r['wall'])} | {r['tps']:,.0f} |")
    if results:
        plot(results, Path(args.png), f"Game of 24 ({len(problems)} puzzles), {'/'.join(Path(args.model).parts[-2:])}, seed {args.seed}")
        print(f"\nplot: {args.png}")


if __name__ == "__main__":
    main()
