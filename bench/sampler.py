"""The step sampler against transformers' ``generate``: greedy tokens per second, and whether the tokens match.

Two comparisons on the same left-padded prompts:

- full: every row writes ``--new-tokens`` tokens (no stop string, no end-of-sequence), so both sides do
  the same work and every token can be compared;
- step: one reasoning step per row, ended at a newline (the search's real use), against ``generate``
  with ``stop_strings=["\\n"]``. The sampler drops finished rows; ``generate`` keeps padding them.
  The rules differ on purpose: a step ends at a newline only after non-blank content, ``generate``
  stops at the first newline, so rows that start with a blank line differ. Each side's tokens per
  second count the tokens of its own steps.

Usage: python bench/sampler.py --model tiny --batch 64 --new-tokens 64 [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable, Sequence

import torch
import transformers
from transformers import GenerationConfig

from ponder.models import load_policy
from ponder.models.base import SamplingParams
from ponder.models.hf import HFPolicy
from ponder.models.sampler import StopRule, left_pad, sample_steps
from ponder.models.tiny import tiny_model
from ponder.tasks import get_task


def best_times(fns: Sequence[Callable[[], Any]], repeats: int) -> tuple[list[float], list[Any]]:
    """Fastest of ``repeats`` timed calls of each function (after one warm-up call each), and each one's
    result. The calls alternate and the minimum is kept, so that other work on a shared machine
    disturbs both sides alike and as little as possible."""
    results = [fn() for fn in fns]
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            results[i] = fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best, results


def cut_generated(row: list[int], tokenizer, stop: str | None, eos: Sequence[int]) -> list[int]:
    """A ``generate`` row up to and including the token where it stopped (the rest is padding)."""
    for j, t in enumerate(row):
        if t in eos or (stop is not None and stop in tokenizer.decode(row[: j + 1])):
            return row[: j + 1]
    return row


def differences(ours: list[tuple[int, ...]], theirs: list[list[int]]) -> dict[int, int]:
    """Row -> first position where the two token sequences differ, for rows that differ."""
    diff = {}
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if list(a) != b:
            diff[i] = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return diff


def compare(policy: HFPolicy, prompts: list[list[int]], new_tokens: int, repeats: int, step: bool) -> dict:
    """Time the sampler and ``generate`` on the same prompts and compare their tokens."""
    model, tok = policy.model, policy.tokenizer
    stop = "\n" if step else None
    eos = policy.eos_ids if step else []  # full mode runs every row to the end on both sides
    vocab = model.get_output_embeddings().weight.shape[0]
    rule = StopRule.build(tok, (stop,) if stop else (), vocab, eos)
    params = SamplingParams(temperature=0, max_tokens=new_tokens, stop=rule.stops)
    ids, mask = left_pad(prompts, tok.pad_token_id)
    config = GenerationConfig(
        do_sample=False, max_new_tokens=new_tokens, eos_token_id=list(eos), pad_token_id=tok.pad_token_id,
        stop_strings=[stop] if stop else None,
    )

    @torch.inference_mode()
    def generate() -> torch.Tensor:
        return model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                              generation_config=config, tokenizer=tok)

    (t_ours, t_gen), (samples, out) = best_times(
        [lambda: sample_steps(model, tok, prompts, 1, params, rule), generate], repeats
    )
    ours = [g[0].token_ids for g in samples.steps]
    theirs = [cut_generated(r, tok, stop, eos) for r in out[:, ids.shape[1] :].tolist()]
    diff = differences(ours, theirs)
    n_ours, n_gen = sum(map(len, ours)), sum(map(len, theirs))
    return {
        "mode": "step" if step else "full",
        "batch": len(prompts),
        "new_tokens": new_tokens,
        "ours_tok_s": n_ours / t_ours,
        "generate_tok_s": n_gen / t_gen,
        "ours_tokens": n_ours,
        "generate_tokens": n_gen,
        "speedup": (n_ours / t_ours) / (n_gen / t_gen),
        "identical_rows": len(prompts) - len(diff),
        "first_difference": diff,
    }


def load(spec: str, seed: int) -> tuple[HFPolicy, str]:
    """The policy and the task whose prompts it is timed on."""
    if spec == "tiny":
        model, tok = tiny_model(seed=seed)
        return HFPolicy(model, tok, name="tiny (untrained)", seed=seed), "game24"
    policy = load_policy(spec, seed=seed)
    return policy, "gsm8k" if spec == "smollm2" else "game24"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny (freshly initialised), smollm2, or a model folder")
    ap.add_argument("--batch", type=int, default=64, help="prompts per call")
    ap.add_argument("--new-tokens", type=int, default=64, help="most tokens per prompt (full mode writes exactly this many)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side after a warm-up (best is kept)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    ap.add_argument("--out", help="also write the results as JSON here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    policy, task_name = load(args.model, args.seed)
    task = get_task(task_name)
    problems = task.problems("test")
    texts = [policy.render(task, problems[i % len(problems)]) for i in range(args.batch)]
    prompts = policy.encode(texts)
    device = str(policy.model.device)
    print(f"{policy.name} on {device}, {args.threads} threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; {task_name} prompts of {min(map(len, prompts))}"
          f"-{max(map(len, prompts))} tokens; best of {args.repeats}\n")
    print("| model | mode | batch | new tokens | ours tok/s | generate tok/s | speedup | identical rows |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for step in (False, True):
        r = compare(policy, prompts, args.new_tokens, args.repeats, step)
        rows.append({"model": policy.name, **r})
        print(f"| {policy.name} | {r['mode']} | {r['batch']} | {r['new_tokens']} | {r['ours_tok_s']:.0f} | "
              f"{r['generate_tok_s']:.0f} | {r['speedup']:.2f}x | {r['identical_rows']}/{r['batch']} |")
    for r in rows:
        if r["first_difference"]:
            print(f"{r['mode']}: rows that differ -> first differing position: {r['first_difference']}")
    if args.out:
        meta = {"device": device, "threads": args.threads, "torch": torch.__version__,
                "transformers": transformers.__version__}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
