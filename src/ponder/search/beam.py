"""Step-level beam search and diverse verifier tree search (DVTS), one loop for both.

Beam search keeps the ``beam_width`` best unfinished traces per problem and expands each into ``k``
steps, until no unfinished trace is left (every trace ends by the task's ``max_steps`` at the latest).
A finished trace leaves the beam but stays in the tree, where it competes for the answer.

DVTS (Beeching et al. 2024, huggingface/search-and-learn) spends the same budget on ``subtrees``
independent beams of width ``beam_width / subtrees``, each grown from a different first step, so one
over-rated first step cannot take the whole beam: the diversity that pays off at large budgets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..config import check_positive, option
from ..errors import PonderError
from ..tasks import Problem
from .env import SearchEnv
from .frontier import Forest, Tree, TreeSearchConfig
from .result import SearchResult
from .tree import Node


@dataclass
class BeamConfig(TreeSearchConfig):
    """Step-level beam search, ranked by the critic (or rollouts)."""

    beam_width: int = option(4, "unfinished traces kept per problem after each step")

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "beam_width")


@dataclass
class DVTSConfig(BeamConfig):
    """Diverse verifier tree search: ``subtrees`` independent beams, each from its own first step."""

    subtrees: int = option(2, "independent subtrees, each a beam of width beam_width / subtrees")

    def __post_init__(self):
        super().__post_init__()
        check_positive(self, "subtrees")
        if self.beam_width % self.subtrees:
            raise PonderError(f"--beam-width ({self.beam_width}) must be a multiple of --subtrees ({self.subtrees})")
        if self.subtrees > self.k:
            raise PonderError(f"--subtrees ({self.subtrees}) must be <= --k ({self.k}): the root's k steps seed them")


def beam_loop(
    problems: Sequence[Problem], env: SearchEnv, cfg: TreeSearchConfig, width: int, subtrees: int = 1
) -> list[SearchResult]:
    """Grow each problem's beams (groups of unfinished nodes) until none is left.

    Every round expands every node of every beam of every problem in one ``Forest.grow``, then keeps
    each beam's ``width`` best unfinished children. With ``subtrees > 1`` the first round instead makes
    each of the root's ``subtrees`` best children a beam of its own (DVTS).
    """
    forest = Forest(problems, env, cfg)
    beams: dict[Tree, list[list[Node]]] = {t: [[t.root]] for t in forest.trees}
    split = subtrees > 1
    while picks := [(t, n) for t, groups in beams.items() for g in groups for n in g]:
        kids = forest.grow(picks)
        for t, groups in beams.items():
            nxt = []
            for g in groups:
                open_kids = [c for n in g for c in kids.get(n, []) if not c.terminal]
                nxt += [[c] for c in forest.best(open_kids, subtrees)] if split else [forest.best(open_kids, width)]
            beams[t] = [g for g in nxt if g]
        split = False
    return forest.results()


def beam(problems: Sequence[Problem], env: SearchEnv, cfg: BeamConfig) -> list[SearchResult]:
    return beam_loop(problems, env, cfg, cfg.beam_width)


def dvts(problems: Sequence[Problem], env: SearchEnv, cfg: DVTSConfig) -> list[SearchResult]:
    return beam_loop(problems, env, cfg, cfg.beam_width // cfg.subtrees, cfg.subtrees)
