"""What a search algorithm is given: callables over batches of states, never a model.

``SearchEnv`` wraps a policy, a task and a critic into three batched calls (propose k next steps,
roll out k whole completions, score states) and charges every call's compute to the problems it
served, so each result carries its own cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..compute import Compute
from ..critics import Critic, checked_scores
from ..models import Policy, SamplingParams, Step
from ..tasks import Problem, Task


@dataclass(frozen=True)
class State:
    """A problem and the steps written so far."""

    problem: Problem
    steps: tuple[str, ...] = ()


class SearchEnv:
    def __init__(self, policy: Policy, task: Task, critic: Critic | None = None):
        self.policy, self.task, self.critic = policy, task, critic
        self._prompts: dict[str, str] = {}
        self.spent: dict[str, Compute] = {}
        # the task's verdicts on traces already checked, per problem (dropped with the problem's compute):
        # a search asks about the same trace several times (terminal? reward? a rollout's prefixes), and
        # a check can be costly (Game of 24 replays every step in exact arithmetic, GSM8K parses answers)
        self._verdicts: dict[Problem, dict[tuple[str, tuple[str, ...]], object]] = {}

    # --- bookkeeping ------------------------------------------------------------------------------
    def prompt(self, problem: Problem) -> str:
        if problem.id not in self._prompts:
            self._prompts[problem.id] = self.policy.render(self.task, problem)
        return self._prompts[problem.id]

    def prefix(self, state: State) -> str:
        return self.prompt(state.problem) + "".join(state.steps)

    def charge(self, states: Sequence[State], costs: Sequence[Compute]) -> None:
        for s, c in zip(states, costs):
            self.spent[s.problem.id] = self.spent.get(s.problem.id, Compute()) + c

    def take_compute(self, problem: Problem) -> Compute:
        self._verdicts.pop(problem, None)
        return self.spent.pop(problem.id, Compute())

    # --- the task's verdicts, remembered (tasks are pure functions of problem and steps) -----------
    def is_terminal(self, problem: Problem, steps: Sequence[str]) -> bool:
        return self._verdict("terminal", problem, steps)

    def reward(self, problem: Problem, steps: Sequence[str]) -> float:
        return self._verdict("reward", problem, steps)

    def _verdict(self, what: str, problem: Problem, steps: Sequence[str]):
        memo = self._verdicts.setdefault(problem, {})
        key = (what, tuple(steps))
        if key not in memo:
            fn = self.task.is_terminal if what == "terminal" else self.task.reward
            memo[key] = fn(problem, key[1])
        return memo[key]

    # --- the callables search uses ----------------------------------------------------------------
    def propose(self, states: Sequence[State], k: int, temperature: float = 1.0, top_p: float = 1.0) -> list[list[Step]]:
        """k candidate next steps for each state (one batched sampler call)."""
        params = SamplingParams(temperature, top_p, self.task.max_step_tokens, self.task.step_stop)
        out = self.policy.sample([self.prefix(s) for s in states], k, params)
        self.charge(states, out.compute)
        return out.steps

    def rollout(self, states: Sequence[State], k: int, temperature: float = 1.0, top_p: float = 1.0) -> list[list[tuple[str, ...]]]:
        """k whole continuations of each state to the end of the trace, cut into steps (one sampler call).

        Steps after the trace became terminal (e.g. an illegal step, or text past the answer) are dropped.
        """
        budget = self.task.max_step_tokens * max(1, self.task.max_steps - min(len(s.steps) for s in states))
        params = SamplingParams(temperature, top_p, budget, stop=())
        out = self.policy.sample([self.prefix(s) for s in states], k, params)
        self.charge(states, out.compute)
        return [[self.finish(s, self.task.split_steps(x.text)) for x in samples] for s, samples in zip(states, out.steps)]

    def finish(self, state: State, new_steps: Sequence[str]) -> tuple[str, ...]:
        """``state``'s steps plus ``new_steps`` up to the first terminal state."""
        steps = list(state.steps)
        for step in new_steps:
            if self.is_terminal(state.problem, steps):
                break
            steps.append(step)
        return tuple(steps)

    def score(self, states: Sequence[State]) -> list[float]:
        """The critic's score of each state (one batched critic call)."""
        if self.critic is None:
            raise ValueError("this search needs a critic")
        return checked_scores(self.critic, [s.problem for s in states], [list(s.steps) for s in states])
