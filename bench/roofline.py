"""The step sampler against the machine: generated tokens/s and model FLOPs utilisation at growing batch
sizes, against the machine's measured matmul peak (issue 17, item 5).

    python bench/roofline.py --model runs/demo/iter-0/policy --batches 64,256,1024,4096 [--profile 1024]
    python bench/roofline.py --model smollm2 --batches 16,64,256 --new-tokens 32

- peak: the best of ``--repeats`` timed ``torch.mm`` of two 2048 x 2048 matrices on the same threads, in
  float32 (what the sampler runs on a CPU) and bfloat16; FLOPs = 2 n^3.
- sampler: ``policy.sample`` over the Game-of-24 test prompts (taken in turn to fill the batch), every row writing ``--new-tokens`` tokens (no stop string; a row that
  writes end-of-sequence stops, which the table's tokens count), at temperature 1, best of ``--repeats``.
  Model FLOPs are ``Compute.flops`` of the call: 2 x the model's weights (``compute.flops_per_token``,
  without attention's products) for every token read or generated. MFU = model FLOP/s / float32 peak.
- ``--profile B``: torch's profiler over one call at batch B, the operators by self CPU time, to see
  where the time goes that is not the model's matmuls.

Prints markdown tables (and writes them with the command, machine and date to ``--out`` if given).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone

import torch

from ponder.models import SamplingParams, load_policy
from ponder.tasks import get_task


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` n x n matrix products."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def sampler_call(policy, prefixes: list[str], k: int, new_tokens: int):
    params = SamplingParams(temperature=1.0, max_tokens=new_tokens, stop=())
    t0 = time.perf_counter()
    out = policy.sample(prefixes, k, params)
    return out, time.perf_counter() - t0


def rows(prompts: list[str], batch: int) -> list[str]:
    """``batch`` prefixes: the prompts in turn, as many times as it takes."""
    return [prompts[i % len(prompts)] for i in range(batch)]


def measure(policy, prompts: list[str], batch: int, new_tokens: int, repeats: int) -> dict:
    """The best of ``repeats`` calls of ``batch`` rows."""
    prefixes = rows(prompts, batch)
    sampler_call(policy, prefixes[: max(1, batch // 8)], 1, 4)  # warm-up
    best = None
    for _ in range(repeats):
        out, seconds = sampler_call(policy, prefixes, 1, new_tokens)
        if best is None or seconds < best[1]:
            best = (out, seconds)
    out, seconds = best
    generated = sum(c.tokens_generated for c in out.compute)
    read = sum(c.tokens_read for c in out.compute)
    flops = sum(c.flops for c in out.compute)
    return {"rows": batch, "generated": generated, "read": read, "seconds": seconds, "tokens_per_s": generated / seconds,
            "flops_per_s": flops / seconds}


def profile(policy, prompts: list[str], batch: int, new_tokens: int, top: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    prefixes = rows(prompts, batch)
    sampler_call(policy, prefixes, 1, 4)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        _, seconds = sampler_call(policy, prefixes, 1, new_tokens)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    return f"one call at batch {batch}: {seconds:.2f} s under the profiler\n\n```\n{table}\n```"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a model folder, .gguf or smollm2")
    ap.add_argument("--batches", default="64,256,1024,4096", help="rows per sampler call")
    ap.add_argument("--new-tokens", type=int, default=48, help="tokens each row writes")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--profile", type=int, metavar="BATCH", help="also profile one call at this batch")
    ap.add_argument("--out", help="append the tables (markdown) to this file")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    policy = load_policy(args.model, dtype=args.dtype, seed=args.seed)
    task = get_task("game24")
    prompts = [policy.render(task, p) for p in task.problems("test")]
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    params = policy.flops_per_token / 2
    lines = [
        f"`{' '.join(sys.argv)}`; {platform.processor() or platform.machine()}, {args.threads} threads, "
        f"torch {torch.__version__}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, seed {args.seed}",
        "",
        f"matmul peak (2048 x 2048 `torch.mm`, best of 5): float32 {peak32 / 1e9:,.0f} GFLOP/s, "
        f"bfloat16 {peak16 / 1e9:,.0f} GFLOP/s. Model: {args.model}, {params / 1e6:.2f}M weights a token is "
        f"multiplied by, {next(policy.model.parameters()).dtype}.",
        "",
        "| rows per call | tokens generated | tokens read | seconds | generated tokens/s | model GFLOP/s | MFU (float32 peak) |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in (int(x) for x in args.batches.split(",")):
        r = measure(policy, prompts, b, args.new_tokens, args.repeats)
        lines.append(f"| {r['rows']} | {r['generated']:,} | {r['read']:,} | {r['seconds']:.2f} | {r['tokens_per_s']:,.0f} "
                     f"| {r['flops_per_s'] / 1e9:.1f} | {100 * r['flops_per_s'] / peak32:.1f}% |")
        print(lines[-1], flush=True)
    if args.profile:
        lines += ["", profile(policy, prompts, args.profile, args.new_tokens)]
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        with open(args.out, "a") as fh:
            fh.write(text + "\n\n")


if __name__ == "__main__":
    main()
