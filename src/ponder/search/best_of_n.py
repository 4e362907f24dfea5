"""Best-of-N: sample n whole traces per problem and keep the one the critic scores highest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..config import option
from ..tasks import Problem
from .env import SearchEnv, State
from .result import SearchResult
from .sampling import SamplingConfig, make_result, sample_traces


@dataclass
class BestOfNConfig(SamplingConfig):
    """n sampled traces per problem, ranked by a critic."""

    n: int = option(16, "traces sampled per problem")


def best_of_n(problems: Sequence[Problem], env: SearchEnv, cfg: BestOfNConfig) -> list[SearchResult]:
    """All traces of all problems are scored in one critic call; ties go to the earliest sample."""
    sampled = sample_traces(problems, env, cfg.n, cfg.temperature, cfg.top_p)
    flat = [(i, leaf, steps, answer) for i, (_, leaves) in enumerate(sampled) for leaf, steps, answer in leaves]
    scores = env.score([State(problems[i], tuple(steps)) for i, _, steps, _ in flat])
    best: dict[int, tuple[float, tuple]] = {}
    for (i, leaf, steps, answer), s in zip(flat, scores):
        leaf.scores[env.critic.name] = s
        if i not in best or s > best[i][0]:
            best[i] = (s, (steps, answer))
    out = []
    for i, (p, (root, leaves)) in enumerate(zip(problems, sampled)):
        score, (steps, answer) = best[i]
        out.append(make_result(env, p, root, steps, answer, best_score=score, pass_at_n=max(l.reward for l, _, _ in leaves)))
    return out
