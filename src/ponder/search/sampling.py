"""Chain-of-thought baselines: greedy decoding, sampling, and self-consistency (majority vote).

Each samples whole traces in one batched call for all problems (the prefix of each problem is read
once and shared by its n samples), then builds the traces into one tree per problem.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

from ..config import check_positive, option
from ..errors import PonderError
from ..tasks import Problem
from .env import SearchEnv, State
from .result import SearchResult
from .tree import Node


@dataclass
class GreedyConfig:
    """Greedy chain of thought: one trace, argmax at every token."""


@dataclass
class SamplingConfig:
    """n sampled traces per problem."""

    n: int = option(8, "traces sampled per problem")
    temperature: float = option(1.0, "sampling temperature")
    top_p: float = option(1.0, "nucleus sampling mass (1 = off)")

    def __post_init__(self):
        check_positive(self, "n", "temperature", "top_p")


def sample_traces(problems: Sequence[Problem], env: SearchEnv, n: int, temperature: float, top_p: float = 1.0,
                  on_round: Callable[[list[tuple[int, tuple[str, ...]]]], None] | None = None):
    """n whole traces per problem, each built into the problem's tree with its verifier reward. A state's
    ``visits`` count the samples through it and its ``q`` is their mean reward, so that training data read a
    sampled tree as they read a searched one (a state's value, sibling steps' Q).

    Returns, per problem, the tree and a list of (leaf node, steps, answer). Under an env budget, at
    most n traces, drawn in rounds (``budgeted_traces``) until each problem has spent its budget.
    ``on_round`` is given each round's new traces as (problem index, steps), in draw order, before the
    budget is checked again: what it spends (a critic reading them) counts within the budget.
    """
    states = [State(p) for p in problems]
    if env.budget is None:
        traces = env.rollout(states, n, temperature, top_p)
        if on_round is not None:
            on_round([(i, t) for i, ts in enumerate(traces) for t in ts])
    else:
        traces = budgeted_traces(states, env, n, temperature, top_p, on_round)
    out = []
    for p, samples in zip(problems, traces):
        root = Node()
        leaves = []
        for steps in samples:
            leaf = root.add_path(steps)
            leaf.terminal = env.task.is_terminal(p, steps)
            leaf.reward = env.task.reward(p, steps) if leaf.terminal else 0.0
            for node in [root, *leaf.path()]:
                node.visits += 1  # how many samples went through this state
                node.value_sum += leaf.reward  # so q = the mean reward of those samples (a Monte-Carlo value)
            leaves.append((leaf, steps, env.task.answer(p, steps)))
        out.append((root, leaves))
    return out


def budgeted_traces(states: Sequence[State], env: SearchEnv, n: int, temperature: float, top_p: float,
                    on_round=None) -> list[list[tuple[str, ...]]]:
    """Whole traces of each state, drawn in rounds until its problem's budget affords no more or it has n:
    one trace each first, then each round as many as the rest of its budget buys at its mean cost per
    trace so far (``SearchEnv.affordable``; all n left where its traces cost nothing, every state's
    scores being remembered). Problems drawing the same number share one rollout call, so a round is a
    few batched calls."""
    traces: list[list[tuple[str, ...]]] = [[] for _ in states]
    want = {i: 1 for i in range(len(states))}
    while want:
        groups: dict[int, list[int]] = {}
        for i, m in want.items():
            groups.setdefault(m, []).append(i)
        new: list[tuple[int, tuple[str, ...]]] = []
        for m, idx in groups.items():
            for i, samples in zip(idx, env.rollout([states[i] for i in idx], m, temperature, top_p)):
                traces[i] += samples
                new += [(i, t) for t in samples]
        if on_round is not None:
            on_round(new)
        want = {}
        for i, s in enumerate(states):
            m = min(n - len(traces[i]), env.affordable(s.problem, len(traces[i])))
            if m >= 1:
                want[i] = int(m)
    return traces


def make_result(env: SearchEnv, problem: Problem, root: Node, steps, answer, **info) -> SearchResult:
    return SearchResult(problem, answer, tuple(steps), root, env.take_compute(problem), info)


def greedy(problems: Sequence[Problem], env: SearchEnv, cfg: GreedyConfig | None = None) -> list[SearchResult]:
    out = []
    for p, (root, leaves) in zip(problems, sample_traces(problems, env, 1, 0.0)):
        _, steps, answer = leaves[0]
        out.append(make_result(env, p, root, steps, answer))
    return out


def sampling(problems: Sequence[Problem], env: SearchEnv, cfg: SamplingConfig) -> list[SearchResult]:
    """The first of n samples is the answer; ``info`` has the share of correct samples and pass@n."""
    out = []
    for p, (root, leaves) in zip(problems, sample_traces(problems, env, cfg.n, cfg.temperature, cfg.top_p)):
        rewards = [leaf.reward for leaf, _, _ in leaves]
        _, steps, answer = leaves[0]
        out.append(make_result(env, p, root, steps, answer, mean_reward=sum(rewards) / len(rewards), pass_at_n=max(rewards)))
    return out


def self_consistency(problems: Sequence[Problem], env: SearchEnv, cfg: SamplingConfig) -> list[SearchResult]:
    """Majority vote over the extracted answers of n samples (Wang et al. 2023); ties go to the earliest."""
    if not env.task.votable:
        raise PonderError(f"self-consistency needs answers that can be voted on; task {env.task.name!r} has none (use best-of-n)")
    out = []
    for p, (root, leaves) in zip(problems, sample_traces(problems, env, cfg.n, cfg.temperature, cfg.top_p)):
        votes = Counter(a for _, _, a in leaves if a is not None)
        if votes:
            answer = votes.most_common(1)[0][0]
            _, steps, _ = next(x for x in leaves if x[2] == answer)
        else:
            answer, (_, steps, _) = None, leaves[0]
        out.append(make_result(env, p, root, steps, answer, votes=dict(votes)))
    return out
