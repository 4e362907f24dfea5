"""A*-style best-first search over steps: the "Q*" of Wang et al. 2024 (deliberative planning with a
learned Q-value as the heuristic).

Each problem keeps a priority queue of partial traces ordered by f = g + h (higher first):
g = ``g_weight`` * the accumulated path utility (the sum of the step log-probs, or 0), and
h = ``h_weight`` * the critic's (or rollouts') estimate of the best value reachable from the state.
Each round pops the ``pop_per_round`` best nodes of every problem and expands them all with one
batched expand and one batched score. A problem stops when it pops a verified terminal (with
``prefer_verified``; an unverified terminal is a dead end and is skipped) or, without it, the first
terminal at all: classic A*, which is optimal when h never underestimates what a state can still
reach, since log-probs only lower g. Otherwise it stops at ``max_expansions`` or ``max_nodes`` and
answers with its best terminal.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Literal, Sequence

from ..config import check_positive, option
from ..errors import PonderError
from ..tasks import Problem
from .env import SearchEnv
from .frontier import Forest, Tree, TreeSearchConfig, mean_logprob, path_logprob, verified
from .result import SearchResult
from .tree import Node


@dataclass
class AStarConfig(TreeSearchConfig):
    """Best-first search on f = g + h."""

    g: Literal["logprob", "zero"] = option(
        "logprob", "path utility g: the sum of the step log-probs, or 0 (greedy best-first on h alone)"
    )
    g_weight: float = option(0.1, "scale of g (log-probs are in nats, h is usually in [0, 1])")
    h_weight: float = option(1.0, "scale of the heuristic h (the state's value)")
    pop_per_round: int = option(1, "nodes popped and expanded per problem each round")
    max_expansions: int = option(32, "most nodes expanded per problem")

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "h_weight", "pop_per_round", "max_expansions")
        if self.g_weight < 0:
            raise PonderError(f"--g-weight must be >= 0, got {self.g_weight}")


def astar(problems: Sequence[Problem], env: SearchEnv, cfg: AStarConfig) -> list[SearchResult]:
    """Ties in f go to the likelier trace (mean log-prob per token), then to the earlier push."""
    forest = Forest(problems, env, cfg)
    queues: dict[Tree, list] = {t: [] for t in forest.trees}
    goal: dict[Tree, Node] = {}
    order = itertools.count()

    def f(node: Node) -> float:
        g = cfg.g_weight * path_logprob(node)[0] if cfg.g == "logprob" else 0.0
        return g + cfg.h_weight * forest.value(node)

    def push(t: Tree, node: Node) -> None:
        heapq.heappush(queues[t], (-f(node), -mean_logprob(node), next(order), node))

    for t in forest.trees:
        push(t, t.root)

    def pop(t: Tree) -> list[Node]:
        """Up to ``pop_per_round`` unfinished nodes to expand; none once the problem has its goal."""
        out: list[Node] = []
        while queues[t] and len(out) < min(cfg.pop_per_round, cfg.max_expansions - t.expanded):
            node = heapq.heappop(queues[t])[-1]
            if not node.terminal:
                out.append(node)
            elif verified(node) or not cfg.prefer_verified:
                goal[t] = node
                return []
        return out

    while picks := [(t, n) for t in forest.trees if t not in goal and not t.full for n in pop(t)]:
        kids = forest.grow(picks)
        for t, node in picks:
            for child in kids.get(node, []):
                push(t, child)
    return forest.results(goal)
