"""The critic protocol: score a batch of states, one float per state (higher = better)."""

from __future__ import annotations

import math
from typing import Protocol, Sequence, runtime_checkable

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

    def score(self, problems: Sequence[Problem], steps: Sequence[Sequence[str]]) -> list[float]:
        total = sum(self.weights)
        out = [0.0] * len(problems)
        for c, w in zip(self.critics, self.weights):
            for i, s in enumerate(checked_scores(c, problems, steps)):
                out[i] += w * s / total
        return out
