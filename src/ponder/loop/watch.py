"""Phase 6, **watch** for collapse on held-out validation problems: validation accuracy, sample
diversity and per-token entropy of the policy (and, where the task lists actions, the same at the
step level). A warning can roll the next iteration back to the best checkpoint so far."""

import math
import random

from .improver import Improver
from .run import say


def watch(imp: Improver, i: int) -> dict:
    """Validation accuracy (greedy), sample diversity and per-token entropy of the policy.

    diversity = distinct traces / samples, averaged over problems; entropy = the mean of
    -log pi(token) over sampled tokens at temperature 1, a Monte-Carlo estimate of the policy's
    per-token entropy. A policy collapsing onto a few traces shows both falling.
    """
    from ..evaluate import run_eval
    from ..models import SamplingParams
    from ..search import SearchEnv, get_method

    cfg = imp.cfg
    if not imp.val:
        return {}
    policy = imp.policy(imp.policy_path(i))
    g, _ = run_eval(imp.task, policy, "greedy", get_method("greedy").config(), imp.val, None,
                    batch=cfg.eval_batch, seed=cfg.seed, progress=False)
    env = SearchEnv(policy, imp.task)
    if hasattr(policy, "seed"):
        policy.seed(cfg.seed)
    params = SamplingParams(1.0, 1.0, imp.task.max_step_tokens * imp.task.max_steps, stop=())
    distinct, nll, tokens = [], 0.0, 0
    for k in range(0, len(imp.val), cfg.eval_batch):
        chunk = imp.val[k : k + cfg.eval_batch]
        out = policy.sample([env.prompt(p) for p in chunk], cfg.watch.samples, params)
        for samples in out.steps:
            distinct.append(len({s.text for s in samples}) / len(samples))
            nll -= sum(s.logprob for s in samples)
            tokens += sum(s.num_tokens for s in samples)
    diversity = sum(distinct) / len(distinct)
    entropy = nll / max(1, tokens)
    prev = [m["watch"]["val_accuracy"] for m in imp.run.metrics() if m.get("watch") and m["iteration"] < i]
    best = max(prev, default=None)
    warnings = []
    if diversity < cfg.watch.min_diversity:
        warnings.append(f"sample diversity {diversity:.2f} < {cfg.watch.min_diversity}")
    if best is not None and g.accuracy < best - cfg.watch.max_drop:
        warnings.append(f"validation accuracy {g.accuracy:.2f} fell more than {cfg.watch.max_drop} below the best {best:.2f}")
    elif best is not None and cfg.watch.max_z and drop_z(best, g.accuracy, len(imp.val)) >= cfg.watch.max_z:
        warnings.append(f"validation accuracy {g.accuracy:.2f} fell {drop_z(best, g.accuracy, len(imp.val)):.1f} standard "
                        f"errors below the best {best:.2f} (of {len(imp.val)} problems)")
    out = {"val_accuracy": g.accuracy, "diversity": round(diversity, 4), "entropy": round(entropy, 4),
           **step_watch(imp, env), "warnings": warnings}
    for w in warnings:
        say(f"collapse watch, iteration {i}: {w}")
    if warnings and cfg.watch.rollback and prev:
        best_i = max((m for m in imp.run.metrics() if m.get("watch") and m["iteration"] < i),
                     key=lambda m: m["watch"]["val_accuracy"])["iteration"]
        out["next_policy"] = imp.policy_path(best_i)
        say(f"collapse watch: iteration {i + 1} starts from iteration {best_i}'s policy")
    return out


def drop_z(best: float, now: float, n: int) -> float:
    """How many standard errors ``now`` lies below ``best``, both shares of the same ``n`` problems: the
    two-proportion z statistic (best - now) / sqrt(p (1 - p) 2 / n) with p their mean (0 where both are 0 or 1).
    A low best makes a small absolute fall significant: 6% -> 0% of 100 is z = 2.5."""
    p = (best + now) / 2
    se = math.sqrt(p * (1 - p) * 2 / n) if n else 0.0
    return (best - now) / se if se > 0 else 0.0


def step_watch(imp: Improver, env) -> dict:
    """The collapse watch at the step level, where the task lists actions: at each validation problem's
    first step, the entropy of the policy over the legal actions (nats) and the distinct actions among
    ``watch.samples`` drawn from it with replacement. A policy narrowing onto few moves shows both
    falling, even while whole traces stay diverse."""
    from ..search import State
    from ..search.env import softmax

    if not env.lists_actions:
        return {}
    rng = random.Random(imp.cfg.seed)
    ent, distinct = [], []
    for legal, lps, _ in env.priors([State(p) for p in imp.val]):
        if legal:
            probs = softmax(lps)
            ent.append(-sum(x * math.log(x) for x in probs if x > 0))
            distinct.append(len(set(rng.choices(range(len(legal)), probs, k=imp.cfg.watch.samples))))
    for pr in imp.val:
        env.take_compute(pr)
    return {"step_entropy": round(sum(ent) / max(1, len(ent)), 4),
            "step_distinct": round(sum(distinct) / max(1, len(distinct)), 3)}
