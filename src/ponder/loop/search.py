"""Phase 2, **search**: MCTS over the iteration's training problems with the policy it starts from,
guided by the previous iteration's critics (iteration 1 has none yet and values leaves by
verifier-scored rollouts alone). Every tree goes to ``iter-I/search.jsonl`` as its batch finishes."""

import time
from dataclasses import replace

from .improver import Improver
from .run import problem_rows, say


def search(imp: Improver, i: int, start: str) -> dict:
    """MCTS from policy ``start`` over ``iter-I/problems.jsonl``; returns the phase's record."""
    from ..critics import critic_name

    cfg, it = imp.cfg, imp.run.it(i)
    problems = problem_rows(it / "problems.jsonl")
    guide = imp.guide(i - 1)
    name = critic_name(guide, imp.task) if guide else None
    scfg = cfg.search if guide is not None else replace(cfg.search, value_weight=0.0)
    say(f"iteration {i}: MCTS over {len(problems)} training problems "
        f"({'guided by ' + name if guide else 'rollouts only: no critics yet'})")
    t0 = time.time()
    s, _ = imp.run_eval(start, guide, "mcts", scfg, problems, it / "search.jsonl", cfg.search_batch, cfg.seed + i,
                        {"phase": "search", "iteration": i, "policy": start}, save_trees=True)
    return {"solved": s.accuracy, "tokens_generated": s.tokens_generated, "seconds": round(time.time() - t0, 1),
            "guide": name}
