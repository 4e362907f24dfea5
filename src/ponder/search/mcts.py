"""Option-level Monte-Carlo tree search (AlphaLLM, Tian et al. 2024), batched across problems.

An action is a whole reasoning step (an *option*), never a token. Each round runs one simulation in
every still-running tree of the batch, and each phase makes at most one model call for all of them:

1. **select** (no model call): from the root, follow the child with the highest PUCT score
   (AlphaZero's rule, as in AlphaLLM)::

       score(s, a) = Q(s, a) + c_puct * P(s, a) * sqrt(N(s)) / (1 + N(s, a))
       P(s, a)     = softmax over the siblings a' of  log pi(a' | s)  [/ max(1, |a'|) for sampled steps]

   (length-normalised where steps are sampled, so a long step is not penalised just for having more
   tokens; the exact action probabilities renormalised where actions are listed) down to an
   unexpanded node, a terminal node, or a node to widen;
2. **expand** (one ``env.expand`` call): k distinct next steps per leaf, drawn by Gumbel-top-k from
   the exact priors over every legal action where the task lists them, else sampled; siblings that are
   the same step after normalising the text are merged, since they lead to the same state;
3. **evaluate** (one ``rollout`` call, one critic call): a new non-terminal child s' gets AlphaLLM's
   mix of a value estimate and fast-rollout outcomes (from the env's rollout policy where it has one,
   a smaller model, else the search policy)::

       v(s') = lambda * critic(s') + (1 - lambda) * mean_i R(rollout_i(s'))

   and a terminal child gets the verifier's reward R;
4. **back up**: the mean value of the new children (or a terminal leaf's reward) along the path,
   N += 1 and W += v, so Q = W / N is the mean value of the simulations through a node.

**Adaptive branching**: a node whose children's values disagree (population std of their Q above
``widen_std``) is expanded again by k more samples, up to ``k_max`` children: disagreement is where
more alternatives pay off, while a node whose children all look alike keeps k.
"""

# No ``from __future__ import annotations``, like the other search config modules: config tooling may
# resolve field types at run time and needs real ``Literal`` objects.
import math
import statistics
import zlib
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

from ..config import check_literals, check_positive, option
from ..errors import PonderError
from ..tasks import Problem
from .env import SearchEnv, State, add_children
from .result import SearchResult
from .tree import Node

#: a child's selection score from (child, parent's visits, c_puct): ``puct`` or a variant such as UCT
ScoreFn = Callable[[Node, int, float], float]


@dataclass
class MCTSConfig:
    """Option-level MCTS with PUCT priors from the policy and leaf values from critic + rollouts."""

    simulations: int = option(32, "simulations (select, expand, evaluate, back up) per problem")
    token_budget: int | None = option(None, "stop a problem once its search has generated this many tokens (None = no limit)")
    k: int = option(4, "steps sampled per expansion")
    k_max: int = option(8, "most children of a node with adaptive branching (k_max = k turns widening off)")
    widen_std: float = option(0.25, "widen a node by k more samples when the std of its children's Q exceeds this")
    c_puct: float = option(1.0, "weight of the prior (exploration) term of PUCT")
    temperature: float = option(1.0, "sampling temperature of proposals and rollouts")
    value_weight: float = option(
        0.5, "lambda: leaf value = lambda * critic + (1 - lambda) * rollout outcome (no critic: 0)"
    )
    rollouts: int = option(
        1, "fast rollouts per new leaf, scored by the task's verifier (0 = critic only, needs value_weight 1)"
    )
    fast_rollouts: bool = option(
        False, "where the task lists actions, leaf rollouts sample each action (the model writes a few tokens; an "
        "illegal one ends the rollout with reward 0) instead of drawing it from the exact priors over every legal "
        "action; measured on Game of 24 (100 test puzzles, 32 simulations): 47% in 65 s sampled, 51% in 40 s exact, "
        "since the exact priors of a rollout's states are reused when the tree expands them")
    skip_finished: bool = option(
        False, "never re-select a finished (terminal) node or a subtree with nothing left to expand; "
        "simulations then go to open states only (off: plain PUCT, which re-selects them)"
    )
    merge: bool = option(True, "merge sibling steps equal up to case and whitespace (exact duplicates always merge)")
    max_nodes: int = option(256, "most nodes per tree, root included; a problem's search stops when its tree is full")
    final: Literal["visits", "value"] = option("visits", "answer path: follow the most-visited or the highest-Q child")
    prefer_verified: bool = option(
        True,
        "answer with a trace the verifier rated correct (reward 1) if the search met one, in the tree or a rollout, "
        "as ToT does for Game of 24 where checking is part of the puzzle; on tasks checked against a reference "
        "answer this reads the gold answer, so keep it for making training data, not for evaluation",
    )
    parallel: int = option(
        1, "simulations per tree per round, kept apart by a virtual loss; more fill the sampler's batches "
        "(faster per token), 1 = strictly one after another"
    )
    seed: int | None = option(
        None, "reseed the policy (if it can) from this and the batch's problem ids; None leaves its RNG alone"
    )

    def __post_init__(self):
        check_positive(self, "simulations", "k", "k_max", "widen_std", "c_puct", "temperature", "max_nodes", "parallel")
        if self.token_budget is not None:
            check_positive(self, "token_budget")
        check_literals(self)
        if self.k_max < self.k:
            raise PonderError(f"--k-max must be >= --k ({self.k}), got {self.k_max}")
        if not 0 <= self.value_weight <= 1:
            raise PonderError(f"--value-weight must be in [0, 1], got {self.value_weight}")
        if self.rollouts < 0 or (self.rollouts == 0 and self.value_weight < 1):
            raise PonderError(f"--rollouts must be > 0, or 0 with --value-weight 1 (critic only); got {self.rollouts}")


@dataclass(eq=False)
class _Search:
    """One problem's tree and what the search remembers about it beyond the tree."""

    problem: Problem
    tokens0: int  # tokens this problem had generated before the search (the env may hold earlier work)
    root: Node = field(default_factory=Node)
    size: int = 1
    sims: int = 0
    stopped: str = ""
    saturated: set[Node] = field(default_factory=set)  # widened without finding a new step: do not retry
    finished: set[Node] = field(default_factory=set)  # skip_finished: every child finished, nothing to widen
    best_rollout: dict[Node, tuple[float, tuple[str, ...]]] = field(default_factory=dict)
    verified: tuple[tuple[str, ...], str] | None = None  # the first trace rated 1, and where it was met

    def state(self, node: Node) -> State:
        return State(self.problem, tuple(node.steps()))

    def running(self, env: SearchEnv, cfg: MCTSConfig) -> bool:
        """Whether to simulate again; otherwise ``stopped`` says why not."""
        if self.stopped:
            return False
        spent = env.spent[self.problem.id].tokens_generated - self.tokens0 if self.problem.id in env.spent else 0
        if self.sims >= cfg.simulations:
            self.stopped = "simulations"
        elif self.size >= cfg.max_nodes:
            self.stopped = "max_nodes"
        elif cfg.token_budget is not None and spent >= cfg.token_budget:
            self.stopped = "token_budget"
        elif env.affordable(self.problem, self.sims) < 1:
            self.stopped = "budget"
        elif self.root in self.finished:
            self.stopped = "exhausted"
        return not self.stopped

    def saw(self, steps: tuple[str, ...], reward: float, where: str) -> None:
        if reward >= 1 and self.verified is None:
            self.verified = (steps, where)


def puct(child: Node, parent_visits: int, c_puct: float) -> float:
    """Q(s, a) + c_puct * P(s, a) * sqrt(N(s)) / (1 + N(s, a))."""
    return child.q + c_puct * child.prior * math.sqrt(parent_visits) / (1 + child.visits)


def pstdev_above(xs: Sequence[float], threshold: float) -> bool:
    """``statistics.pstdev(xs) > threshold``, decided in float arithmetic unless the float std lies within
    1e-9 of the threshold; only there is the exact (and ~30x slower, Fraction-based) ``pstdev`` asked."""
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
    if abs(std - threshold) > 1e-9:
        return std > threshold
    return statistics.pstdev(xs) > threshold


def wants_widening(node: Node, cfg: MCTSConfig) -> bool:
    n = len(node.children)
    return 2 <= n < cfg.k_max and pstdev_above([c.q for c in node.children], cfg.widen_std)


def select(s: _Search, cfg: MCTSConfig, score: ScoreFn = puct) -> Node:
    """The node this simulation expands (a leaf or one to widen) or, if terminal, re-values. Ties go to the first child.

    With ``skip_finished`` (an MCTS-solver rule), finished children are passed over: a terminal node's
    value is the verifier's exact reward, so selecting it again spends a simulation to learn nothing.
    A node whose children are all finished is finished itself and selection restarts from the root;
    once the root is finished the search stops ("exhausted").
    """
    while True:
        node = s.root
        while node.children and not node.terminal:
            if node not in s.saturated and wants_widening(node, cfg):
                return node
            parent = node
            kids = [c for c in parent.children if not (cfg.skip_finished and (c.terminal or c in s.finished))]
            if not kids:
                break
            node = max(kids, key=lambda c: score(c, parent.visits, cfg.c_puct))
        else:
            return node
        s.finished.add(node)
        if node is s.root:
            return node  # the caller's next ``running`` check stops this search


def expand(batch: Sequence[tuple[_Search, Node]], env: SearchEnv, cfg: MCTSConfig) -> list[list[Node]]:
    """k distinct next steps for every (tree, node) in ONE ``env.expand`` call; returns each node's new children.

    Children are attached by ``add_children``, the rule every search shares. A node that gets no step
    (all blank: the model ended the trace; or no legal action) becomes a terminal leaf.
    """
    if not batch:
        return []
    out = []
    for (s, node), props in zip(batch, env.expand([s.state(n) for s, n in batch], cfg.k, cfg.temperature)):
        room = min(cfg.k_max - len(node.children), cfg.max_nodes - s.size)
        new = add_children(env, s.problem, node, props, room, cfg.merge)
        s.size += len(new)
        for c in new:
            if c.terminal:
                s.saw(tuple(c.steps()), c.reward, "tree")
        if new:  # a node that grew is open again, and so is every node above it
            n: Node | None = node
            while n is not None:
                s.finished.discard(n)
                n = n.parent
        if not node.children:
            node.terminal, node.reward = True, env.reward(s.problem, tuple(node.steps()))
        elif not new:
            s.saturated.add(node)
        out.append(new)
    return out


def evaluate(batch: Sequence[tuple[_Search, Node]], env: SearchEnv, cfg: MCTSConfig, weight: float) -> list[float]:
    """lambda * critic + (1 - lambda) * mean rollout reward of each new non-terminal node (one call of each)."""
    if not batch:
        return []
    states = [s.state(n) for s, n in batch]
    outcome = [0.0] * len(batch)
    if cfg.rollouts:
        rolled = env.rollout(states, cfg.rollouts, cfg.temperature, fast=cfg.fast_rollouts, leaf=True)
        for i, ((s, node), traces) in enumerate(zip(batch, rolled)):
            rewards = [env.reward(s.problem, t) for t in traces]
            outcome[i] = node.scores["rollout"] = sum(rewards) / len(rewards)
            best = max(range(len(traces)), key=rewards.__getitem__)
            s.best_rollout[node] = (rewards[best], traces[best])
            s.saw(traces[best], rewards[best], "rollout")
    critic = [0.0] * len(batch)
    if weight > 0:
        critic = env.score(states)
        for (_, node), c in zip(batch, critic):
            node.scores[env.critic.name] = c
    return [weight * c + (1 - weight) * r for c, r in zip(critic, outcome)]


def backup(node: Node | None, value: float, undo: bool = False) -> None:
    """N += 1 and W += value on every node from ``node`` up to the root, so Q = W / N is a running mean
    (``undo``: N -= 1 and W -= value, taking a virtual loss back)."""
    sign = -1 if undo else 1
    while node is not None:
        node.visits += sign
        node.value_sum += sign * value
        node = node.parent


def pick_leaves(s: _Search, cfg: MCTSConfig, score: ScoreFn) -> list[Node]:
    """Up to ``cfg.parallel`` distinct nodes to simulate from in this tree this round.

    Each selection puts a *virtual loss* on its path (one visit of value 0, as in AlphaGo's parallel
    search), so the next selection looks elsewhere; a node picked again gets another, until a different
    node wins or 2 x ``parallel`` selections are spent. All virtual losses are taken back before the
    real backups. With ``parallel = 1`` this is plain sequential MCTS.
    """
    want = min(cfg.parallel, cfg.simulations - s.sims)
    picks: list[Node] = []
    losses: list[Node] = []
    for _ in range(2 * want):
        if len(picks) == want:
            break
        leaf = select(s, cfg, score)
        backup(leaf, 0.0)  # the virtual loss
        losses.append(leaf)
        if leaf not in picks:
            picks.append(leaf)
    for leaf in losses:
        backup(leaf, 0.0, undo=True)
    return picks


def simulate(searches: Sequence[_Search], env: SearchEnv, cfg: MCTSConfig, weight: float, score: ScoreFn) -> None:
    """One round: ``parallel`` simulations in each tree (select; expand in one expand call; evaluate in one
    rollout + one critic call; back up)."""
    leaves = [(s, leaf) for s in searches for leaf in pick_leaves(s, cfg, score)]
    growing = [(s, n) for s, n in leaves if not n.terminal]
    born = dict(zip((n for _, n in growing), expand(growing, env, cfg)))
    fresh = [(s, c) for s, n in growing for c in born[n] if not c.terminal]
    values = dict(zip((c for _, c in fresh), evaluate(fresh, env, cfg, weight)))
    for s, leaf in leaves:
        s.sims += 1
        new = born.get(leaf, [])
        for c in new:
            c.visits, c.value_sum = 1, values.get(c, c.reward)  # each new child is evaluated once
        if new:
            backup(leaf, sum(c.value_sum for c in new) / len(new))
        elif leaf.terminal:
            backup(leaf, leaf.reward)
        # else: a widening that found no new step; the simulation is spent without an update


def final_trace(s: _Search, env: SearchEnv, cfg: MCTSConfig) -> tuple[tuple[str, ...], str]:
    """The answer trace and where it came from ("tree", "rollout", or "verified-tree"/"verified-rollout").

    Follow the most-visited (or highest-Q) child down from the root; if that path stops short of a
    terminal node, finish it with its last node's best rollout; with ``prefer_verified``, a trace the
    verifier rated 1 anywhere in the search replaces a path that is not itself rated 1.
    """
    rank = (lambda c: (c.visits, c.q)) if cfg.final == "visits" else (lambda c: (c.q, c.visits))
    node = s.root
    while node.children:
        node = max(node.children, key=rank)
    steps, source = tuple(node.steps()), "tree"
    if not node.terminal and node in s.best_rollout:
        steps, source = s.best_rollout[node][1], "rollout"
    if cfg.prefer_verified and s.verified is not None and env.reward(s.problem, steps) < 1:
        steps, source = s.verified[0], f"verified-{s.verified[1]}"
    return steps, source


def mcts(problems: Sequence[Problem], env: SearchEnv, cfg: MCTSConfig, score: ScoreFn = puct) -> list[SearchResult]:
    """Search every problem in lock-step, one simulation per tree per round, until each stops
    (simulations, token budget, the env's budget, or a full tree). ``info`` has the simulations run, the tree size, why
    it stopped, the best root child's Q, where the answer came from and whether a verified trace was met."""
    if cfg.rollouts == 0 and env.critic is None:
        raise PonderError("mcts with --rollouts 0 values leaves by the critic alone; give a critic or --rollouts > 0")
    weight = cfg.value_weight if env.critic is not None else 0.0
    if cfg.seed is not None:
        # mixed with the problem ids so a batch's search is reproducible on its own (say, after a resume)
        # without every batch replaying the same random draws
        env.seed(zlib.crc32(f"{cfg.seed}:{','.join(p.id for p in problems)}".encode()))
    searches = [_Search(p, env.spent[p.id].tokens_generated if p.id in env.spent else 0) for p in problems]
    while running := [s for s in searches if s.running(env, cfg)]:
        simulate(running, env, cfg, weight, score)
    out = []
    for s in searches:
        steps, source = final_trace(s, env, cfg)
        info = {
            "simulations": s.sims,
            "nodes": s.size,
            "stopped": s.stopped,
            "best_value": max((c.q for c in s.root.children), default=0.0),
            "source": source,
            "verified_found": s.verified is not None,
        }
        if getattr(env, "rollout_policy", None) is not None:  # what the rollout policy spent, within the compute
            info["rollout_compute"] = env.rollout_compute(s.problem).to_dict()
        answer = env.task.answer(s.problem, steps)
        out.append(SearchResult(s.problem, answer, steps, s.root, env.take_compute(s.problem), info))
    return out
