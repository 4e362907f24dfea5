"""Search over reasoning steps. Every method has the signature
``method(problems, env, config) -> list[SearchResult]`` and builds the same ``Node`` tree."""

from __future__ import annotations

from typing import Callable, NamedTuple

from ..errors import PonderError
from .astar import AStarConfig, astar
from .beam import BeamConfig, DVTSConfig, beam, dvts
from .best_of_n import BestOfNConfig, best_of_n
from .env import SearchEnv, State
from .mcts import MCTSConfig, mcts
from .result import SearchResult
from .sampling import GreedyConfig, SamplingConfig, greedy, sampling, self_consistency
from .tot import ToTBFSConfig, ToTDFSConfig, tot_bfs, tot_dfs
from .tree import Node


class Method(NamedTuple):
    run: Callable
    config: type
    needs_critic: bool = False
    #: reads the task's reward during search (as critic, rollout outcome or "prefer verified" check)
    uses_verifier: bool = False


METHODS: dict[str, Method] = {
    "greedy": Method(greedy, GreedyConfig),
    "sampling": Method(sampling, SamplingConfig),
    "self-consistency": Method(self_consistency, SamplingConfig),
    "best-of-n": Method(best_of_n, BestOfNConfig, needs_critic=True, uses_verifier=True),
    "beam": Method(beam, BeamConfig, needs_critic=True, uses_verifier=True),
    "dvts": Method(dvts, DVTSConfig, needs_critic=True, uses_verifier=True),
    "tot-bfs": Method(tot_bfs, ToTBFSConfig, needs_critic=True, uses_verifier=True),
    "tot-dfs": Method(tot_dfs, ToTDFSConfig, needs_critic=True, uses_verifier=True),
    "astar": Method(astar, AStarConfig, needs_critic=True, uses_verifier=True),
    "mcts": Method(mcts, MCTSConfig, uses_verifier=True),
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise PonderError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "Node", "SearchEnv", "SearchResult", "State", "get_method"]
