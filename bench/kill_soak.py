"""Kill a short ``ponder improve`` with SIGKILL inside every phase in turn, resume it each time, then check
the run against an uninterrupted one.

    python bench/kill_soak.py [--kills 20] [--out runs/kill-soak] [--seed 0] [--pause 0.5]

The run is small (a 32-wide tiny model bootstrapped from scratch, 3 iterations of 6 problems), with the
bootstrap long enough that search solves some problems, so that every iteration trains its policy (expert
iteration, ~30 steps). First the same run goes through uninterrupted (``OUT/reference``), timing each phase.
Then the soaked run (``OUT/soak``): kill n aims at the phase after the one kill n-1 landed in (the first at
the bootstrap), in the order bootstrap, evaluation, the collapse watch, the report (iteration 0), then
imagine, search, extract, policy training, critic training, evaluation, the collapse watch, the report (each
later iteration). The soak polls the run folder every 10 ms until the run enters that phase, waits a random
0-90% of the phase's time in the reference run (or of the median time of that phase over the run, if
shorter), and kills. 20 kills cover each phase of iterations 0-2 once; iteration 3 runs through. Where the
run leaves the phase before the kill comes, the kill goes to the phase it is in, and the table says so.

The run folder tells the phase: a phase is entered when the one before it is recorded in
``iter-I/phases.json``; the report of iteration I is written once ``metrics.jsonl`` has its line and
``report.md`` names I iterations. Imagine and extract take milliseconds, so both runs set
``PONDER_SOAK_PAUSE`` (``ponder.loop.run.soak_pause``): the loop waits that long as each phase ends, after
its files are written and before it is recorded, and a kill can land there.

At the end: the final resume exits 0; every JSONL file parses (no torn row) and holds no problem or
loss-curve step twice; every JSONL file (search trees, evaluations, training data, loss curves, metrics)
is row for row the uninterrupted run's, timings and the run folder's path aside (the loop is
deterministic on a CPU); each iteration searched its problems once; every weight file loads and equals the
uninterrupted run's; the report names every iteration, as the uninterrupted run's does, with readable plots;
no scratch file is left. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

SMALL = ["--problems", "6", "--validation", "2", "--eval-limit", "3", "--eval-n", "2", "--search-batch", "2",
         "--eval-batch", "2", "--iterations", "3", "--eval-methods", "greedy,mcts",
         "--set", "tiny.hidden_size=32", "--set", "tiny.num_layers=1", "--set", "tiny.num_heads=2",
         "--set", "tiny.intermediate_size=64", "--set", "bootstrap.steps=60", "--set", "bootstrap.batch_size=16",
         "--set", "sft.steps=4", "--set", "sft.batch_size=4", "--set", "sft.warmup=1",
         "--set", "critic.steps=4", "--set", "critic.batch_size=4", "--set", "dpo.batch_size=4",
         "--set", "expert.steps=40", "--set", "expert.epochs=30", "--set", "expert.batch_size=2",
         "--set", "search.simulations=8", "--set", "search.k=3", "--set", "search.k_max=3",
         "--set", "eval_mcts.simulations=2", "--set", "eval_mcts.token_budget=200", "--set", "watch.samples=2",
         "--quiet"]
ITERATIONS = 3
PROBLEMS = 6
FIRST = ["bootstrap", "eval", "watch", "report"]  # iteration 0
EACH = ["imagine", "search", "extract", "policy", "critics", "eval", "watch", "report"]  # iterations 1..N
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
CLI = [sys.executable, "-m", "ponder.cli", "improve"]


def steps(iterations: int) -> list[tuple[int, str]]:
    """Every phase of the run in order, as (iteration, phase)."""
    return [(0, p) for p in FIRST] + [(i, p) for i in range(1, iterations + 1) for p in EACH]


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def phases(out: Path, i: int) -> dict:
    try:
        return json.loads((out / f"iter-{i}" / "phases.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def reported(out: Path) -> int:
    """How many iterations after the first ``report.md`` names (-1: no report yet)."""
    try:
        m = re.search(r", (\d+) of \d+ iterations", (out / "report.md").read_text().split("\n", 1)[0])
    except OSError:
        return -1
    return int(m.group(1)) if m else -1


def where(out: Path, iterations: int) -> int:
    """The index in ``steps`` of the phase the run is in (the first not finished); len(steps) when done."""
    try:
        recorded = {m["iteration"] for m in rows(out / "metrics.jsonl")}
    except json.JSONDecodeError:  # a line being written: not recorded yet
        recorded = set()
    for n, (i, phase) in enumerate(steps(iterations)):
        done = (i in recorded and reported(out) >= i) if phase == "report" else phase in phases(out, i)
        if not done:
            return n
    return len(steps(iterations))


def name(n: int, iterations: int) -> str:
    return "finished" if n >= len(steps(iterations)) else "iteration {}: {}".format(*steps(iterations)[n])


def inside(out: Path, n: int, iterations: int) -> str:
    """Which part of a training phase a kill found running (from the files it had written)."""
    if n >= len(steps(iterations)):
        return ""
    i, phase = steps(iterations)[n]
    if phase == "critics":
        saved = [k for k in ("value", "prm", "orm") if (out / f"iter-{i}" / "critics" / k / "critic.json").exists()]
        return f" ({', '.join(saved)} saved)" if saved else " (none saved yet)"
    if phase == "policy":
        return " (checkpoint saved)" if (out / f"iter-{i}" / "policy" / "config.json").exists() else ""
    return ""


def holder(out: Path) -> int | None:
    try:
        return json.loads((out / "ponder.lock").read_text()).get("pid")
    except (OSError, json.JSONDecodeError):
        return None


def start(out: Path) -> subprocess.Popen:
    cmd = CLI + (["--resume", str(out), "--quiet"] if (out / "config.yaml").exists() else ["--out", str(out), *SMALL])
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while p.poll() is None and holder(out) != p.pid:
        time.sleep(0.01)
    return p


def reference(out: Path, iterations: int) -> dict[int, float]:
    """The run uninterrupted; returns each phase's seconds (the first from the lock)."""
    p = start(out)
    entered, last = {0: time.time()}, 0
    while p.poll() is None:
        n = where(out, iterations)
        if n != last:
            for k in range(last + 1, n + 1):
                entered[k] = time.time()
            last = n
        time.sleep(0.01)
    if p.returncode != 0:
        sys.exit(f"the reference run failed (exit {p.returncode}): {p.stderr.read()[-2000:]}")
    entered[len(steps(iterations))] = time.time()
    return {k: entered[k + 1] - entered[k] for k in range(len(steps(iterations)))}


def window(took: dict[int, float], n: int, iterations: int) -> float:
    """How long after the run enters phase n a kill may come: 90% of the phase's time in the reference run,
    or of the median over the run of that phase's times where that is shorter (a phase slowed by other
    work on the machine in the reference run would send kills past the phase's end)."""
    if n >= len(steps(iterations)):
        return 0.0
    same = sorted(took[k] for k, (_, p) in enumerate(steps(iterations)) if p == steps(iterations)[n][1])
    return 0.9 * min(took[n], same[len(same) // 2])


def soak(out: Path, kills: int, iterations: int, took: dict[int, float], rng: random.Random) -> tuple[list[str], Counter, int]:
    """Kill the run ``kills`` times, each inside the phase after the last kill's; returns the table's
    rows, the kills per phase and how many kills there were."""
    table = ["| # | aimed at | phase at the kill | s after the run entered it | this start took over the last one's lock |",
             "|---|---|---|---|---|"]
    per_phase: Counter = Counter()
    target, done = 0, 0
    for k in range(1, kills + 1):
        if target >= len(steps(iterations)):
            break
        aimed, delay = target, rng.uniform(0, window(took, target, iterations))
        p = start(out)
        seen, into = None, 0.0
        while p.poll() is None:
            now, n = time.time(), where(out, iterations)
            if n > target:  # too late: the run left the phase before the kill; kill in the one it is in
                target, seen, delay = n, now, rng.uniform(0, window(took, n, iterations))
            elif n == target and seen is None:
                seen = now
            if seen is not None and now - seen >= delay:
                p.send_signal(signal.SIGKILL)
                into = now - seen
                break
            time.sleep(0.01)
        p.wait()
        err = p.stderr.read()
        lock = "yes" if "took over the lock" in err else "no (first start)" if k == 1 else "NO"
        at = where(out, iterations)
        if p.returncode != -signal.SIGKILL:
            table.append(f"| {k} | {name(aimed, iterations)} | none: exited {p.returncode} first | - | {lock} |")
            break
        done += 1
        per_phase[steps(iterations)[at][1] if at < len(steps(iterations)) else "finished"] += 1
        table.append(f"| {k} | {name(aimed, iterations)} | {'that one' if at == aimed else name(at, iterations)}"
                     f"{inside(out, at, iterations)} | {into:.2f} | {lock} |")
        target = at + 1
    return table, per_phase, done


def untimed(x, root: Path):
    """A row without its wall-clock fields (``seconds``) and with the run folder's path as RUN: what two runs of
    one config on one machine share (the loop is deterministic: seeded search, CPU training)."""
    if isinstance(x, dict):
        return {k: untimed(v, root) for k, v in x.items() if k != "seconds"}
    if isinstance(x, list):
        return [untimed(v, root) for v in x]
    if isinstance(x, str):
        return x.replace(str(root.resolve()), "RUN").replace(str(root), "RUN")
    return x


def check(out: Path, ref: Path, iterations: int) -> list[tuple[str, bool]]:
    import torch
    from matplotlib.image import imread
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    checks = []
    torn, twice, differ = [], [], []
    files = sorted(out.rglob("*.jsonl"))
    for f in files:
        rel = f.relative_to(out)
        try:
            parsed = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        except json.JSONDecodeError:
            torn.append(str(rel))
            continue
        ids = [r["problem_id"] for r in parsed if "problem_id" in r]
        curve = [(r.get("critic"), r["step"]) for r in parsed if "step" in r]
        if len(ids) != len(set(ids)) or len(curve) != len(set(curve)):
            twice.append(f"{rel} ({len(ids) - len(set(ids))} problems, {len(curve) - len(set(curve))} steps)")
        want = [untimed(r, ref) for r in rows(ref / rel)]
        if [untimed(r, out) for r in parsed] != want:
            differ.append(f"{rel} ({len(parsed)} rows vs {len(want)})")
    only = sorted({str(f.relative_to(ref)) for f in ref.rglob("*.jsonl")} ^ {str(f.relative_to(out)) for f in files})
    checks.append((f"{len(files)} JSONL files parse (no torn row): {', '.join(torn) or 'all'}", not torn))
    checks.append((f"no problem or loss-curve step twice in a file: {'; '.join(twice) or 'none twice'}", not twice))
    checks.append((f"every JSONL file (search trees, evaluations, data, loss curves, metrics) row for row the reference "
                   f"run's, timings aside: {'; '.join(differ + [f'only in one run: {x}' for x in only]) or 'yes'}",
                   not differ and not only))
    for i in range(1, iterations + 1):
        want = [p["id"] for p in rows(ref / f"iter-{i}" / "problems.jsonl")]
        got = [r["problem_id"] for r in rows(out / f"iter-{i}" / "search.jsonl")]
        checks.append((f"iteration {i}: {len(got)} problems searched ({len(set(got))} distinct), as in the reference run",
                       len(want) == PROBLEMS and sorted(got) == sorted(want)))
    bad, same, n = [], 0, 0
    refs = sorted(str(f.relative_to(ref)) for f in ref.rglob("*.safetensors"))
    for f in sorted(out.rglob("*.safetensors")):
        rel, d, n = f.relative_to(out), f.parent, n + 1
        try:
            if f.name == "model.safetensors" and (d / "config.json").exists() and "critics" not in d.parts:
                AutoModelForCausalLM.from_pretrained(d)
            mine, theirs = load_file(f), load_file(ref / rel)
            same += mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
        except Exception as e:  # noqa: BLE001 -- any failure to load is what we look for
            bad.append(f"{rel}: {e}")
    checks.append((f"{n} weight files load ({len(refs)} in the reference run), {same} equal to the reference's: "
                   f"{'; '.join(bad) or 'none fails'}", not bad and n == same == len(refs)))
    its = [m["iteration"] for m in rows(out / "metrics.jsonl")]
    pngs = re.findall(r"!\[[^]]*\]\(([^)]+)\)", (out / "report.md").read_text()) if (out / "report.md").exists() else []
    try:
        readable = bool(pngs) and all(imread(out / p).size for p in pngs)
    except Exception:  # noqa: BLE001 -- a torn plot
        readable = False
    same_report = untimed((out / "report.md").read_text(), out) == untimed((ref / "report.md").read_text(), ref)
    checks.append((f"metrics lines {its}; report.md names {reported(out)} of {iterations} iterations"
                   f"{', as the reference run' + chr(39) + 's' if same_report else ', NOT as the reference run'}; "
                   f"plots {', '.join(pngs)} {'readable' if readable else 'NOT readable'}",
                   its == list(range(iterations + 1)) and reported(out) == iterations and same_report and readable))
    leftovers = [str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith((".tmp", ".old", ".lock"))]
    checks.append((f"leftover scratch files: {leftovers or 'none'}", not leftovers))
    return checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--out", default="runs/kill-soak")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pause", type=float, default=0.5, help="PONDER_SOAK_PAUSE: seconds the loop waits as each phase ends")
    args = ap.parse_args()
    ENV["PONDER_SOAK_PAUSE"] = str(args.pause)
    rng = random.Random(args.seed)
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    ref, out = root / "reference", root / "soak"
    t_all = time.time()
    took = reference(ref, ITERATIONS)
    t_ref = time.time() - t_all
    print("| phase (uninterrupted run) | seconds |\n|---|---|")
    print("\n".join(f"| {name(n, ITERATIONS)} | {s:.2f} |" for n, s in took.items()))
    table, per_phase, kills = soak(out, args.kills, ITERATIONS, took, rng)
    t0 = time.time()
    done = subprocess.run(CLI + ["--resume", str(out), "--quiet"], env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    final = done.stderr.strip().splitlines()
    print()
    print("\n".join(table))
    kinds = list(dict.fromkeys(FIRST + EACH))
    print("\n| phase | " + " | ".join(kinds) + " |\n|---|" + "---|" * len(kinds))
    print("| kills | " + " | ".join(str(per_phase[p]) for p in kinds) + " |")
    print(f"\n{kills} kills; the reference run took {t_ref:.0f} s; final resume: exit {done.returncode} in "
          f"{time.time() - t0:.0f} s; {' '.join(x for x in final if x.startswith('ponder:'))}")
    checks = check(out, ref, ITERATIONS)
    print("\n".join(f"- {'ok' if ok else 'WRONG'}: {what}" for what, ok in checks))
    missed = [p for p in kinds if not per_phase[p]]
    ok = done.returncode == 0 and all(ok for _, ok in checks) and kills == args.kills and not missed
    print(f"\nKILL SOAK: {'PASSED' if ok else 'FAILED'} ({time.time() - t_all:.0f} s in all"
          f"{'; no kill in: ' + ', '.join(missed) if missed else ''})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
