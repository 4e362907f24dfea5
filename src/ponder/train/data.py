"""Search trees -> training data: verified traces (SFT), sibling step pairs (step-level DPO), and
per-step targets for the value head, the PRM and the ORM.

Every function reads the one ``Node`` tree that every search method builds, so any method's output
can train the policy and the critics. Records are plain dicts (JSONL-ready) that carry the problem.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Literal, Sequence

from ..search.tree import Node
from ..tasks import Problem, Task

Record = dict[str, Any]


def verified_traces(problem: Problem, tree: Node, task: Task, extra: Iterable[Sequence[str]] = (),
                    limit: int = 4) -> list[Record]:
    """Up to ``limit`` distinct traces the verifier rates 1: the tree's rewarded terminal paths (most
    visited first) and any ``extra`` traces (e.g. a search's answer found by a rollout)."""
    leaves = sorted((n for n in tree if n.terminal and (n.reward or 0) >= 1), key=lambda n: -n.visits)
    seen: set[tuple[str, ...]] = set()
    out = []
    for steps in [tuple(n.steps()) for n in leaves] + [tuple(s) for s in extra]:
        if len(out) >= limit:
            break
        if steps and steps not in seen and task.reward(problem, steps) >= 1:
            seen.add(steps)
            out.append({"problem": problem.to_dict(), "steps": list(steps)})
    return out


def step_pairs(problem: Problem, tree: Node, margin: float, per_node: int = 2) -> list[Record]:
    """Preference pairs of sibling steps under one prefix: chosen = the best-valued child, rejected =
    each sibling whose Q is at least ``margin`` lower (lowest first, up to ``per_node`` per prefix).

    Only evaluated children (visits > 0) take part, so every Q compared is a real estimate.
    """
    out = []
    for node in tree:
        kids = sorted((c for c in node.children if c.visits > 0), key=lambda c: -c.q)
        if len(kids) < 2:
            continue
        best = kids[0]
        losers = [c for c in reversed(kids[1:]) if best.q - c.q >= margin][:per_node]
        for c in losers:
            out.append({
                "problem": problem.to_dict(), "prefix": node.steps(), "chosen": best.step, "rejected": c.step,
                "q_chosen": best.q, "q_rejected": c.q,
            })
    return out


def labelled_paths(tree: Node, label: Callable[[Node], float | None]) -> list[tuple[list[str], list[float | None]]]:
    """Root-to-leaf paths with a label per step, each node labelled on one path only.

    One forward pass over a path gives the critic's output after every step, so a tree's nodes are
    covered by its leaves' paths; a node already labelled on an earlier path gets ``None`` on later
    ones (no double weight), and paths that add no label are dropped.
    """
    done: set[int] = set()
    out = []
    for leaf in tree:
        if leaf.children or leaf.parent is None:
            continue
        path = leaf.path()
        labels: list[float | None] = []
        for n in path:
            y = label(n) if id(n) not in done else None
            if y is not None:
                done.add(id(n))
            labels.append(y)
        if any(y is not None for y in labels):
            out.append(([n.step for n in path], labels))
    return out


LabelSource = Literal["rollout", "q"]


def value_label(n: Node) -> float | None:
    """V target: the node's Q (mean backed-up value) where it was evaluated."""
    return n.q if n.visits > 0 else None


def prm_label(source: LabelSource) -> Callable[[Node], float | None]:
    """PRM target of a step: the share of its rollouts that reached a correct answer (Math-Shepherd's
    soft label; a terminal step's own reward), or with ``source="q"`` the step's MCTS Q-value."""

    def label(n: Node) -> float | None:
        if n.terminal and n.reward is not None:
            return float(n.reward)
        if source == "rollout":
            return n.scores.get("rollout")
        return n.q if n.visits > 0 else None

    return label


def orm_label(n: Node) -> float | None:
    """ORM target: the verifier's reward of a finished trace; nothing for unfinished states."""
    return float(n.reward) if n.terminal and n.reward is not None else None


def critic_records(problem: Problem, tree: Node, label: Callable[[Node], float | None]) -> list[Record]:
    return [{"problem": problem.to_dict(), "steps": s, "labels": y} for s, y in labelled_paths(tree, label)]


def policy_targets(problem: Problem, tree: Node, task: Task, min_visits: int = 2,
                   value: Callable[[Node], float] | None = None) -> list[Record]:
    """One record per expanded state whose children the search visited at least ``min_visits`` times in
    all: what the model wrote for each child's action, its visit count and Q, and the state's own value
    (Q is the mean backed-up value, or ``value(node)`` where given, e.g. a proven value).
    ``expert.searched_states`` turns them into improved-policy targets over every legal action.

    A state is kept only where the verifier met a win below it (a trace rated 1 in the tree, or a rollout
    that reached one): elsewhere the children's Q-values differ by the critic's guesses alone, or not
    at all, and the rescaled target would teach that noise as if it were the search's finding. (On the
    demo's second iteration, guided by critics, 13,100 states passed the old rule, every child's Q
    equal or not; most of them were dead ends, and the top action of the targets at the solvable ones
    kept 24 reachable at 75-78% of them at depths 0 and 1, against 98-100% in the unguided first.)"""
    q_of = value or (lambda n: n.q)
    won = met_a_win(tree)
    out = []
    for node in tree:
        kids = node.children
        if not kids or sum(c.visits for c in kids) < min_visits or node not in won:
            continue
        actions, visits, qs = by_action(task, kids, q_of)
        v = q_of(node)
        if all(abs(q - v) < 1e-9 for q in qs):
            continue
        out.append({
            "problem": problem.to_dict(), "prefix": node.steps(), "actions": actions,
            "visits": visits, "q": [round(q, 6) for q in qs], "value": round(v, 6),
        })
    return out


def by_action(task: Task, kids: Sequence[Node], q_of: Callable[[Node], float]) -> tuple[list[str], list[int], list[float]]:
    """A state's children as the actions the policy target is over: what the model wrote of each child's
    step up to the task's action stop (``4 + 8 =``), with its visits and Q.

    With observations every child is one action. In free text the model writes the consequence too, and
    children that share an action differ only in the arithmetic written after it (``22 - 2 = 20`` and
    ``22 - 2 = 29``): they are one action, its visits summed and its Q their visit-weighted mean (the value
    of writing that action, given how the model then writes its result). Targets over whole free-text steps
    would push down the correct arithmetic of every move the search ranked low (``2 * 22 = 44`` where
    ``2 + 22 = 24`` wins), which unlearned the arithmetic in two iterations (test MCTS 18% -> 2% -> 0%);
    SFT on verified traces teaches the arithmetic. A task without an action stop keeps whole steps."""
    merged: dict[str, list[float]] = {}
    for c in kids:
        key = task.action_of(c.step) if task.action_stop is not None else c.step
        m = merged.setdefault(key, [0, 0.0, 0.0, 0])  # visits, visit-weighted Q sum, Q sum, children
        m[0] += c.visits
        m[1] += c.visits * q_of(c)
        m[2] += q_of(c)
        m[3] += 1
    return (list(merged), [int(m[0]) for m in merged.values()],
            [m[1] / m[0] if m[0] else m[2] / m[3] for m in merged.values()])


def met_a_win(tree: Node) -> set[Node]:
    """The nodes with a win below them (themselves included) that the verifier rated: a terminal node
    rewarded 1, or a node one of whose rollouts reached a correct answer."""
    out: set[Node] = set()

    def visit(n: Node) -> bool:
        below = [visit(c) for c in n.children]  # every child visited, so the whole tree is marked
        here = (n.terminal and (n.reward or 0) >= 1) or (n.scores.get("rollout") or 0) > 0 or any(below)
        if here:
            out.add(n)
        return here

    visit(tree)
    return out


def proven_values(problem: Problem, tree: Node, task: Task) -> dict[Node, float]:
    """States the search settled by the task's verifier alone (never a solver): 1 for a state a verified
    trace passes through (it is won); 0 for a finished trace the verifier rejects, and for a state whose
    every legal action the search tried, each leading to a lost state (where the task lists actions)."""
    out: dict[Node, float] = {}

    def visit(n: Node) -> float | None:
        kids = [visit(c) for c in n.children]
        if n.terminal and n.reward is not None:
            v = 1.0 if n.reward >= 1 else 0.0
        elif any(k == 1.0 for k in kids):
            v = 1.0
        elif n.children and all(k == 0.0 for k in kids) and not task.free_text:
            legal = task.legal_actions(problem, n.steps())
            v = 0.0 if legal is not None and len(n.children) >= len(legal) else None
        else:
            v = None
        if v is not None:
            out[n] = v
        return v

    visit(tree)
    return out


def value_label_with_proofs(problem: Problem, tree: Node, task: Task) -> Callable[[Node], float | None]:
    """V target: the state's proven value where the search settled it (``proven_values``), else its Q."""
    proven = proven_values(problem, tree, task)
    return lambda n: proven.get(n, value_label(n))
