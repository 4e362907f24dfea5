"""Option-level MCTS on hand-made trees (a fake menu policy and a toy task), plus one real tiny-model run."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from ponder.compute import Compute
from ponder.errors import PonderError
from ponder.models import HFPolicy, SamplingParams, Samples, Step
from conftest import small_tiny_model
from ponder.search import METHODS, SearchEnv, get_method
from ponder.search.env import step_key as normalize
from ponder.search.mcts import MCTSConfig, mcts
from ponder.tasks.base import Problem, Task
from ponder.tasks.game24 import Game24

EXPECTED_TREE = Path(__file__).parent / "data" / "mcts_expected_tree.json"


class ToyTask(Task):
    """States are lines of text; a trace ends after ``max_steps`` lines and is correct iff its
    stripped lines, joined by spaces, equal the problem's reference."""

    name = "toy"
    votable = False
    max_step_tokens = 16  # keeps the real model's steps and rollouts short

    def __init__(self, max_steps: int = 2):
        self.max_steps = max_steps

    def problems(self, split):
        return []

    def prompt(self, problem: Problem) -> str:
        return problem.question + "\n"

    def answer(self, problem, steps):
        return " ".join(s.strip() for s in steps) if len(steps) >= self.max_steps else None

    def reward(self, problem, steps):
        return float(self.answer(problem, steps) == problem.reference)


def toy(pid: str = "t", reference: str = "a x", question: str | None = None) -> Problem:
    return Problem(id=pid, question=question or f"toy {pid}", reference=reference)


class MenuPolicy:
    """A deterministic Policy: ``menu(steps so far)`` lists ``(step text, log-prob per token)`` options.

    Step call: the samples at a prefix cycle through its options, continuing where the previous call
    at that prefix stopped (so widening a node meets new options until the menu runs out).
    Whole-trace call (``stop == ()``): each sample follows option ``c mod len`` at every depth, with c
    a counter over all rollout samples so far, so successive rollouts differ. One token per character;
    compute: tokens read = len(prefix), generated = the sum over its samples, one forward call and a
    millisecond per prefix.
    """

    name = "menu"

    def __init__(self, task: ToyTask, menu):
        self.task, self.menu = task, menu
        self.prompts: list[str] = []
        self.calls: list[tuple[list[str], int, SamplingParams]] = []
        self.total = Compute()
        self.rolls = 0
        self.seeds: list[int] = []
        self.proposed: dict[str, int] = {}  # samples already proposed at each prefix

    def seed(self, seed: int) -> None:
        self.seeds.append(seed)

    def render(self, task, problem) -> str:
        self.prompts.append(task.prompt(problem))
        return task.prompt(problem)

    def steps_of(self, prefix: str) -> tuple[str, ...]:
        prompt = next(p for p in self.prompts if prefix.startswith(p))
        return tuple(self.task.split_steps(prefix[len(prompt) :]))

    def _step(self, text: str, lp: float) -> Step:
        return Step(text, tuple(range(len(text))), (lp,) * len(text), "stop")

    def _rollout(self, steps: tuple[str, ...]) -> Step:
        c, text = self.rolls, ""
        self.rolls += 1
        while len(steps) < self.task.max_steps:
            options = self.menu(steps)
            step = options[c % len(options)][0]
            steps, text = (*steps, step), text + step
        return Step(text, tuple(range(len(text))), (-1.0,) * len(text), "eos")

    def sample(self, prefixes, k, params: SamplingParams) -> Samples:
        self.calls.append((list(prefixes), k, params))
        rows, compute = [], []
        for prefix in prefixes:
            steps = self.steps_of(prefix)
            if params.stop:
                options, done = self.menu(steps), self.proposed.get(prefix, 0)
                row = [self._step(*options[(done + j) % len(options)]) for j in range(k)]
                self.proposed[prefix] = done + k
            else:
                row = [self._rollout(steps) for _ in range(k)]
            rows.append(row)
            compute.append(Compute(sum(s.num_tokens for s in row), len(prefix), 1.0, 0.001))
            self.total = self.total + compute[-1]
        return Samples(rows, compute)

    def step_calls(self):
        return [c for c in self.calls if c[2].stop]


class TableCritic:
    """Scores a state by a fixed table of its last step (0.5 for anything else)."""

    name = "table"

    def __init__(self, table: dict[str, float] | None = None):
        self.table, self.calls = table or {}, 0

    def score(self, problems, steps):
        self.calls += 1
        return [self.table.get(s[-1].strip() if s else "", 0.5) for s in steps]


def four_way(steps):
    # the correct first action "a" is the one the policy likes least
    if not steps:
        return [("b\n", -0.1), ("c\n", -0.2), ("a\n", -1.0), ("d\n", -0.3)]
    return [("x\n", -0.5), ("y\n", -0.5)]


def run(menu, problems, cfg, max_steps=2, critic=None):
    task = ToyTask(max_steps)
    policy = MenuPolicy(task, menu)
    env = SearchEnv(policy, task, critic)
    return mcts(problems, env, cfg), policy, env


# --- (1) visits concentrate on the best action ------------------------------------------------------------
def test_visits_concentrate_on_the_rewarding_action():
    shares = []
    for sims in (4, 16, 64):
        [r], _, _ = run(four_way, [toy()], MCTSConfig(simulations=sims, k=4))
        best = next(c for c in r.tree.children if c.step == "a\n")
        shares.append(best.visits / sum(c.visits for c in r.tree.children))
        # a widening that finds no new step (this menu has only four) spends a round without a backup
        assert sims - 2 <= r.tree.visits <= sims == r.info["simulations"]
    assert shares[0] < shares[1] < shares[2] and shares[2] > 0.6, shares
    assert r.steps == ("a\n", "x\n") and r.answer == "a x" and r.info["source"] == "tree"


def test_priors_are_a_softmax_of_length_normalised_logprobs():
    def menu(steps):  # equal per-token log-probs, different lengths: equal priors
        return [("bb\n", -0.5), ("a\n", -0.5), ("cccc\n", -2.0)] if not steps else [("x\n", -0.5)]

    [r], _, _ = run(menu, [toy()], MCTSConfig(simulations=1, k=3))
    z = [-0.5, -0.5, -2.0]
    want = [math.exp(x) / sum(math.exp(y) for y in z) for x in z]
    assert [c.prior for c in r.tree.children] == pytest.approx(want)
    assert [(c.tokens, c.logprob) for c in r.tree.children] == [(3, -1.5), (2, -1.0), (5, -10.0)]


# --- (2) near-duplicate siblings merge -----------------------------------------------------------------
G1 = "4 + 8 = 12 (left: 4 6 12)\n"
G1_SPACED = " 4 + 8 = 12  (left: 4 6 12)\n"
G1_UPPER = "4 + 8 = 12 (LEFT: 4 6 12)\n"
G2 = "4 * 6 = 24 (left: 4 24)\n"


@pytest.mark.parametrize("merge, want", [(True, [G1, G2]), (False, [G1, G1_SPACED, G1_UPPER, G2])])
def test_near_duplicate_siblings_merge(merge, want):
    def menu(steps):
        return [(G1, -0.1), (G1_SPACED, -0.2), (G1_UPPER, -0.3), (G1, -0.4), (G2, -0.5)] if not steps else [("x\n", -0.5)]

    [r], _, _ = run(menu, [toy()], MCTSConfig(simulations=1, k=5, merge=merge))
    assert [c.step for c in r.tree.children] == want  # exact duplicates always merge: they are one state
    assert normalize(G1) == normalize(G1_SPACED) == normalize(G1_UPPER) == "4 + 8 = 12 (left: 4 6 12)"


# --- (3) max_nodes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_nodes, k, k_max", [(2, 4, 4), (7, 3, 3), (10, 3, 8), (25, 4, 8)])
def test_tree_never_exceeds_max_nodes(max_nodes, k, k_max):
    def menu(steps):
        return [(f"{w}{len(steps)}\n", -0.1 * i) for i, w in enumerate("pqrstuvw")]

    critic = TableCritic({"p1": 1.0, "q1": 0.0})  # disagreeing siblings make widening kick in
    [r], _, _ = run(menu, [toy()], MCTSConfig(simulations=200, k=k, k_max=k_max, max_nodes=max_nodes), 5, critic)
    assert r.tree.size() == r.info["nodes"] <= max_nodes
    assert r.info["stopped"] == "max_nodes" and r.info["simulations"] < 200
    assert all(len(n.children) <= k_max for n in r.tree)


# --- (4) batching and compute -----------------------------------------------------------------------------
def test_one_call_of_each_kind_per_round_across_problems_and_compute_per_problem():
    problems = [toy("p1", question="short"), toy("p2", question="a longer question"), toy("p3", question="mid one")]
    critic = TableCritic()
    results, policy, env = run(four_way, problems, MCTSConfig(simulations=6, k=2, rollouts=2), 8, critic)
    steps, rollouts = policy.step_calls(), [c for c in policy.calls if not c[2].stop]
    # nothing is terminal within 6 simulations at depth 8, so every round expands one node per tree
    assert len(steps) == len(rollouts) == critic.calls == 6
    for prefixes, k, params in steps:
        assert k == 2 and params.temperature == 1.0
        assert [p.split("\n")[0] for p in prefixes] == ["short", "a longer question", "mid one"]
    assert all(k == 2 for _, k, _ in rollouts)
    total = Compute.total(r.compute for r in results)
    assert total.to_dict() == pytest.approx(policy.total.to_dict()) and env.spent == {}
    for r in results:
        prompt = r.problem.question + "\n"
        read = sum(len(p) for prefixes, _, _ in policy.calls for p in prefixes if p.startswith(prompt))
        assert r.compute.tokens_read == read and r.compute.tokens_generated > 0
        assert r.info["simulations"] == 6 and r.tree.visits <= 6


def test_token_budget_stops_a_problem_early():
    [r], _, _ = run(four_way, [toy()], MCTSConfig(simulations=100, k=2, token_budget=30), 8)
    assert r.info["stopped"] == "token_budget" and r.info["simulations"] < 100
    assert r.compute.tokens_generated >= 30


# --- final answer: completion by rollouts and verified traces -----------------------------------------------
def two_way(steps):
    return [("b\n", -0.1), ("a\n", -0.2)] if not steps else [("y\n", -0.5), ("x\n", -0.5)]


@pytest.mark.parametrize("prefer, source, answer", [(True, "verified-rollout", "a x"), (False, "rollout", "b y")])
def test_the_answer_path_is_completed_by_rollouts_and_a_verified_trace_is_preferred(prefer, source, answer):
    # the critic loves "b", so after one simulation the answer path is "b", which is not terminal;
    # rollouts alternate between options: "b" rolls out to "b y", "b x" and "a" to "a y", "a x" (correct)
    critic = TableCritic({"b": 1.0, "a": 0.0})
    cfg = MCTSConfig(simulations=1, k=2, rollouts=2, value_weight=0.9, prefer_verified=prefer)
    [r], _, _ = run(two_way, [toy()], cfg, 2, critic)
    b, a = r.tree.children
    assert b.scores == {"rollout": 0.0, "table": 1.0} and a.scores == {"rollout": 0.5, "table": 0.0}
    assert b.q == pytest.approx(0.9) and a.q == pytest.approx(0.05)
    assert r.info["source"] == source and r.answer == answer and r.info["verified_found"]
    assert r.info["best_value"] == pytest.approx(0.9)


def test_final_by_value_follows_the_highest_q():
    critic = TableCritic({"b": 0.0, "a": 1.0})
    cfg = MCTSConfig(simulations=1, k=2, value_weight=1.0, rollouts=0, final="value")
    [r], policy, _ = run(two_way, [toy()], cfg, 2, critic)
    assert r.steps == ("a\n",) and r.answer is None and r.info["source"] == "tree"  # no rollout to finish it
    assert all(c[2].stop for c in policy.calls)  # critic only: no rollouts


def test_blank_proposals_end_the_trace():
    [r], _, _ = run(lambda steps: [("  \n", -0.1)], [toy()], MCTSConfig(simulations=3, k=2))
    assert r.tree.terminal and r.tree.reward == 0.0 and not r.tree.children and r.tree.visits == 3


def test_rollouts_zero_without_a_critic_is_refused():
    with pytest.raises(PonderError, match="--rollouts 0 values leaves by the critic alone"):
        run(two_way, [toy()], MCTSConfig(rollouts=0, value_weight=1.0))


# --- (5) a stored expected tree pins the behaviour -------------------------------------------------------
def _rounded(x):
    if isinstance(x, float):
        return round(x, 9)
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def test_expected_tree():
    def menu(steps):
        return [(f"{w}\n", -0.1 * (i + len(steps))) for i, w in enumerate("axyz"[: 3 if steps else 4])]

    critic = TableCritic({"a": 0.9, "x": 0.2, "y": 0.7})
    cfg = MCTSConfig(simulations=12, k=2, k_max=3, widen_std=0.1, rollouts=2, value_weight=0.5, max_nodes=40, seed=3)
    [r], _, _ = run(menu, [toy(reference="a x x")], cfg, 3, critic)
    got = json.loads(json.dumps({"tree": r.tree.to_dict(), "steps": r.steps, "info": r.info}))
    if os.environ.get("PONDER_REGEN"):
        EXPECTED_TREE.parent.mkdir(exist_ok=True)
        EXPECTED_TREE.write_text(json.dumps(got, indent=1) + "\n")
    assert _rounded(got) == _rounded(json.loads(EXPECTED_TREE.read_text()))


def test_seed_reseeds_the_policy_per_batch_of_problems():
    seeds = []
    for cfg_seed, problems in [(None, [toy("p1")]), (3, [toy("p1")]), (3, [toy("p1")]), (3, [toy("p2")]), (4, [toy("p1")])]:
        _, policy, _ = run(four_way, problems, MCTSConfig(simulations=1, seed=cfg_seed))
        seeds.append(policy.seeds)
    assert seeds[0] == [] and seeds[1] == seeds[2] and len(set(map(tuple, seeds[1:]))) == 3


# --- (6) config validation -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, message",
    [
        ({"simulations": 0}, "--simulations must be > 0"),
        ({"k": -1}, "--k must be > 0"),
        ({"max_nodes": 0}, "--max-nodes must be > 0"),
        ({"token_budget": 0}, "--token-budget must be > 0"),
        ({"c_puct": 0.0}, "--c-puct must be > 0"),
        ({"final": "best"}, "--final: 'best' is not one of visits, value"),
        ({"k": 4, "k_max": 2}, r"--k-max must be >= --k \(4\), got 2"),
        ({"value_weight": 1.5}, r"--value-weight must be in \[0, 1\]"),
        ({"rollouts": 0}, "--rollouts must be > 0, or 0 with --value-weight 1"),
        ({"rollouts": -2, "value_weight": 1.0}, "--rollouts must be > 0"),
    ],
)
def test_config_validation(kw, message):
    with pytest.raises(PonderError, match=message) as e:
        MCTSConfig(**kw)
    assert "\n" not in str(e.value)


def test_registered_as_a_method():
    assert get_method("mcts") is METHODS["mcts"] and METHODS["mcts"].config is MCTSConfig
    assert not METHODS["mcts"].needs_critic  # rollouts alone can value leaves


# --- (7) end to end with the real (untrained) tiny model --------------------------------------------------
def test_end_to_end_with_the_untrained_tiny_model():
    model, tok = small_tiny_model()  # ponder.models.tiny.tiny_model with the test shape
    game24 = Game24(free_text=True)
    # Game of 24: the untrained model's steps are illegal, so they end the trace at once
    # the toy task: any text is a legal step, so the leaves are rolled out by the real model too
    for task, problems in ((game24, game24.problems("test")[:2]), (ToyTask(2), [toy("p1"), toy("p2")])):
        env = SearchEnv(HFPolicy(model, tok, name="tiny", seed=0), task)
        results = get_method("mcts").run(problems, env, MCTSConfig(simulations=3, k=2, seed=0))
        for p, r in zip(problems, results):
            assert r.problem == p and r.compute.tokens_generated > 0 and r.compute.tokens_read > 0
            assert 1 < r.tree.size() == r.info["nodes"] and r.tree.visits <= r.info["simulations"] == 3
            assert r.answer == task.answer(p, r.steps) and r.info["stopped"] == "simulations"
            for n in r.tree:
                assert all(c.parent is n for c in n.children)
                assert n is r.tree or n.terminal or "rollout" in n.scores
        assert env.spent == {}
    assert any("rollout" in n.scores for r in results for n in r.tree)


# --- (5) several simulations per tree per round (virtual loss) ----------------------------------------------
def test_parallel_simulations_fill_the_batch_and_leave_no_virtual_loss():
    def menu(steps):
        return [(f"{w}{len(steps)}\n", -0.1 * i) for i, w in enumerate("pqrs")]

    cfg1 = MCTSConfig(simulations=16, k=2, k_max=2)
    cfg4 = MCTSConfig(simulations=16, k=2, k_max=2, parallel=4)
    [r1], p1, _ = run(menu, [toy()], cfg1, max_steps=4)
    [r4], p4, _ = run(menu, [toy()], cfg4, max_steps=4)
    rounds1, rounds4 = len(p1.step_calls()), len(p4.step_calls())
    assert rounds4 < rounds1  # fewer, larger propose calls
    assert max(len(c[0]) for c in p4.step_calls()) > 1  # several leaves of one tree expanded in one call
    for call in p4.step_calls():
        assert len(call[0]) == len(set(call[0]))  # the picks of one round are distinct states
    assert r4.info["simulations"] <= 16 and r4.tree.visits <= 16


def test_virtual_losses_spread_the_picks_and_are_taken_back():
    from ponder.search.mcts import _Search, pick_leaves

    [r], _, _ = run(four_way, [toy()], MCTSConfig(simulations=1, k=4, k_max=4))  # the root and 4 children
    before = json.dumps(r.tree.to_dict())
    s = _Search(toy(), 0, root=r.tree, sims=0)
    picks = pick_leaves(s, MCTSConfig(simulations=100, k=4, k_max=4, parallel=3), mcts_puct())
    assert 2 <= len(picks) <= 3 and len(set(map(id, picks))) == len(picks)
    assert json.dumps(r.tree.to_dict()) == before  # every virtual visit was undone
    assert pick_leaves(s, MCTSConfig(simulations=100, k=4, k_max=4, parallel=1), mcts_puct()) == picks[:1]


def mcts_puct():
    from ponder.search.mcts import puct

    return puct


def test_parallel_one_is_the_sequential_search():
    cfg = MCTSConfig(simulations=12, k=2, k_max=4)
    [a], _, _ = run(four_way, [toy()], cfg)
    [b], _, _ = run(four_way, [toy()], MCTSConfig(simulations=12, k=2, k_max=4, parallel=1))
    assert a.tree.to_dict() == b.tree.to_dict()


def test_skip_finished_spends_simulations_on_open_states_only():
    def menu(steps):  # the policy's favourite first step is a dead end: "b" ends the trace at once
        return [("b\n", -0.01), ("a\n", -3.0), ("c\n", -3.0)] if not steps else [("x\n", -0.5), ("y\n", -0.6)]

    class EndsAtB(ToyTask):
        def is_terminal(self, problem, steps):
            return (bool(steps) and steps[0] == "b\n") or super().is_terminal(problem, steps)

    def search(skip):
        task = EndsAtB(3)
        env = SearchEnv(MenuPolicy(task, menu), task)
        [r] = mcts([toy(reference="a x x")], env, MCTSConfig(simulations=30, k=3, k_max=3, skip_finished=skip))
        return r

    plain, skip = search(False), search(True)
    b = lambda r: next(c for c in r.tree.children if c.step == "b\n")  # noqa: E731
    assert b(plain).visits >= 4  # plain PUCT re-selects the high-prior dead end (5 here)
    assert b(skip).visits == 1  # evaluated once, never selected again
    assert skip.tree.size() > plain.tree.size()
    assert skip.info["stopped"] in ("exhausted", "simulations")
    # a small tree runs out of open states: the search says so and stops early
    task = EndsAtB(2)
    [r] = mcts([toy(reference="a x")], SearchEnv(MenuPolicy(task, menu), task),
               MCTSConfig(simulations=200, k=3, k_max=3, skip_finished=True))
    assert r.info["stopped"] == "exhausted" and r.info["simulations"] < 200 and r.answer == "a x"
