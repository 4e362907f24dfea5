"""Beam search, DVTS, Tree-of-Thoughts BFS/DFS and A* on hand-made trees with known answers, then a
smoke run of each on Game of 24 with a real (untrained) model."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import pytest

from conftest import small_tiny_model
from ponder.compute import Compute
from ponder.critics import Verifier
from ponder.errors import PonderError
from ponder.models import HFPolicy, Step
from ponder.search import METHODS, Node, SearchEnv, State, get_method
from ponder.search.astar import AStarConfig
from ponder.search.beam import BeamConfig, DVTSConfig
from ponder.search.tot import ToTBFSConfig, ToTDFSConfig
from ponder.tasks import Problem
from ponder.tasks.game24 import Game24

TREE_METHODS = {"beam": BeamConfig, "dvts": DVTSConfig, "tot-bfs": ToTBFSConfig, "tot-dfs": ToTDFSConfig, "astar": AStarConfig}

# --- a fake env over a hand-made tree ---------------------------------------------------------------------
Path = tuple[str, ...]


@dataclass
class Spec:
    """A hand-made tree: ``children[path]`` = [(step, logprob)]; a path without children is terminal.
    ``value[path]`` is the fake critic's score; ``reward[path]`` the verifier's (0 if absent)."""

    children: dict[Path, list[tuple[str, float]]]
    value: dict[Path, float] = field(default_factory=dict)
    reward: dict[Path, float] = field(default_factory=dict)


class FakeTask:
    def __init__(self, spec: Spec):
        self.spec = spec

    def is_terminal(self, problem, steps) -> bool:
        return tuple(steps) not in self.spec.children

    def reward(self, problem, steps) -> float:
        return self.spec.reward.get(tuple(steps), 0.0)

    def answer(self, problem, steps) -> str | None:
        return "".join(steps) if self.is_terminal(problem, steps) else None


class FakeCritic:
    name = "fake"

    def __init__(self, spec: Spec):
        self.spec = spec

    def score(self, problems, steps) -> list[float]:
        return [self.spec.value.get(tuple(s), 0.0) for s in steps]


class FakeEnv:
    """Exposes what the tree searches use of ``SearchEnv``: expand (sample j of a state is its child
    ``j mod #children``, one token each), score, rollout (sample j always takes child ``j mod #children``),
    task, critic, the task's verdicts, take_compute (forward calls = states expanded), over_budget (with
    ``budget`` = N, a problem affords N expansions). Records the states of every
    call."""

    lists_actions = False

    def __init__(self, spec: Spec, budget: int | None = None):
        self.task, self.spec, self.critic = FakeTask(spec), spec, FakeCritic(spec)
        self.budget = budget
        self.proposed: list[list[State]] = []
        self.scored: list[list[State]] = []
        self.rolled: list[list[State]] = []

    def expanded(self, problem) -> int:
        return sum(s.problem == problem for call in self.proposed for s in call)

    def affordable(self, problem, done) -> float:
        return math.inf if self.budget is None else self.budget - self.expanded(problem)

    def is_terminal(self, problem, steps) -> bool:
        return self.task.is_terminal(problem, steps)

    def reward(self, problem, steps) -> float:
        return self.task.reward(problem, steps)

    def expand(self, states, k, temperature=1.0, top_p=1.0) -> list[list[Step]]:
        self.proposed.append(list(states))
        out = []
        for s in states:
            kids = self.spec.children[s.steps]
            out.append([Step(step, (0,), (lp,), "stop") for step, lp in (kids[j % len(kids)] for j in range(k))])
        return out

    def score(self, states) -> list[float]:
        self.scored.append(list(states))
        return self.critic.score([s.problem for s in states], [s.steps for s in states])

    def rollout(self, states, m, temperature=1.0, top_p=1.0, leaf=False) -> list[list[Path]]:
        assert leaf  # a tree search's rollouts value leaves: the env's rollout policy draws them
        self.rolled.append(list(states))
        out = []
        for s in states:
            traces = []
            for j in range(m):
                path = s.steps
                while path in self.spec.children:
                    kids = self.spec.children[path]
                    path = path + (kids[j % len(kids)][0],)
                traces.append(path)
            out.append(traces)
        return out

    def take_compute(self, problem) -> Compute:
        return Compute(forward_calls=self.expanded(problem))


def problems(n: int = 1) -> list[Problem]:
    return [Problem(id=f"p{i}", question=f"q{i}") for i in range(n)]


def full_tree(branching: int = 3, depth: int = 3, seed: int = 0) -> Spec:
    """Every path shorter than ``depth`` has ``branching`` children "a", "b", ...; distinct random values."""
    rng = random.Random(seed)
    spec = Spec({})
    frontier: list[Path] = [()]
    for _ in range(depth):
        nxt = []
        for path in frontier:
            spec.children[path] = [(chr(97 + i), -1.0) for i in range(branching)]
            nxt += [path + (chr(97 + i),) for i in range(branching)]
        frontier = nxt
    for path in [p for p in spec.children if p] + frontier:
        spec.value[path] = rng.random()
    return spec


def expanded(env: FakeEnv) -> list[set[Path]]:
    """The set of states expanded in each round."""
    return [{s.steps for s in call} for call in env.proposed]


def top(spec: Spec, paths, n: int) -> list[Path]:
    return sorted(paths, key=lambda p: spec.value[p], reverse=True)[:n]


def kids(spec: Spec, paths) -> list[Path]:
    return [p + (step,) for p in paths for step, _ in spec.children[p]]


# --- beam, DVTS, ToT BFS ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method, cfg", [("beam", BeamConfig(k=3, beam_width=2)), ("tot-bfs", ToTBFSConfig(k=3, breadth=2))])
def test_beam_keeps_exactly_the_best_width_at_every_depth(method, cfg):
    spec = full_tree()
    env = FakeEnv(spec)
    [r] = get_method(method).run(problems(), env, cfg)
    want, level = [{()}], [()]
    while (level := top(spec, [p for p in kids(spec, level) if p in spec.children], 2)):
        want.append(set(level))
    assert expanded(env) == want and len(want) == 3
    assert len(env.scored) == len(env.proposed)  # one critic call per round
    # the answer is the best-valued terminal: one of the children of the last beam
    assert r.steps == top(spec, kids(spec, want[-1]), 1)[0] and r.info["score"] == spec.value[r.steps]
    assert r.info["expanded"] == 5 and r.tree.size() == 1 + 3 + 2 * 3 + 2 * 3


def test_beam_ties_go_to_the_likelier_step():
    spec = Spec({(): [("x", -2.0), ("y", -0.1), ("z", -1.0)], ("x",): [("x1", 0)], ("y",): [("y1", 0)], ("z",): [("z1", 0)]})
    env = FakeEnv(spec)  # every value 0, as with the verifier alone
    get_method("beam").run(problems(), env, BeamConfig(k=3, beam_width=2))
    assert [s.steps for s in env.proposed[1]] == [("y",), ("z",)]


def test_dvts_subtrees_start_from_different_first_steps():
    spec = full_tree(branching=3, depth=3)
    spec.value.update({("a",): 0.9, ("b",): 0.8, ("c",): 0.1, ("a", "a"): 0.99, ("a", "b"): 0.98, ("a", "c"): 0.97})
    spec.value.update({("b", "a"): 0.01, ("b", "b"): 0.03, ("b", "c"): 0.02})  # a plain beam of 4 would keep one b
    env = FakeEnv(spec)
    [r] = get_method("dvts").run(problems(), env, DVTSConfig(k=3, beam_width=4, subtrees=2))
    assert expanded(env)[:2] == [{()}, {("a",), ("b",)}]
    # then each subtree keeps its own best 2 (beam_width / subtrees), not the best 4 overall
    assert expanded(env)[2] == {("a", "a"), ("a", "b"), ("b", "b"), ("b", "c")}
    assert r.info["expanded"] == 1 + 2 + 4


def test_prefer_verified_answer_over_a_better_scored_one():
    spec = Spec({(): [("good", -1.0), ("bad", -1.0)]}, value={("good",): 0.2, ("bad",): 0.9}, reward={("good",): 1.0})
    [r] = get_method("beam").run(problems(), FakeEnv(spec), BeamConfig(k=2))
    assert r.steps == ("good",) and r.answer == "good"
    [r] = get_method("beam").run(problems(), FakeEnv(spec), BeamConfig(k=2, prefer_verified=False))
    assert r.steps == ("bad",) and r.info["score"] == 0.9


def test_rollout_scorer_values_states_by_verified_rollouts():
    # the verifier gives every unfinished state 0; rollouts find that only "b" leads to a solution
    spec = Spec(
        {(): [("a", -0.1), ("b", -2.0)], ("a",): [("a1", 0), ("a2", 0)], ("b",): [("b1", 0), ("b2", 0)]},
        reward={("b", "b2"): 1.0},
    )
    env = FakeEnv(spec)
    [r] = get_method("beam").run(problems(), env, BeamConfig(k=2, beam_width=1, scorer="rollout", rollouts=2))
    assert env.scored == [] and [s.steps for s in env.rolled[0]] == [("a",), ("b",)]
    assert r.tree.find("0.1").scores == {"rollout": 0.5} and r.tree.find("0.0").scores == {"rollout": 0.0}
    assert expanded(env)[1] == {("b",)} and r.steps == ("b", "b2")
    assert len(env.rolled) == 1  # the leaves are terminal: their value is their reward, no rollout


# --- ToT DFS ----------------------------------------------------------------------------------------------
DFS_SPEC = Spec(
    {
        (): [("a", 0), ("b", 0), ("c", 0)],
        ("a",): [("aa", 0), ("ab", 0)],
        ("a", "aa"): [("aa1", 0), ("aa2", 0)],  # a dead end
        ("a", "ab"): [("ab1", 0)],  # a solution behind a low value: pruned, never seen
        ("b",): [("ba", 0)],
        ("b", "ba"): [("ba1", 0)],
        ("c",): [("c1", 0)],
    },
    value={("a",): 0.9, ("b",): 0.6, ("c",): 0.2, ("a", "aa"): 0.8, ("a", "ab"): 0.3, ("b", "ba"): 0.7},
    reward={("b", "ba", "ba1"): 1.0, ("a", "ab", "ab1"): 1.0},
)


def test_dfs_prunes_below_threshold_and_backtracks_to_the_solution():
    env = FakeEnv(DFS_SPEC)
    [r] = get_method("tot-dfs").run(problems(), env, ToTDFSConfig(k=3, threshold=0.5))
    assert [s.steps for [s] in env.proposed] == [(), ("a",), ("a", "aa"), ("b",), ("b", "ba")]
    assert r.steps == ("b", "ba", "ba1") and r.info == {"expanded": 5, "score": 0.0, "pruned": 2}  # c and ab


def test_dfs_stops_after_max_expansions():
    [r] = get_method("tot-dfs").run(problems(), FakeEnv(DFS_SPEC), ToTDFSConfig(k=3, threshold=0.5, max_expansions=3))
    assert r.info["expanded"] == 3 and r.steps == ("a", "aa", "aa1")  # the best terminal found so far


# --- A* ---------------------------------------------------------------------------------------------------
# Two solutions; the likelier one (a, a1: log-prob -1.1) is optimal. h = the best reward reachable, an
# admissible heuristic since log-probs can only lower g.
ASTAR_SPEC = Spec(
    {
        (): [("a", -1.0), ("b", -0.5), ("c", -0.2)],
        ("a",): [("a1", -0.1), ("a2", -3.0)],
        ("b",): [("b1", -0.1), ("b2", -0.2)],
        ("c",): [("c1", -2.0), ("c2", -0.1)],
    },
    value={("a",): 1, ("c",): 1, ("a", "a1"): 1, ("a", "a2"): 1, ("c", "c1"): 1},
    reward={("a", "a1"): 1, ("a", "a2"): 1, ("c", "c1"): 1},
)


@pytest.mark.parametrize("prefer_verified", [True, False])
def test_astar_returns_the_optimal_path_expanding_less_than_bfs(prefer_verified):
    env = FakeEnv(ASTAR_SPEC)
    [r] = get_method("astar").run(problems(), env, AStarConfig(k=3, g_weight=1.0, prefer_verified=prefer_verified))
    assert r.steps == ("a", "a1") and r.answer == "aa1"
    assert [s.steps for [s] in env.proposed] == [(), ("c",), ("a",)]  # c looks best first (f = 0.8)
    bfs = FakeEnv(ASTAR_SPEC)
    [b] = get_method("tot-bfs").run(problems(), bfs, ToTBFSConfig(k=3, breadth=3))
    assert r.info["expanded"] == 3 < b.info["expanded"] == 4


@pytest.mark.parametrize("prefer_verified, expansions, answer", [(True, 3, ("y", "y1")), (False, 2, ("x", "x1"))])
def test_astar_skips_unverified_terminals_when_it_trusts_the_verifier(prefer_verified, expansions, answer):
    spec = Spec(
        {(): [("x", -5.0), ("y", -0.1)], ("x",): [("x1", 0)], ("y",): [("y1", 0)]},
        value={("x",): 0.5, ("x", "x1"): 0.4, ("y", "y1"): 0.9},
        reward={("y", "y1"): 1.0},
    )
    env = FakeEnv(spec)
    [r] = get_method("astar").run(problems(), env, AStarConfig(k=2, g="zero", prefer_verified=prefer_verified))
    # without g, x (h = 0.5) goes first despite its log-prob; its child x1 (h = 0.4) is a wrong answer
    assert [s.steps for [s] in env.proposed] == [(), ("x",), ("y",)][:expansions]
    assert r.steps == answer and r.info["expanded"] == expansions


def test_astar_pops_several_nodes_per_round():
    env = FakeEnv(ASTAR_SPEC)
    [r] = get_method("astar").run(problems(), env, AStarConfig(k=3, g_weight=1.0, pop_per_round=2, max_expansions=3))
    assert expanded(env) == [{()}, {("c",), ("a",)}]
    assert r.steps == ("a", "a1")  # out of expansions: the best terminal, by value then log-prob per token


# --- shared guarantees ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", TREE_METHODS)
@pytest.mark.parametrize("max_nodes", [1, 5, 9])
def test_max_nodes_is_never_exceeded(method, max_nodes):
    [r] = get_method(method).run(problems(), FakeEnv(full_tree()), TREE_METHODS[method](k=3, max_nodes=max_nodes))
    assert r.tree.size() == max_nodes  # the budget is spent, never overspent (the full tree has 40 nodes)
    assert node_at(r.tree, r.steps).steps() == list(r.steps)


def node_at(root: Node, steps) -> Node:
    """The node of the tree reached by ``steps`` (the answer must be a trace of the tree)."""
    for step in steps:
        root = root.child_with(step)
        assert root is not None
    return root


@pytest.mark.parametrize("method", TREE_METHODS)
def test_one_propose_and_one_score_call_per_round_across_problems(method):
    env = FakeEnv(full_tree())
    results = get_method(method).run(problems(3), env, TREE_METHODS[method](k=3))
    assert len(env.proposed) == len(env.scored) and all(len(c) > 0 for c in env.proposed)
    for call in env.proposed:  # the three identical problems advance in lockstep in every call
        per_problem = [[s.steps for s in call if s.problem.id == p.id] for p in problems(3)]
        assert per_problem[0] == per_problem[1] == per_problem[2] != []
    assert [r.problem.id for r in results] == ["p0", "p1", "p2"]
    assert all(r.compute.forward_calls == r.info["expanded"] for r in results)


def test_the_critic_scorer_needs_a_critic():
    env = FakeEnv(full_tree())
    env.critic = None
    with pytest.raises(PonderError, match="--scorer critic needs a critic"):
        get_method("beam").run(problems(), env, BeamConfig())
    [r] = get_method("beam").run(problems(), env, BeamConfig(scorer="rollout", max_nodes=5))
    assert r.tree.size() == 5 and env.scored == [] and env.rolled


@pytest.mark.parametrize(
    "cls, kwargs, message",
    [
        (BeamConfig, {"beam_width": 0}, "--beam-width must be > 0"),
        (BeamConfig, {"k": 0}, "--k must be > 0"),
        (BeamConfig, {"max_nodes": -1}, "--max-nodes must be > 0"),
        (BeamConfig, {"scorer": "prm"}, "--scorer: 'prm' is not one of critic, rollout"),
        (DVTSConfig, {"beam_width": 4, "subtrees": 3}, "multiple of --subtrees"),
        (DVTSConfig, {"k": 2, "beam_width": 4, "subtrees": 4}, "--subtrees .4. must be <= --k"),
        (ToTBFSConfig, {"breadth": 0}, "--breadth must be > 0"),
        (ToTDFSConfig, {"max_expansions": 0}, "--max-expansions must be > 0"),
        (AStarConfig, {"g": "reward"}, "--g: 'reward' is not one of logprob, zero"),
        (AStarConfig, {"g_weight": -1.0}, "--g-weight must be >= 0"),
        (AStarConfig, {"pop_per_round": 0}, "--pop-per-round must be > 0"),
        (AStarConfig, {"rollouts": 0}, "--rollouts must be > 0"),
    ],
)
def test_configs_validate(cls, kwargs, message):
    with pytest.raises(PonderError, match=message):
        cls(**kwargs)


def test_methods_are_registered():
    for name, cls in TREE_METHODS.items():
        assert METHODS[name].config is cls and METHODS[name].needs_critic


# --- end to end on Game of 24 with a real, untrained model ------------------------------------------------
@pytest.fixture(scope="module")
def game24_env():
    model, tok = small_tiny_model()
    task = Game24(free_text=True)
    return SearchEnv(HFPolicy(model, tok, "tiny", seed=0), task, Verifier(task)), task.problems("test")[:2]


@pytest.mark.parametrize(
    "method, cfg",
    [
        ("beam", BeamConfig(k=2, beam_width=2, max_nodes=8)),
        ("dvts", DVTSConfig(k=2, beam_width=2, subtrees=2, max_nodes=8)),
        ("tot-bfs", ToTBFSConfig(k=2, breadth=2, max_nodes=8, scorer="rollout", rollouts=2)),
        ("tot-dfs", ToTDFSConfig(k=2, max_expansions=3, max_nodes=8)),
        ("astar", AStarConfig(k=2, max_expansions=3, max_nodes=8)),
    ],
)
def test_smoke_on_game24_with_an_untrained_model(game24_env, method, cfg):
    env, ps = game24_env
    results = get_method(method).run(ps, env, cfg)
    assert [r.problem for r in results] == ps and env.spent == {}
    for r in results:
        assert 1 < r.tree.size() <= 8 and r.info["expanded"] >= 1
        assert r.compute.tokens_generated > 0 and r.compute.tokens_read > 0
        node = node_at(r.tree, r.steps)
        assert node.reward == (env.task.reward(r.problem, r.steps) if node.terminal else None)
        assert all("verifier" in n.scores or "rollout" in n.scores for n in r.tree if n.parent is not None)
