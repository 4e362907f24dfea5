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
    """The traces are scored in one critic call (one per round under an env budget, so the critic's reading
    counts within it); ties go to the earliest sample."""
    scores: list[list[float]] = [[] for _ in problems]

    def score(new: list[tuple[int, tuple[str, ...]]]) -> None:
        for (i, _), s in zip(new, env.score([State(problems[i], steps) for i, steps in new])):
            scores[i].append(s)

    sampled = sample_traces(problems, env, cfg.n, cfg.temperature, cfg.top_p, on_round=score)
    out = []
    for p, (root, leaves), ss in zip(problems, sampled, scores):
        for (leaf, _, _), s in zip(leaves, ss):
            leaf.scores[env.critic.name] = s
        j = max(range(len(ss)), key=lambda j: (ss[j], -j))
        _, steps, answer = leaves[j]
        out.append(make_result(env, p, root, steps, answer, best_score=ss[j], pass_at_n=max(l.reward for l, _, _ in leaves)))
    return out
