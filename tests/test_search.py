"""Search methods driven by a fake, scripted policy: no model anywhere."""

from __future__ import annotations

import json
import math

import pytest

from ponder.compute import Compute
from ponder.critics import Verifier
from ponder.errors import PonderError
from ponder.models import SamplingParams, Samples, Step
from ponder.search import METHODS, Node, SearchEnv, State, get_method
from ponder.search.best_of_n import BestOfNConfig
from ponder.search.sampling import GreedyConfig, SamplingConfig
from ponder.tasks import get_task
from ponder.tasks.base import Problem
from ponder.tasks.game24 import Game24, solve

# --- the fake policy --------------------------------------------------------------------------------------


class ScriptedPolicy:
    """A deterministic Policy: ``script[prompt]`` is the list of whole completions (text after the prompt).

    Sample j of a prefix is completion ``j mod len``. For a whole-trace call (``stop == ()``) it is the
    rest of the completion after the prefix; for a step call, the rest up to and including the first
    stop string after non-blank text. Each token is one character; a prefix's compute is charged as
    tokens read = len(prefix) (once for its k samples), tokens generated = the sum over its samples,
    and a forward call and a few milliseconds per prefix.
    """

    name = "scripted"

    def __init__(self, script: dict[str, list[str]]):
        self.script = script
        self.calls: list[tuple[list[str], int, SamplingParams]] = []
        self.returned: list[list[Compute]] = []  # the per-prefix compute of each call
        self.total = Compute()

    def render(self, task, problem) -> str:
        return task.prompt(problem)

    def _completions(self, prefix: str) -> list[str]:
        for prompt, texts in self.script.items():
            if prefix.startswith(prompt):
                done = prefix[len(prompt) :]
                rests = [t[len(done) :] for t in texts if t.startswith(done)]
                assert rests, f"no scripted completion continues {prefix!r}"
                return rests
        raise AssertionError(f"unscripted prefix {prefix!r}")

    @staticmethod
    def _cut(text: str, stops: tuple[str, ...]) -> tuple[str, str]:
        for i in range(len(text)):
            for s in stops:
                if text.startswith(s, i) and text[:i].strip():
                    return text[: i + len(s)], "stop"
        return text, "eos"

    def sample(self, prefixes, k, params: SamplingParams) -> Samples:
        self.calls.append((list(prefixes), k, params))
        steps, compute = [], []
        self.returned.append(compute)
        for n, prefix in enumerate(prefixes):
            rests = self._completions(prefix)
            row = []
            for j in range(k):
                text, finish = self._cut(rests[j % len(rests)], params.stop)
                row.append(Step(text, tuple(range(len(text))), tuple([-0.5] * len(text)), finish))
            steps.append(row)
            c = Compute(sum(s.num_tokens for s in row), len(prefix), 1.0 + n, 0.001 * (n + 1))
            compute.append(c)
            self.total = self.total + c
        return Samples(steps, compute)


# --- game24 fixtures --------------------------------------------------------------------------------------
GAME24 = Game24(free_text=True)


def g24(*nums: int) -> Problem:
    return Game24._problem(nums, f"p-{'-'.join(map(str, nums))}")


P1 = g24(4, 4, 6, 8)
P1_GOOD = "4 + 8 = 12 (left: 4 6 12)\n6 - 4 = 2 (left: 2 12)\n2 * 12 = 24 (left: 24)\n"
P1_GOOD2 = "4 + 8 = 12 (left: 4 6 12)\n4 - 6 = -2 (left: -2 12)\n-2 * 12 = -24 (left: -24)\n"  # legal, wrong
P1_WRONG = "4 + 4 = 8 (left: 6 8 8)\n8 + 8 = 16 (left: 6 16)\n6 + 16 = 22 (left: 22)\n"
P1_ILLEGAL = "4 + 8 = 13 (left: 4 6 13)\n6 + 13 = 19 (left: 4 19)\n"
P1_ALT = "8 * 6 = 48 (left: 4 4 48)\n4 + 4 = 8 (left: 8 48)\n48 / 8 = 6 (left: 6)\n"

P2 = g24(1, 3, 4, 6)
P2_GOOD = "".join(solve([1, 3, 4, 6]))
P2_WRONG = "1 + 3 = 4 (left: 4 4 6)\n4 + 4 = 8 (left: 6 8)\n6 + 8 = 14 (left: 14)\n"


def env_for(script: dict[Problem, list[str]], task=GAME24, critic=None) -> tuple[SearchEnv, ScriptedPolicy]:
    policy = ScriptedPolicy({task.prompt(p): list(texts) for p, texts in script.items()})
    return SearchEnv(policy, task, critic), policy


# --- greedy, sampling, best-of-n --------------------------------------------------------------------------
def test_greedy_returns_the_scripted_trace():
    env, policy = env_for({P1: [P1_GOOD, P1_WRONG], P2: [P2_WRONG, P2_GOOD]})
    r1, r2 = get_method("greedy").run([P1, P2], env, GreedyConfig())
    assert r1.steps == tuple(GAME24.split_steps(P1_GOOD)) and r1.answer == "24"
    assert r2.steps == tuple(GAME24.split_steps(P2_WRONG)) and r2.answer == "14"
    assert r1.problem == P1 and r2.problem == P2
    # one batched whole-trace call at temperature 0, one sample per problem
    [(prefixes, k, params)] = policy.calls
    assert prefixes == [GAME24.prompt(P1), GAME24.prompt(P2)] and k == 1
    assert params.temperature == 0 and params.stop == ()
    assert params.max_tokens >= GAME24.max_steps * GAME24.max_step_tokens
    assert r1.tree.size() == 4 and r1.tree.find("0.0.0.0").terminal and r1.tree.find("0.0.0.0").reward == 1.0


def test_text_after_a_terminal_state_is_dropped():
    env, _ = env_for({P1: [P1_ILLEGAL + "2 * 12 = 24 (left: 24)\n"]})
    [r] = get_method("greedy").run([P1], env, GreedyConfig())
    assert r.steps == ("4 + 8 = 13 (left: 4 6 13)\n",)  # the illegal step ends the trace
    leaf = r.tree.find("0.0")
    assert leaf.terminal and leaf.reward == 0.0 and not leaf.children


def test_best_of_n_picks_a_correct_trace_and_scores_the_leaves():
    env, policy = env_for(
        {P1: [P1_WRONG, P1_ILLEGAL, P1_GOOD, P1_GOOD2], P2: [P2_WRONG, P2_WRONG, P2_WRONG, P2_WRONG]},
        critic=Verifier(GAME24),
    )
    r1, r2 = get_method("best-of-n").run([P1, P2], env, BestOfNConfig(n=4))
    assert r1.steps == tuple(GAME24.split_steps(P1_GOOD)) and r1.answer == "24"
    assert r1.info["best_score"] == 1.0 and r1.info["pass_at_n"] == 1.0
    assert r2.steps == tuple(GAME24.split_steps(P2_WRONG)) and r2.info["best_score"] == 0.0
    assert r2.info["pass_at_n"] == 0.0
    assert policy.calls[0][1] == 4 and policy.calls[0][2].stop == () and policy.calls[0][2].temperature == 1.0
    leaves = [n for n in r1.tree if not n.children]
    assert len(leaves) == 4
    by_text = {"".join(n.steps()): n.scores["verifier"] for n in leaves}
    assert by_text == {
        P1_WRONG: 0.0,
        GAME24.split_steps(P1_ILLEGAL)[0]: 0.0,  # the trace stops at its illegal step
        P1_GOOD: 1.0,
        P1_GOOD2: 0.0,
    }


def test_best_of_n_ties_go_to_the_earliest_sample():
    env, _ = env_for({P1: [P1_WRONG, P1_ALT, P1_GOOD2]}, critic=Verifier(GAME24))
    [r] = get_method("best-of-n").run([P1], env, BestOfNConfig(n=3))
    assert r.steps == tuple(GAME24.split_steps(P1_WRONG))


class ConstantCritic:
    name = "constant"

    def __init__(self, scores):
        self.scores = scores

    def score(self, problems, steps):
        return list(self.scores[: len(problems)]) if isinstance(self.scores, list) else self.scores(problems, steps)


def test_best_of_n_follows_the_critic_not_the_verifier():
    # a critic that prefers the wrong trace wins; the verifier reward stays on the leaves
    critic = ConstantCritic(lambda ps, ss: [float(len("".join(s))) for s in ss])
    env, _ = env_for({P1: [P1_GOOD, P1_GOOD2]}, critic=critic)
    [r] = get_method("best-of-n").run([P1], env, BestOfNConfig(n=2))
    assert r.steps == tuple(GAME24.split_steps(P1_GOOD2)) and r.info["best_score"] == len(P1_GOOD2)
    assert r.info["pass_at_n"] == 1.0


@pytest.mark.parametrize("returned", [[], [0.5], [0.5, 0.5, 0.5]])
def test_critic_with_the_wrong_number_of_scores_is_named(returned):
    env, _ = env_for({P1: [P1_GOOD, P1_WRONG]}, critic=ConstantCritic(lambda ps, ss: returned))
    with pytest.raises(PonderError, match=r"critic 'constant' returned \d scores for 2 states"):
        get_method("best-of-n").run([P1], env, BestOfNConfig(n=2))


def test_critic_nan_score_is_rejected():
    env, _ = env_for({P1: [P1_WRONG, P1_GOOD]}, critic=ConstantCritic(lambda ps, ss: [math.nan, 1.0]))
    with pytest.raises(PonderError, match="constant"):
        get_method("best-of-n").run([P1], env, BestOfNConfig(n=2))


def test_sampling_reports_mean_reward_and_pass_at_n():
    env, _ = env_for({P1: [P1_WRONG, P1_GOOD, P1_GOOD2, P1_GOOD]})
    [r] = get_method("sampling").run([P1], env, SamplingConfig(n=4, temperature=0.7))
    assert r.steps == tuple(GAME24.split_steps(P1_WRONG))  # the first sample is the answer
    assert r.info == {"mean_reward": 0.5, "pass_at_n": 1.0}


# --- self-consistency -------------------------------------------------------------------------------------
ARITH = get_task("arithmetic")
Q = Problem(id="arith-1", question="7 + 3 * 2 - 4", reference="9")
Q2 = Problem(id="arith-2", question="2 * 3 + 1", reference="7")


def worked(answer: int, first: str = "3 * 2 = 6\n") -> str:
    return f"{first}Answer: {answer}\n"


def test_self_consistency_majority_vote():
    env, _ = env_for(
        {Q: [worked(8, "x\n"), worked(9, "a\n"), worked(9, "b\n"), "no answer\n", worked(8, "y\n"), worked(9, "c\n")]},
        task=ARITH,
    )
    [r] = get_method("self-consistency").run([Q], env, SamplingConfig(n=6))
    assert r.answer == "9" and r.info["votes"] == {"8": 2, "9": 3}
    assert r.steps == ("a\n", "Answer: 9\n")  # the earliest trace with the winning answer
    assert ARITH.reward(Q, r.steps) == 1.0


def test_self_consistency_tie_goes_to_the_earliest_answer():
    env, _ = env_for({Q: [worked(5), worked(9), worked(9), worked(5), worked(7)], Q2: [worked(7), worked(6)]}, task=ARITH)
    r, r2 = get_method("self-consistency").run([Q, Q2], env, SamplingConfig(n=5))
    assert r.answer == "5" and r.info["votes"] == {"5": 2, "9": 2, "7": 1}
    assert r2.answer == "7"  # 7, 6, 7, 6, 7
    assert r2.info["votes"] == {"7": 3, "6": 2}


def test_self_consistency_without_any_answer():
    env, _ = env_for({Q: ["thinking\n", "still thinking\n"]}, task=ARITH)
    [r] = get_method("self-consistency").run([Q], env, SamplingConfig(n=2))
    assert r.answer is None and r.steps == ("thinking\n",) and r.info["votes"] == {}


def test_self_consistency_on_game24_is_refused():
    env, policy = env_for({P1: [P1_GOOD]})
    with pytest.raises(PonderError, match="self-consistency.*game24"):
        get_method("self-consistency").run([P1], env, SamplingConfig(n=2))
    assert policy.calls == []  # refused before spending anything


def test_unknown_method():
    with pytest.raises(PonderError, match="unknown method 'mcts-9000'"):
        get_method("mcts-9000")
    assert set(METHODS) >= {"greedy", "sampling", "self-consistency", "best-of-n"}
    assert get_method("best-of-n").needs_critic and not get_method("greedy").needs_critic


@pytest.mark.parametrize("cls", [SamplingConfig, BestOfNConfig])
@pytest.mark.parametrize("field, value", [("n", 0), ("n", -1), ("temperature", 0.0), ("top_p", 0.0)])
def test_configs_validate(cls, field, value):
    with pytest.raises(PonderError, match=f"--{field.replace('_', '-')} must be > 0"):
        cls(**{field: value})


# --- the tree -------------------------------------------------------------------------------------------
def test_sampled_traces_share_prefixes_in_one_tree():
    texts = [P1_GOOD, P1_GOOD2, P1_WRONG, P1_GOOD]  # GOOD and GOOD2 share a first step; GOOD repeats
    env, _ = env_for({P1: texts})
    [r] = get_method("sampling").run([P1], env, SamplingConfig(n=4))
    root = r.tree
    assert root.id == "0" and root.step == "" and root.steps() == []
    assert [c.step for c in root.children] == ["4 + 8 = 12 (left: 4 6 12)\n", "4 + 4 = 8 (left: 6 8 8)\n"]
    first = root.children[0]
    assert [c.step for c in first.children] == ["6 - 4 = 2 (left: 2 12)\n", "4 - 6 = -2 (left: -2 12)\n"]
    assert root.size() == 1 + 2 + 3 + 3
    leaves = [n for n in root if not n.children]
    assert sorted("".join(n.steps()) for n in leaves) == sorted({P1_GOOD, P1_GOOD2, P1_WRONG})
    for n in root:
        assert n.depth == len(n.steps()) and root.find(n.id) is n
        for j, c in enumerate(n.children):
            assert c.id == f"{n.id}.{j}" and c.parent is n
    assert all(leaf.terminal for leaf in leaves)
    assert {"".join(n.steps()): n.reward for n in leaves} == {P1_GOOD: 1.0, P1_GOOD2: 0.0, P1_WRONG: 0.0}


def test_node_add_path_and_find():
    root = Node()
    a = root.add_path(["x\n", "y\n"], reward=1.0, terminal=True)
    b = root.add_path(["x\n", "z\n"])
    assert a.id == "0.0.0" and b.id == "0.0.1" and a.reward == 1.0 and a.terminal
    assert root.add_path(["x\n", "y\n"]) is a
    assert root.add_path([]) is root
    assert root.find("0") is root and root.find("0.0.1") is b and b.steps() == ["x\n", "z\n"]
    assert [n.id for n in root] == ["0", "0.0", "0.0.0", "0.0.1"]
    assert [n.id for n in a.path()] == ["0.0", "0.0.0"]
    with pytest.raises(IndexError):
        root.find("0.3")


def test_node_json_round_trip_keeps_structure_ids_and_fields():
    env, _ = env_for({P1: [P1_GOOD, P1_GOOD2, P1_WRONG]}, critic=Verifier(GAME24))
    [r] = get_method("best-of-n").run([P1], env, BestOfNConfig(n=3))
    r.tree.children[0].visits, r.tree.children[0].value_sum, r.tree.children[0].prior = 3, 1.5, 0.25
    d = r.tree.to_dict()
    back = Node.from_dict(json.loads(json.dumps(d)))
    assert back.to_dict() == d
    assert [n.id for n in back] == [n.id for n in r.tree]
    for n in back:
        orig = r.tree.find(n.id)
        assert n.steps() == orig.steps() and n.scores == orig.scores and n.reward == orig.reward
        assert all(c.parent is n for c in n.children)
    assert back.children[0].q == 0.5


@pytest.mark.parametrize("bad", [[], "tree", None, {"id": "0"}, {"children": []}, {"id": "0", "children": [{"step": "x"}]}])
def test_node_from_dict_rejects_non_trees(bad):
    with pytest.raises(PonderError, match="not a ponder tree"):
        Node.from_dict(bad)


def test_node_from_dict_rejects_non_list_children():
    with pytest.raises(PonderError, match="not a ponder tree"):
        Node.from_dict({"id": "0", "children": None})


# --- compute ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, cfg", [("greedy", GreedyConfig()), ("sampling", SamplingConfig(n=3)), ("best-of-n", BestOfNConfig(n=3))])
def test_compute_is_charged_per_problem_and_adds_up(method, cfg):
    env, policy = env_for({P1: [P1_GOOD, P1_WRONG, P1_GOOD2], P2: [P2_WRONG, P2_GOOD]}, critic=Verifier(GAME24))
    results = get_method(method).run([P1, P2], env, cfg)
    total = Compute.total(r.compute for r in results)
    assert total == policy.total and total.tokens_generated > 0
    k = policy.calls[0][1]
    for r, texts in zip(results, ([P1_GOOD, P1_WRONG, P1_GOOD2], [P2_WRONG, P2_GOOD])):
        assert r.compute.tokens_read == len(GAME24.prompt(r.problem))
        assert r.compute.tokens_generated == sum(len(texts[j % len(texts)]) for j in range(k))
    assert env.spent == {}  # everything was handed to a result
    # a second run on the same env charges only its own work
    again = get_method(method).run([P2], env, cfg)
    assert again[0].compute == policy.returned[-1][0]
    assert [r.compute for r in results] == policy.returned[0]


# --- the env's step callable ------------------------------------------------------------------------------
def test_expand_samples_distinct_steps_from_the_state():
    env, policy = env_for({P1: [P1_GOOD, P1_WRONG]})
    first = GAME24.split_steps(P1_GOOD)
    out = env.expand([State(P1), State(P1, (first[0],))], k=2)
    assert [[s.text for s in row] for row in out] == [
        [first[0], GAME24.split_steps(P1_WRONG)[0]],
        [first[1]],  # the one step the script has there, sampled twice, is one proposal
    ]
    # the state short of k distinct steps is sampled again, up to distinct_rounds sampler calls in all
    assert [len(c[0]) for c in policy.calls] == [2] + [1] * (env.distinct_rounds - 1)
    params = policy.calls[0][2]
    assert params.stop == GAME24.step_stop and params.max_tokens == GAME24.max_step_tokens
    assert env.spent[P1.id] == policy.total
