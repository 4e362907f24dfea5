"""Credit localization: on failed traces, does a critic blame the step that went wrong?

Where the task can tell a trace's first bad step exactly (``Task.first_bad_step``: in Game of 24 the
first step after which 24 is unreachable, by brute force; in ``arithmetic`` the first step off the
worked solution), each critic blames one step of every failed trace, the one it rates lowest, and
scores a hit when that is the first bad step. Critics rate steps in different ways:

- the implicit reward of a DPO policy gives each step its own reward (the sum over its tokens), and
  the blamed step is the lowest;
- a value head or PRM gives the value of the state *after* each step, so a step's own contribution is
  the change it makes, v(after) - v(before) (``drop``), and the blamed step is the largest fall; the
  lowest value itself (``level``) is reported too, though it tends to blame a later step, since
  every state after the first bad one is lost as well;
- two baselines that need no model: a uniformly random step (hit rate exactly the mean of
  1 / steps) and always the first step (the share of traces that go wrong at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..tasks import Problem, Task

#: per-step ratings of each trace (higher = better); the blamed step is the lowest (the earliest on ties)
Rater = Callable[[Sequence[Problem], Sequence[Sequence[str]]], list[list[float]]]


@dataclass(frozen=True)
class Hits:
    name: str
    hits: float  # expected hits for the random baseline
    traces: int

    @property
    def rate(self) -> float:
        return self.hits / max(1, self.traces)


def implicit_rater(reward) -> Rater:
    """Each step's implicit reward (``ImplicitReward.step_rewards``)."""
    return reward.step_rewards


def value_rater(critic, how: str = "drop") -> Rater:
    """A ``ScalarCritic``'s per-step outputs: the change each step makes (``drop``) or the value after it
    (``level``). The state before the first step is the prompt alone."""
    if how not in ("drop", "level"):
        raise ValueError(f"how must be drop or level, got {how!r}")

    @torch.no_grad()
    def rate(problems: Sequence[Problem], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        after = [z.tolist() for z in critic.step_probs(problems, steps)]
        if how == "level":
            return after
        start = [float(z[0]) for z in critic.step_probs(problems, [[] for _ in problems])]
        return [[v - u for u, v in zip([s0, *vs[:-1]], vs)] for s0, vs in zip(start, after)]

    return rate


def failed_with_first_bad(task: Task, problems: Sequence[Problem], traces: Sequence[Sequence[str]], min_steps: int = 2):
    """(problem, trace, first bad step) for each failed trace of at least ``min_steps`` steps whose first
    bad step the task can tell (a one-step trace has nothing to localize: every rater hits)."""
    out = []
    for p, t in zip(problems, traces):
        if len(t) >= max(1, min_steps) and task.reward(p, t) == 0:
            bad = task.first_bad_step(p, t)
            if bad is not None and bad < len(t):
                out.append((p, list(t), bad))
    return out


def localize(cases: Sequence[tuple[Problem, Sequence[str], int]], raters: dict[str, Rater]) -> list[Hits]:
    """Hit counts of each rater and of the two baselines on ``cases`` (from ``failed_with_first_bad``)."""
    problems, traces, bad = [c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases]
    out = [Hits("random step", sum(1 / len(t) for t in traces), len(cases)),
           Hits("always the first step", sum(b == 0 for b in bad), len(cases))]
    for name, rate in raters.items():
        ratings = rate(problems, traces) if cases else []
        blamed = [min(range(len(r)), key=r.__getitem__) for r in ratings]
        out.append(Hits(name, sum(x == b for x, b in zip(blamed, bad)), len(cases)))
    return out
