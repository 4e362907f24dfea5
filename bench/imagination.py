"""The imagine phase of ``ponder improve --imagine model`` alone: a model writes GSM8K-style problems few-shot
from training examples, and the loop's own filters judge them (``ponder.imagination``): how many
candidates each filter takes, a sample of the kept ones with their pseudo-answers, and the tokens and
seconds the writing and the answerability sampling spend.

The references are the loop's: the test split, the 100 validation problems the loop holds out of the
train split (same shuffle, ``--seed``), every other training problem (the writer's few-shot pool) and the
problems kept so far. The verdicts go to ``--out`` (JSONL, appended; a rerun with the same ``--out``
resumes). A whole ``ponder improve`` iteration with SmolLM2 on a 2-core CPU (search, training, evaluation)
takes hours; this measures the part that is new.

    PYTHONPATH=src python bench/imagination.py --writer smollm2 --candidates 48 --out runs/bench-imagination.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from ponder.config import build
from ponder.imagination import ImagineConfig, reference_index, write_problems
from ponder.loop import ImproveConfig, held_out
from ponder.models import load_policy
from ponder.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="gsm8k")
    ap.add_argument("--writer", default="smollm2", help="the model that writes (a folder, .gguf, smollm2, openai:URL)")
    ap.add_argument("--solver", default=None, help="the policy that solves for the answerability filter (default: the writer)")
    ap.add_argument("--candidates", type=int, default=48)
    ap.add_argument("--validation", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="an ImagineConfig field, e.g. --set solutions=4 --set write_tokens=128")
    ap.add_argument("--out", default="runs/bench-imagination.jsonl")
    ap.add_argument("--sample", type=int, default=5, help="kept problems shown")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (on 2 shared cores, 1 decodes 6x faster than 2)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)

    import yaml

    sets = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.set)}
    cfg = build(ImagineConfig, {"candidates": args.candidates, **sets})
    loop_cfg = build(ImproveConfig, {"task": args.task, "validation": args.validation, "seed": args.seed,
                                     "imagine": "model"})
    task = get_task(args.task)
    val, _ = held_out(task, loop_cfg)
    seen = {p.question for p in val}
    seeds = [p for p in task.problems("train") if p.question not in seen]
    t0 = time.perf_counter()
    overlap = reference_index(task, cfg.ngram, val, seeds)
    t_index = time.perf_counter() - t0
    t0 = time.perf_counter()
    writer = load_policy(args.writer, device=args.device, seed=args.seed)
    solver = writer if args.solver in (None, args.writer) else load_policy(args.solver, device=args.device, seed=args.seed)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    w = write_problems(writer, solver, task, cfg, want=cfg.candidates, seeds=seeds, overlap=overlap, out=args.out,
                       say=lambda m: print(m, flush=True))
    wall = time.perf_counter() - t0
    rows = w.rows
    passed_format = [r for r in rows if r["verdict"] != "format"]
    passed_overlap = [r for r in passed_format if r["verdict"] != "overlap"]
    kept = [r for r in rows if r["verdict"] == "kept"]
    why = Counter()
    for r in rows:
        if r["verdict"] != "kept":
            reason = r["why"].split("(")[0].split(",")[0].strip()
            why[f"{r['verdict']}: " + ("characters" if "characters" in reason else reason[:60])] += 1
    print()
    print(f"# {args.task}: {args.writer} writes, {args.solver or args.writer} solves; seed {args.seed}; {len(rows)} candidates")
    print(f"references: {len(overlap)} problems indexed in {t_index:.1f} s; models loaded in {t_load:.1f} s")
    print("| stage | candidates | share |\n|---|---:|---:|")
    for name, n in (("written", len(rows)), ("pass format", len(passed_format)), ("pass overlap", len(passed_overlap)),
                    ("pass answerability (kept)", len(kept))):
        print(f"| {name} | {n} | {n / max(1, len(rows)):.0%} |")
    print("\nrejections by reason:")
    for k, n in why.most_common():
        print(f"  {n:4d}  {k}")
    shares = sorted(r["overlap"]["share"] for r in passed_format)
    if shares:
        print(f"\noverlap share of the format-passing candidates with their nearest reference: median "
              f"{shares[len(shares) // 2]:.2f}, max {shares[-1]:.2f}")
    agree = Counter(r.get("agreement") for r in passed_overlap)
    print("agreement of the m solutions (share of the majority answer):", dict(sorted(agree.items(), key=lambda x: (x[0] is None, x[0]))))
    rec = w.record()
    print(f"\ncompute: writing {rec['write']['tokens_generated']} generated + {rec['write']['tokens_read']} read tokens, "
          f"{rec['write']['seconds']:.0f} s; answerability {rec['solve']['tokens_generated']} generated + "
          f"{rec['solve']['tokens_read']} read tokens, {rec['solve']['seconds']:.0f} s; this call's wall {wall:.0f} s")
    print(f"\nsample of kept problems ({min(args.sample, len(kept))} of {len(kept)}):")
    for r in kept[: args.sample]:
        print(f"- [{r['reference']}, agreement {r['agreement']}, answers {r['answers']}] {r['question']}")
    Path(args.out).with_suffix(".summary.json").write_text(json.dumps(
        {"args": vars(args), "config": cfg.__dict__, "record": rec, "wall_seconds": wall, "why": dict(why)}, indent=2))


if __name__ == "__main__":
    main()
