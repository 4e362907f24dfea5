"""Tree of Thoughts (Yao et al. 2023): breadth-first and depth-first search over steps.

BFS keeps the ``breadth`` best states per depth and proposes ``k`` steps from each: the same loop as
step-level beam search (beam.py), under ToT's names; the paper's value prompt is the critic here.

DFS expands the most promising child first, prunes children valued below ``threshold`` and backtracks
when a branch runs dry, stopping at the first verified solution or after ``max_expansions``. It is
sequential within a problem but batched across problems: each round expands every problem's current
node in one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..config import check_positive, option
from ..tasks import Problem
from .beam import beam_loop
from .env import SearchEnv
from .frontier import Forest, Tree, TreeSearchConfig, verified
from .result import SearchResult
from .tree import Node


@dataclass
class ToTBFSConfig(TreeSearchConfig):
    """Tree-of-Thoughts breadth-first search."""

    breadth: int = option(5, "b: states kept per depth")

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "breadth")


@dataclass
class ToTDFSConfig(TreeSearchConfig):
    """Tree-of-Thoughts depth-first search with value pruning."""

    threshold: float = option(0.0, "prune a child whose value is below this")
    max_expansions: int = option(32, "most nodes expanded per problem")

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "max_expansions")


def tot_bfs(problems: Sequence[Problem], env: SearchEnv, cfg: ToTBFSConfig) -> list[SearchResult]:
    return beam_loop(problems, env, cfg, cfg.breadth)


def tot_dfs(problems: Sequence[Problem], env: SearchEnv, cfg: ToTDFSConfig) -> list[SearchResult]:
    """``info["pruned"]`` counts the children cut by the threshold."""
    forest = Forest(problems, env, cfg)
    stacks: dict[Tree, list[Node]] = {t: [t.root] for t in forest.trees}
    found: dict[Tree, Node] = {}
    for t in forest.trees:
        t.info["pruned"] = 0

    def live(t: Tree) -> bool:
        return t not in found and bool(stacks[t]) and not t.full and t.expanded < cfg.max_expansions

    while picks := [(t, stacks[t].pop()) for t in forest.trees if live(t)]:
        kids = forest.grow(picks)
        for t, node in picks:
            children = kids.get(node, [])
            solved = [c for c in children if verified(c)]
            if cfg.prefer_verified and solved:
                found[t] = forest.best(solved, 1)[0]
                continue
            open_kids = [c for c in children if not c.terminal]
            keep = [c for c in open_kids if forest.value(c) >= cfg.threshold]
            t.info["pruned"] += len(open_kids) - len(keep)
            stacks[t] += forest.best(keep, len(keep))[::-1]  # the best child on top of the stack
    return forest.results(found)
