"""Kill ``ponder improve`` with SIGKILL during search and again during training, resume it each time,
and check the finished run: every imagined problem searched exactly once, no duplicate rows in any
data or evaluation file, and one metrics line per iteration.

    python bench/kill_resume.py --model runs/boot/model [--out runs/kill-resume]

Uses a small config (``--problems``, fewer simulations) so the whole check takes a few minutes; the
run starts from ``--model`` to skip the bootstrap.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


def wait_for(pred, timeout: float, proc: subprocess.Popen) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/boot/model")
    ap.add_argument("--out", default="runs/kill-resume")
    ap.add_argument("--problems", type=int, default=32)
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    exe = [str(Path(sys.executable).with_name("ponder"))]
    start = exe + ["improve", "--out", str(out), "--model", args.model, "--iterations", "2", "--quiet",
                   "--problems", str(args.problems), "--search-batch", "8", "--eval-limit", "20",
                   "--set", "search.simulations=12", "--set", "sft.steps=40", "--set", "critic.steps=10"]
    resume = exe + ["improve", "--resume", str(out), "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = []

    def kill_when(cmd, what: str, pred, timeout=900) -> None:
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        hit = wait_for(pred, timeout, p)
        if hit and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
            log.append(f"killed with SIGKILL {what}")
        else:
            p.wait()
            log.append(f"did not catch it {what} (exit {p.returncode})")

    search1 = out / "iter-1" / "search.jsonl"
    kill_when(start, "during iteration 1's search (after its first batch)", lambda: len(rows(search1)) >= 8)
    n_before = len(rows(search1))
    log.append(f"  search rows at the kill: {n_before}")
    critic_log = out / "iter-1" / "critics.losses.jsonl"
    kill_when(resume, "during iteration 1's training (critics)",
              lambda: critic_log.exists() and len(critic_log.read_text().splitlines()) >= 3)
    kill_when(resume, "during iteration 2's search",
              lambda: 8 <= len(rows(out / "iter-2" / "search.jsonl")) < args.problems)
    t0 = time.time()
    done = subprocess.run(resume, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log.append(f"final resume: exit {done.returncode} in {time.time() - t0:.0f} s {done.stderr.strip()[-300:]}")

    ok = done.returncode == 0
    for i in (1, 2):
        problems = rows(out / f"iter-{i}" / "problems.jsonl")
        search = rows(out / f"iter-{i}" / "search.jsonl")
        ids = [r["problem_id"] for r in search]
        good = len(ids) == len(set(ids)) == len(problems) == args.problems and set(ids) == {p["id"] for p in problems}
        ok &= good
        log.append(f"iteration {i}: {len(problems)} problems, {len(ids)} search rows, {len(set(ids))} distinct: "
                   f"{'ok' if good else 'WRONG'}")
        for f in sorted((out / f"iter-{i}").glob("eval-*.jsonl")):
            e = [r["problem_id"] for r in rows(f)]
            good = len(e) == len(set(e)) == 20
            ok &= good
            log.append(f"  {f.name}: {len(e)} rows, {len(set(e))} distinct: {'ok' if good else 'WRONG'}")
    its = [m["iteration"] for m in rows(out / "metrics.jsonl")]
    ok &= its == [0, 1, 2]
    log.append(f"metrics lines: {its}")
    print("\n".join(log))
    print("RESUME CHECK: " + ("PASSED" if ok else "FAILED"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
