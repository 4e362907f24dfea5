"""Tree attention's pass (every legal action of a state scored in one row) in its two forms, timed in one run:
the (T, T) mask over prefix + every continuation (``branches.packed_logprobs``, the pass for models that
``fast_llama`` cannot run) against ``FastLlama.tree_logprobs`` (attention in two blocks: the prefix, then each
continuation against the prefix's keys and its own, the continuations in one flat batch; what
``branch_logprobs`` runs for scoring and training).

    python bench/tree_attention.py --model runs/demo/iter-0/policy [--states 64] [--repeats 5]

States: the first ``--states`` test puzzles' roots (36 legal actions at most), and one legal step below each
(at most 18). Continuations: the actions the model writes (``4 + 8 =``, what search scores) and the whole steps
with the task's observation (``4 + 8 = 12 (left: 1 6 12)``, what a prior that reads the position would score).
Passes: scoring (no gradient) and training (forward + backward of the summed log-probs). Prints one JSON line
per case, best of ``--repeats`` in seconds, and the largest difference between the two forms' log-probs.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ponder.models import load_policy
from ponder.models.branches import packed_logprobs
from ponder.models.fast_llama import FastLlama
from ponder.tasks import get_task


def two_blocks(model, prefixes, conts, pad):
    """``FastLlama.tree_logprobs``, called directly."""
    return FastLlama(model).tree_logprobs(prefixes, conts)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a tiny-model folder, e.g. runs/demo/iter-0/policy")
    ap.add_argument("--states", type=int, default=64, help="test puzzles whose root and one step below are scored")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    task, policy = get_task("game24"), load_policy(args.model, device="cpu")
    model, tok = policy.model, policy.tokenizer
    states = []
    for p in task.problems("test")[: args.states]:
        first = task.observe(p, [], task.legal_actions(p, [])[0])
        states += [(p, []), (p, [first])]
    prefixes = [tok(policy.render(task, p) + "".join(s), add_special_tokens=False)["input_ids"] for p, s in states]
    kinds = {"actions": [task.legal_actions(p, s) for p, s in states]}
    kinds["whole steps"] = [[task.observe(p, s, a) for a in acts] for (p, s), acts in zip(states, kinds["actions"])]
    for kind, texts in kinds.items():
        conts = [[tok(t, add_special_tokens=False)["input_ids"] for t in ts] for ts in texts]
        tokens = sum(map(len, prefixes)) + sum(len(c) for cs in conts for c in cs)
        for form, fn in (("(T, T) mask", packed_logprobs), ("two blocks", two_blocks)):
            with torch.no_grad():
                lp = torch.cat(fn(model, prefixes, conts, tok.pad_token_id))
                score = best_of(lambda: fn(model, prefixes, conts, tok.pad_token_id), args.repeats)

            def train():
                model.zero_grad(set_to_none=True)
                torch.cat(fn(model, prefixes, conts, tok.pad_token_id)).sum().backward()

            model.train()
            fit = best_of(train, args.repeats)
            model.eval()
            if form == "(T, T) mask":
                ref = lp
            print(json.dumps({"continuations": kind, "form": form, "states": len(states), "tokens": tokens,
                              "score_s": round(score, 4), "train_s": round(fit, 4),
                              "max_abs_diff": round(float((lp - ref).abs().max()), 7)}), flush=True)


if __name__ == "__main__":
    main()
