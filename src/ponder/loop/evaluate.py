"""Phase 5, **evaluate** on the test split: each of ``eval_methods`` (greedy, best-of-N, MCTS, ...) at a
fixed token budget, with the iteration's policy and critics. Rows go to ``iter-I/eval-METHOD.jsonl`` as
each batch finishes."""

from dataclasses import replace

from .improver import Improver
from .run import say


def evaluate(imp: Improver, i: int) -> dict:
    """Iteration i's policy on the test problems by every evaluation method; returns the phase's record."""
    from ..critics import critic_name

    cfg, it = imp.cfg, imp.run.it(i)
    test = imp.task.problems("test")[: cfg.eval_limit]
    results = {}
    for method in cfg.eval_methods:
        mcfg, critic = eval_setup(imp, method, i)
        if mcfg is None:
            continue
        say(f"iteration {i}: evaluate {method} on {len(test)} test problems")
        name = critic_name(critic, imp.task) if critic else None
        settings = {"phase": "eval", "iteration": i, "policy": imp.policy_path(i), "critic": name}
        rollout = imp.rollout_spec(i) if method == "mcts" and mcfg.rollouts else None  # with distill: iteration i's
        settings["rollout"] = rollout  # None reads as absent, so older run files still resume
        s, _ = imp.run_eval(imp.policy_path(i), critic, method, mcfg, test, it / f"eval-{method}.jsonl",
                            cfg.eval_batch, cfg.seed, settings, rollout=rollout)
        results[method] = {"accuracy": s.accuracy, "tokens_generated": s.tokens_generated,
                           "tokens_read": s.tokens_read, "seconds": round(s.seconds, 1), "problems": s.problems,
                           "critic": name, **({"rollout": rollout} if rollout else {})}
    return results


def eval_setup(imp: Improver, method: str, i: int):
    """(config, critic spec) of an evaluation method at iteration i; (None, None) to skip it."""
    from ..search import get_method

    cfg = imp.cfg
    if method == "greedy":
        return get_method("greedy").config(), None
    if method == "self-consistency":
        return get_method("self-consistency").config(n=cfg.eval_n), None
    if method == "best-of-n":
        if imp.task.checkable:
            return get_method("best-of-n").config(n=cfg.eval_n), "verifier"
        orm = imp.critic_dir(i, "orm")
        if orm is None:
            return None, None  # nothing honest to rank by yet
        return get_method("best-of-n").config(n=cfg.eval_n), f"orm:{orm}"
    guide = imp.guide(i)
    mcfg = cfg.eval_mcts
    if not imp.task.checkable:  # no reading the gold answer at test time: critics only
        if guide is None:
            return None, None
        mcfg = replace(mcfg, rollouts=0, value_weight=1.0, prefer_verified=False)
    elif guide is None:
        mcfg = replace(mcfg, value_weight=0.0)
    return mcfg, guide
