"""The critic protocol: score a batch of states, one float per state (higher = better).

A critic that runs a model also says what its last ``score`` call cost, one ``Compute`` per state in
``last_compute`` (tokens read, forward calls, seconds, FLOPs), so searches charge it to the problems
it served like the policy's own calls; ``scored`` reads both. A critic without one costs nothing.
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence, runtime_checkable

from ..compute import Compute
from ..errors import PonderError
from ..tasks import Problem, Task


@runtime_checkable
class Critic(Protocol):
    name: str

    def score(self, problems: Sequence[Problem], steps: Sequence[Sequence[str]]) -> list[float]:
        """One score per (problem, steps so far) state, in one batched call."""
        ...


class Verifier:
    """The task's own verifier as a critic: the outcome reward of a finished trace, 0 otherwise.

    On a task whose verifier needs the gold answer (``not task.checkable``: GSM8K, MATH, arithmetic)
    this critic reads the reference, so it is named "oracle" and what it ranks is an upper bound.
    """

    def __init__(self, task: Task):
        self.task = task
        self.name = "verifier" if task.checkable else "oracle"

    def score(self, problems: Sequence[Problem], steps: Sequence[Sequence[str]]) -> list[float]:
        return [self.task.reward(p, s) for p, s in zip(problems, steps)]


def checked_scores(critic: Critic, problems: Sequence[Problem], steps: Sequence[Sequence[str]]) -> list[float]:
    """Call a critic and check it kept its side of the protocol (one finite float per state)."""
    scores = list(critic.score(problems, steps))
    if len(scores) != len(problems):
        raise PonderError(f"critic {critic.name!r} returned {len(scores)} scores for {len(problems)} states")
    scores = [float(s) for s in scores]
    if not all(math.isfinite(s) for s in scores):
        raise PonderError(f"critic {critic.name!r} returned a non-finite score: {scores}")
    return scores


def scored(critic: Critic, problems: Sequence[Problem], steps: Sequence[Sequence[str]]) -> tuple[list[float], list[Compute]]:
    """``checked_scores`` and what the call cost each state (``critic.last_compute``; nothing for a critic
    that runs no model)."""
    scores = checked_scores(critic, problems, steps)
    cost = getattr(critic, "last_compute", None)
    if cost is None:
        return scores, [Compute()] * len(scores)
    if len(cost) != len(scores):
        raise PonderError(f"critic {critic.name!r} charged {len(cost)} states for {len(scores)} scores")
    return scores, list(cost)


class Mixture:
    """A weighted mean of critics, as AlphaLLM mixes value, PRM and outcome rewards::

        score(s) = sum_i w_i critic_i(s) / sum_i w_i

    Each critic is called once per batch; each keeps its own name in the mixture's ``parts``.
    """

    def __init__(self, critics: Sequence[Critic], weights: Sequence[float]):
        if len(critics) != len(weights) or not critics:
            raise PonderError("a critic mixture needs one weight per critic")
        if any(w <= 0 for w in weights):
            raise PonderError(f"critic weights must be > 0, got {list(weights)}")
        self.critics, self.weights = list(critics), [float(w) for w in weights]
        self.name = "+".join(f"{c.name}@{w:g}" for c, w in zip(self.critics, self.weights))
        self.last_compute: list[Compute] = []  # every part's cost of the last call, summed per state

    def score(self, problems: Sequence[Problem], steps: Sequence[Sequence[str]]) -> list[float]:
        total = sum(self.weights)
        out = [0.0] * len(problems)
        self.last_compute = [Compute()] * len(problems)
        for c, w in zip(self.critics, self.weights):
            scores, cost = scored(c, problems, steps)
            for i, s in enumerate(scores):
                out[i] += w * s / total
            self.last_compute = [a + b for a, b in zip(self.last_compute, cost)]
        return out
