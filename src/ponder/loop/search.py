"""Phase 2, **search**: MCTS over the iteration's training problems with the policy it starts from,
guided by the previous iteration's critics (iteration 1 has none yet and values leaves by
verifier-scored rollouts alone). Leaf rollouts come from ``--rollout-model`` where it is given (with
``distill``, the model distilled at iteration i-1). With ``--search-method best-of-n`` there is no tree
search: ``--search-n`` whole traces sampled per problem (STaR's rejection sampling), ranked by the verifier,
their shared prefixes making one flat tree per problem. Every tree goes to ``iter-I/search.jsonl`` as its
batch finishes."""

import time
from dataclasses import replace

from .improver import Improver
from .run import problem_rows, say


def search(imp: Improver, i: int, start: str) -> dict:
    """The search method of ``--search-method`` from policy ``start`` over ``iter-I/problems.jsonl``; returns
    the phase's record (the share solved, mean tokens generated per problem, seconds)."""
    if imp.cfg.search_method == "best-of-n":
        return sample_search(imp, i, start)
    return mcts_search(imp, i, start)


def mcts_search(imp: Improver, i: int, start: str) -> dict:
    """MCTS guided by iteration i-1's critics (rollouts alone before any exist)."""
    from ..critics import critic_name

    cfg, it = imp.cfg, imp.run.it(i)
    problems = problem_rows(it / "problems.jsonl")
    guide = imp.guide(i - 1)
    name = critic_name(guide, imp.task) if guide else None
    scfg = cfg.search if guide is not None else replace(cfg.search, value_weight=0.0)
    rollout = imp.rollout_spec(i - 1)
    say(f"iteration {i}: MCTS over {len(problems)} training problems "
        f"({'guided by ' + name if guide else 'rollouts only: no critics yet'}"
        f"{', rolling out with ' + rollout if rollout else ''})")
    t0 = time.time()
    settings = {"phase": "search", "iteration": i, "policy": start, "rollout": rollout}  # None reads as absent
    s, _ = imp.run_eval(start, guide, "mcts", scfg, problems, it / "search.jsonl", cfg.search_batch, cfg.seed + i,
                        settings, save_trees=True, rollout=rollout)
    out = {"solved": s.accuracy, "tokens_generated": s.tokens_generated, "seconds": round(time.time() - t0, 1),
           "guide": name}
    if rollout:
        out.update(rollout=rollout, flops=s.flops)
    return out


def sample_search(imp: Improver, i: int, start: str) -> dict:
    """Best-of-N: ``--search-n`` (default ``--eval-n``) traces per problem from the policy alone, no critic and no
    rollout model; ranked by the verifier, so a problem counts as solved when any sample is verified (pass@N).
    The tokens counted are the samples' own, as MCTS's are."""
    from ..search import get_method

    cfg, it = imp.cfg, imp.run.it(i)
    problems = problem_rows(it / "problems.jsonl")
    n = cfg.search_n or cfg.eval_n
    say(f"iteration {i}: best-of-{n} sampling over {len(problems)} training problems (no tree search)")
    t0 = time.time()
    settings = {"phase": "search", "iteration": i, "policy": start}
    mcfg = get_method("best-of-n").config(n=n)
    s, _ = imp.run_eval(start, "verifier", "best-of-n", mcfg, problems, it / "search.jsonl", cfg.search_batch,
                        cfg.seed + i, settings, save_trees=True)
    return {"solved": s.accuracy, "tokens_generated": s.tokens_generated, "seconds": round(time.time() - t0, 1),
            "guide": None, "method": "best-of-n", "n": n}
