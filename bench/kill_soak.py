"""Kill a short ``ponder improve`` with SIGKILL at random moments, resume it each time, then check the run.

    python bench/kill_soak.py [--kills 20] [--out runs/kill-soak] [--seed 0]

The run is tiny (a 32-wide tiny model bootstrapped from scratch, 3 iterations of 4 problems), so that
20 kills land in every phase: bootstrap, evaluation, the collapse watch, imagine, search, extract,
policy and critic training, the report. Each (re)start is killed a random 0.5-4 s after it took the run
folder's lock (past the Python and torch start-up); when a kill found the run in the same phase as the
one before, the next waits up to 1.5 times longer, so that long phases are passed too. A start that
finishes first ends the soak early. At the end: the
final resume exits 0, every iteration searched its problems exactly once, no data file holds a torn or
duplicate row, every checkpoint loads, and the report has one line per iteration. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

SMALL = ["--problems", "4", "--validation", "2", "--eval-limit", "2", "--eval-n", "2", "--search-batch", "2",
         "--eval-batch", "2", "--iterations", "3", "--eval-methods", "greedy,mcts",
         "--set", "tiny.hidden_size=32", "--set", "tiny.num_layers=1", "--set", "tiny.num_heads=2",
         "--set", "tiny.intermediate_size=64", "--set", "bootstrap.steps=8", "--set", "bootstrap.batch_size=8",
         "--set", "sft.steps=4", "--set", "sft.batch_size=4", "--set", "sft.warmup=1",
         "--set", "critic.steps=4", "--set", "critic.batch_size=4", "--set", "dpo.batch_size=4",
         "--set", "search.simulations=4", "--set", "search.k=2", "--set", "search.k_max=2",
         "--set", "eval_mcts.simulations=2", "--set", "eval_mcts.token_budget=200", "--set", "watch.samples=2",
         "--quiet"]
ITERATIONS = 3
ORDER0 = ["policy", "bootstrap", "eval", "watch"]
ORDER = ["imagine", "search", "extract", "policy", "critics", "eval", "watch"]


def phases(out: Path, i: int) -> dict:
    try:
        return json.loads((out / f"iter-{i}" / "phases.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def where(out: Path, iterations: int) -> str:
    """The phase a killed run was in: the first one not marked done (metrics lines tell the report apart)."""
    done = {m["iteration"] for m in rows(out / "metrics.jsonl")}
    for i in range(iterations + 1):
        ph = phases(out, i)
        for name in ORDER0 if i == 0 else ORDER:
            if name not in ph:
                return f"iteration {i}: {'bootstrap' if i == 0 and name == 'policy' else name}"
        if i not in done:
            return f"iteration {i}: metrics + report"
    return "finished"


def holder(out: Path) -> int | None:
    try:
        return json.loads((out / "ponder.lock").read_text()).get("pid")
    except (OSError, json.JSONDecodeError):
        return None


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def check(out: Path, iterations: int) -> list[tuple[str, bool]]:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    checks = []
    for f in sorted(out.rglob("*.jsonl")):
        lines = f.read_text().splitlines()
        try:
            parsed = [json.loads(x) for x in lines if x.strip()]
        except json.JSONDecodeError:
            checks.append((f"{f.relative_to(out)}: a torn row", False))
            continue
        ids = [r.get("problem_id") for r in parsed if "problem_id" in r]
        checks.append((f"{f.relative_to(out)}: {len(parsed)} rows, {len(ids) - len(set(ids))} duplicate ids",
                       len(ids) == len(set(ids))))
    for i in range(1, iterations + 1):
        want = {p["id"] for p in rows(out / f"iter-{i}" / "problems.jsonl")}
        got = [r["problem_id"] for r in rows(out / f"iter-{i}" / "search.jsonl")]
        checks.append((f"iteration {i}: {len(want)} problems, {len(got)} searched", len(want) == 4 and sorted(got) == sorted(want)))
    for model in sorted(out.rglob("model.safetensors")):
        d = model.parent
        try:
            if (d / "config.json").exists() and "critics" not in d.parts:
                AutoModelForCausalLM.from_pretrained(d)
            else:
                load_file(model)
            checks.append((f"{d.relative_to(out)} loads", True))
        except Exception as e:  # noqa: BLE001 -- any failure to load is what we look for
            checks.append((f"{d.relative_to(out)} does not load: {e}", False))
    its = [m["iteration"] for m in rows(out / "metrics.jsonl")]
    report = (out / "report.md").read_text() if (out / "report.md").exists() else ""
    checks.append((f"metrics lines {its}, report.md {len(report)} chars", its == list(range(iterations + 1)) and bool(report)))
    leftovers = [str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith((".tmp", ".old", ".lock"))]
    checks.append((f"leftover scratch files: {leftovers or 'none'}", not leftovers))
    return checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--out", default="runs/kill-soak")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-s", type=float, default=0.5)
    ap.add_argument("--max-s", type=float, default=4.0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    cli = [sys.executable, "-m", "ponder.cli", "improve"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    table = ["| # | killed (s after the lock) | phase at the kill | the start took over the dead one's lock |",
             "|---|---|---|---|"]
    t_all = time.time()
    kills, last, stretch = 0, None, 1.0
    for n in range(1, args.kills + 1):
        cmd = cli + (["--resume", str(out), "--quiet"] if (out / "config.yaml").exists() else ["--out", str(out), *SMALL])
        delay = rng.uniform(args.min_s, args.max_s * stretch)
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while p.poll() is None and holder(out) != p.pid:
            time.sleep(0.05)
        try:
            p.wait(delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
        p.wait()
        took = "yes" if "took over the lock" in p.stderr.read() else "no (first start)" if n == 1 else "NO"
        phase = where(out, ITERATIONS)
        if p.returncode != -signal.SIGKILL:
            table.append(f"| {n} | (exited {p.returncode} first) | {phase} | {took} |")
            break
        kills += 1
        stretch = stretch * 1.5 if phase == last else 1.0
        last = phase
        table.append(f"| {n} | {delay:.1f} | {phase} | {took} |")
    t0 = time.time()
    done = subprocess.run(cli + ["--resume", str(out), "--quiet"], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    final = done.stderr.strip().splitlines()
    print("\n".join(table))
    print(f"\n{kills} kills; final resume: exit {done.returncode} in {time.time() - t0:.0f} s; "
          f"{' '.join(x for x in final if x.startswith('ponder:'))}")
    checks = check(out, ITERATIONS)
    print("\n".join(f"- {'ok' if ok else 'WRONG'}: {what}" for what, ok in checks))
    ok = done.returncode == 0 and all(ok for _, ok in checks)
    print(f"\nKILL SOAK: {'PASSED' if ok else 'FAILED'} ({time.time() - t_all:.0f} s in all)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
