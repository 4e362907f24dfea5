"""What every step-level tree search shares: the options, one tree per problem, and the batched growth.

Beam search, DVTS, Tree-of-Thoughts BFS/DFS and A* differ only in which nodes they pick to expand and
when they stop. ``Forest.grow`` does the rest for all of them: every round, the nodes picked in every
tree of the batch are expanded by ONE ``env.expand`` call and every new node is valued by ONE
scoring call (critic or rollouts), never one call per node or per problem.

A node's rank is (value, mean log-prob per token of its trace), the value being the critic's score
(any critic: value head, PRM, ORM, judge, implicit reward, or the task's verifier, which scores every
unfinished state 0): ties in value go to the trace the policy finds likelier, and ``scorer="rollout"``
values a state by how often fast rollouts from it are verified correct (rollouts from the env's rollout
policy where it has one, else the search policy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

from ..config import check_literals, check_positive, option
from ..errors import PonderError
from ..tasks import Problem
from .env import SearchEnv, State, add_children
from .result import SearchResult
from .tree import Node

Scorer = Literal["critic", "rollout"]


@dataclass
class TreeSearchConfig:
    """Options every tree search shares: how a node is expanded, how a state is valued, the budget."""

    k: int = option(4, "steps proposed per expanded node (identical proposals merge into one child)")
    temperature: float = option(1.0, "sampling temperature of steps and rollouts")
    top_p: float = option(1.0, "nucleus sampling mass (1 = off)")
    scorer: Scorer = option(
        "critic",
        "value of a state: the critic's score, or the mean verifier reward of --rollouts fast rollouts "
        "(use rollout when the critic is the verifier, which scores every unfinished state 0)",
    )
    rollouts: int = option(4, "rollouts per unfinished state with --scorer rollout")
    max_nodes: int = option(256, "most nodes one problem's tree may hold, root included")
    prefer_verified: bool = option(
        True,
        "trust the task's verifier where it can check a trace: answer with a terminal it accepts before "
        "the best-scored one, and (tot-dfs, astar) stop at the first",
    )

    def __post_init__(self):
        check_positive(self, "k", "temperature", "top_p", "rollouts", "max_nodes")
        check_literals(self)


def verified(node: Node) -> bool:
    return node.terminal and node.reward == 1.0


def path_logprob(node: Node) -> tuple[float, int]:
    """(sum of step log-probs, tokens) of the trace from the root to ``node``."""
    path = node.path()
    return sum(n.logprob for n in path), sum(n.tokens for n in path)


def mean_logprob(node: Node) -> float:
    """Per token rather than per step, so a trace is not favoured for writing short steps."""
    total, tokens = path_logprob(node)
    return total / tokens if tokens else 0.0


@dataclass(eq=False)
class Tree:
    """One problem's search tree and its budget. Hashed by identity, so algorithms can key state on it."""

    problem: Problem
    max_nodes: int
    root: Node = field(default_factory=Node)
    size: int = 1
    expanded: int = 0
    info: dict = field(default_factory=dict)  # method-specific counters, copied into the result's info
    spent: bool = False  # the problem has spent the env's budget: the tree grows no more

    @property
    def full(self) -> bool:
        """No room to grow: ``max_nodes`` reached or the compute budget spent."""
        return self.spent or self.size >= self.max_nodes

    def state(self, node: Node) -> State:
        return State(self.problem, tuple(node.steps()))


class Forest:
    """One tree per problem, grown together; the value of a node lives in ``node.scores[self.key]``."""

    def __init__(self, problems: Sequence[Problem], env: SearchEnv, cfg: TreeSearchConfig):
        if cfg.scorer == "critic" and env.critic is None:
            raise PonderError("--scorer critic needs a critic; give one, or use --scorer rollout")
        self.env, self.cfg = env, cfg
        self.trees = [Tree(p, cfg.max_nodes) for p in problems]
        self.key = env.critic.name if cfg.scorer == "critic" else "rollout"

    # --- ranking ----------------------------------------------------------------------------------
    def value(self, node: Node) -> float:
        return node.scores.get(self.key, 0.0)

    def rank(self, node: Node) -> tuple[float, float]:
        return self.value(node), mean_logprob(node)

    def best(self, nodes: Sequence[Node], n: int) -> list[Node]:
        """The ``n`` best nodes, best first; exact ties keep their order (earlier proposals first)."""
        return sorted(nodes, key=self.rank, reverse=True)[:n]

    # --- growth -----------------------------------------------------------------------------------
    def grow(self, picks: Sequence[tuple[Tree, Node]]) -> dict[Node, list[Node]]:
        """Expand every picked node with one expand call and value all new children with one scoring call.

        Returns each expanded node's new children, attached by ``add_children`` (the rule MCTS uses too).
        A pick whose tree has no room left is skipped before expanding (its proposals would be thrown
        away), so no tree grows past ``max_nodes``; and under the env's budget a tree expands only the
        first of its picks that the rest of its budget affords (``SearchEnv.affordable``), and none once
        it affords no more (``info["stopped"] = "budget"``).
        """
        room = {t: t.max_nodes - t.size for t, _ in picks}
        afford = {t: self.env.affordable(t.problem, t.expanded) for t in room}
        for t, a in afford.items():
            if a < 1 and not t.spent:
                t.spent, t.info["stopped"] = True, "budget"
        kept = []
        for t, n in picks:
            if room[t] > 0 and afford[t] >= 1:
                kept.append((t, n))
                room[t] -= self.cfg.k
                afford[t] -= 1
        if not kept:
            return {}
        proposals = self.env.expand([t.state(n) for t, n in kept], self.cfg.k, self.cfg.temperature, self.cfg.top_p)
        new: dict[Node, list[Node]] = {}
        for (tree, node), props in zip(kept, proposals):
            tree.expanded += 1
            new[node] = add_children(self.env, tree.problem, node, props, tree.max_nodes - tree.size)
            tree.size += len(new[node])
        self._value([(t, c) for t, n in kept for c in new[n]])
        return new

    def _value(self, items: list[tuple[Tree, Node]]) -> None:
        if not items:
            return
        if self.cfg.scorer == "critic":
            values = self.env.score([t.state(n) for t, n in items])
        else:
            values = self._rollout_values(items)
        for (_, node), v in zip(items, values):
            node.scores[self.key] = v

    def _rollout_values(self, items: list[tuple[Tree, Node]]) -> list[float]:
        """Mean verifier reward of ``rollouts`` completions of each unfinished state (one rollout call);
        a finished state is worth its own reward. A value estimate that needs no trained critic."""
        unfinished = [(t, n) for t, n in items if not n.terminal]
        states = [t.state(n) for t, n in unfinished]
        cfg = self.cfg
        traces = iter(self.env.rollout(states, cfg.rollouts, cfg.temperature, cfg.top_p, leaf=True) if states else [])
        values = []
        for tree, node in items:
            if node.terminal:
                values.append(node.reward)
            else:
                samples = next(traces)
                values.append(sum(self.env.task.reward(tree.problem, s) for s in samples) / len(samples))
        return values

    # --- answers ----------------------------------------------------------------------------------
    def final(self, tree: Tree) -> Node:
        """The answer node: the best terminal, a verified one first when ``prefer_verified``. A tree cut off
        by its budget before any trace ended answers with its best leaf."""
        pool = [n for n in tree.root if n.terminal] or [n for n in tree.root if not n.children]
        return max(pool, key=lambda n: (self.cfg.prefer_verified and verified(n), *self.rank(n)))

    def results(self, chosen: dict[Tree, Node] | None = None) -> list[SearchResult]:
        """One result per problem: ``chosen[tree]`` where the algorithm stopped at a node, else ``final``."""
        out = []
        for t in self.trees:
            node = (chosen or {}).get(t)
            node = node if node is not None else self.final(t)
            steps = tuple(node.steps())
            info = {"expanded": t.expanded, "score": self.value(node), **t.info}
            if getattr(self.env, "rollout_policy", None) is not None:  # the rollout policy's share of the compute
                info["rollout_compute"] = self.env.rollout_compute(t.problem).to_dict()
            compute = self.env.take_compute(t.problem)
            out.append(SearchResult(t.problem, self.env.task.answer(t.problem, steps), steps, t.root, compute, info))
        return out
