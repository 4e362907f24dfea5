"""Honest compute (issue 17): every critic call charged, FLOPs, one budget for every search method, and
``ponder compare`` at matched budgets (resumable, paired tests, one-line errors)."""

from __future__ import annotations

import json
import math

import pytest

from conftest import small_tiny_model
from ponder.cli import main
from ponder.compare import CAPPED, mcnemar
from ponder.compute import Budget, Compute, flops_per_token
from ponder.critics import Mixture, Verifier
from ponder.critics.implicit import ImplicitReward
from ponder.critics.judge import Judge
from ponder.critics.scalar import ScalarCritic
from ponder.errors import PonderError
from ponder.models.hf import HFPolicy
from ponder.search import METHODS, SearchEnv, State, get_method
from ponder.tasks import get_task

TASK = get_task("game24")
PROBLEMS = TASK.problems("test")[:3]


@pytest.fixture(autouse=True)
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


@pytest.fixture()
def policy():
    model, tok = small_tiny_model(num_layers=2)
    return HFPolicy(model, tok, name="tiny")


def states_of(policy, n=4):
    """A few real states of each problem: the root and the policy's first listed actions."""
    env = SearchEnv(policy, TASK)
    out = []
    for p in PROBLEMS:
        out.append(State(p))
        out += [State(p, (step.text,)) for step in env.expand([State(p)], n - 1, 0.0)[0]]
    return out


# --- FLOPs ---------------------------------------------------------------------------------------------------
def test_flops_per_token_is_twice_the_weights_a_token_is_multiplied_by(policy):
    model = policy.model
    emb = model.get_input_embeddings().weight
    params = sum(p.numel() for p in model.parameters())
    tied = model.get_output_embeddings().weight is emb
    assert flops_per_token(model) == 2 * (params if tied else params - emb.numel())
    bare = model.base_model  # no output layer: the embedding is only a lookup
    assert flops_per_token(bare) == 2 * (sum(p.numel() for p in bare.parameters()) - emb.numel())
    assert policy.flops_per_token == flops_per_token(model) > 0


def test_the_policys_calls_are_priced_in_flops(policy):
    samples = policy.sample(["4 6 8 10"], 3, __import__("ponder.models", fromlist=["SamplingParams"]).SamplingParams(max_tokens=5))
    c = samples.compute[0]
    assert c.flops == pytest.approx(policy.flops_per_token * (c.tokens_generated + c.tokens_read))
    scores = policy.score(["4 6 8 10\n"], [["4 + 6 =", "8 - 4 ="]])
    assert scores.compute[0].flops == pytest.approx(policy.flops_per_token * scores.compute[0].tokens_read)


# --- every critic call charged -----------------------------------------------------------------------------
def test_a_critic_call_raises_the_problems_tokens_read_and_flops_by_exactly_what_it_read(policy):
    critic = ScalarCritic.from_policy(policy, TASK, "value")
    env = SearchEnv(policy, TASK, critic)
    states = states_of(policy)
    env.spent.clear()
    env.score(states)
    per_token = flops_per_token(critic.backbone, critic.head)
    for p in PROBLEMS:
        read = sum(len(critic.encode(s.problem, list(s.steps))[0]) for s in states if s.problem == p)
        c = env.spent[p.id]
        assert c.tokens_read == read and c.tokens_generated == 0
        assert c.flops == pytest.approx(per_token * read)
        assert c.seconds > 0 and c.forward_calls > 0
    # one batched call of 12 states: one forward call, shared in proportion to the tokens read
    assert sum(c.forward_calls for c in env.spent.values()) == pytest.approx(1.0)


def test_the_judge_and_the_implicit_reward_charge_what_their_models_read(policy):
    states = states_of(policy)
    problems, steps = [s.problem for s in states], [list(s.steps) for s in states]
    judge = Judge(policy, TASK)
    judge.score(problems, steps)
    prompts = [len(judge.tokenizer(judge.prompt(p, s))["input_ids"]) for p, s in zip(problems, steps)]
    assert [c.tokens_read for c in judge.last_compute] == prompts
    assert [c.flops for c in judge.last_compute] == pytest.approx([flops_per_token(policy.model) * n for n in prompts])

    ref, _ = small_tiny_model(seed=1, num_layers=2)
    implicit = ImplicitReward(policy.model, ref, policy.tokenizer, TASK)
    implicit.score(problems, steps)
    both = flops_per_token(policy.model) + flops_per_token(ref)
    for c, p, s in zip(implicit.last_compute, problems, steps):
        n = len(implicit.encode(p, s)[0])
        assert c.tokens_read == 2 * n and c.flops == pytest.approx(both * n)  # two models read the state


def test_a_mixture_charges_the_sum_of_its_parts_and_the_verifier_nothing(policy):
    value = ScalarCritic.from_policy(policy, TASK, "value")
    mix = Mixture([value, Verifier(TASK)], [1, 1])
    states = states_of(policy)
    args = [s.problem for s in states], [list(s.steps) for s in states]
    mix.score(*args)
    value.score(*args)
    assert [c.tokens_read for c in mix.last_compute] == [c.tokens_read for c in value.last_compute]
    env = SearchEnv(policy, TASK, Verifier(TASK))
    env.score(states)
    assert set(env.spent.values()) == {Compute()}


# --- one budget for every method ---------------------------------------------------------------------------
BUDGETED = [m for m in METHODS if m not in ("greedy", "self-consistency")]


@pytest.mark.parametrize("method", BUDGETED)
def test_every_search_method_stops_within_its_budget(policy, method):
    """Unbounded but for the budget (the caps compare uses), each method would spend far more than 120
    generated tokens a problem; with the budget it stops within it, at most a quarter beyond where the
    mean cost of its work so far misjudged the next piece."""
    m = get_method(method)
    names = {f for f in m.config.__dataclass_fields__}
    cfg = m.config(**{f: 256 for f in CAPPED if f in names})
    critic = Verifier(TASK) if m.needs_critic else None
    budget = Budget(120)
    free = m.run(PROBLEMS, SearchEnv(policy, TASK, critic), cfg)
    held = m.run(PROBLEMS, SearchEnv(policy, TASK, critic, budget=budget), cfg)
    assert sum(r.compute.tokens_generated for r in free) > 3 * 120 * 1.5  # the budget is what binds
    for r in held:
        assert r.compute.tokens_generated <= 1.25 * 120, (method, r.compute, r.info)


def test_a_flops_budget_counts_the_critics_reading(policy):
    critic = ScalarCritic.from_policy(policy, TASK, "value")
    cfg = get_method("beam").config(max_nodes=256)
    budget = Budget(2e8, "flops")  # the first expansion and its critic call: about 7.5e7
    held = get_method("beam").run(PROBLEMS, SearchEnv(policy, TASK, critic, budget=budget), cfg)
    free = get_method("beam").run(PROBLEMS, SearchEnv(policy, TASK, critic), cfg)
    assert all(r.compute.flops <= 1.25 * budget.amount for r in held)
    assert all(f.compute.flops > h.compute.flops for f, h in zip(free, held))
    assert any(r.info.get("stopped") == "budget" for r in held)


def test_bad_budgets_are_one_line_errors():
    with pytest.raises(PonderError, match="--budget must be > 0, got 0"):
        Budget(0)
    with pytest.raises(PonderError, match="unknown unit 'watts'"):
        Budget(10, "watts")

    class Server:
        name = "openai:http://x"

    with pytest.raises(PonderError, match="--budget-unit flops needs a local model"):
        SearchEnv(Server(), TASK, budget=Budget(1e9, "flops"))


def test_mcnemar_is_the_exact_binomial_test_on_the_problems_only_one_solved():
    a = [True] * 7 + [False] * 3
    b = [False] * 6 + [True] * 4
    only_a, only_b, p = mcnemar(a, b)
    assert (only_a, only_b) == (6, 3)
    assert p == pytest.approx(2 * sum(math.comb(9, k) for k in range(4)) / 2**9)
    assert mcnemar([True, False], [True, False])[2] == 1.0


# --- ponder compare ------------------------------------------------------------------------------------------
def compare_args(model, out, *extra):
    return ["compare", "--model", str(model), "--task", "game24", "--limit", "2", "--out", str(out), "--quiet",
            "--methods", "best-of-n", "beam", "--budgets", "40,80", *extra]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--budgets", "0"], "--budget must be > 0, got 0"),
        (["--budgets", "100,lots"], "'lots' is not a number"),
        (["--budget-unit", "watts"], "unknown unit 'watts'"),
        (["--methods", "beam-me-up"], "unknown method 'beam-me-up'"),
        (["--methods", "beam=oracle"], "unknown critic 'oracle'"),
        (["--methods", "beam="], "no critic after '='"),
        (["--methods", "beam", "beam"], "'beam' is given twice"),
        (["--set", "mcts.k=8"], "--set mcts: not among --methods"),
        (["--set", "beam.width=3"], "unknown option(s) beam.width"),
    ],
)
def test_compare_bad_input_is_one_line_before_any_model_is_loaded(tmp_path, capsys, extra, message):
    out = tmp_path / "cmp.jsonl"
    assert main(compare_args(tmp_path / "no-such-model", out, *extra)) == 2  # the model is never reached
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("ponder: error: ") and message in err[0], err
    assert not out.exists()


def test_eval_takes_a_budget_and_refuses_a_bad_one(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run.jsonl"
    assert main(["eval", "--model", str(tiny_model_dir), "--out", str(out), "--quiet", "--budget", "-1"]) == 2
    assert "--budget must be > 0" in capsys.readouterr().err and not out.exists()
    args = ["eval", "--model", str(tiny_model_dir), "--out", str(out), "--quiet", "--limit", "2", "--method", "mcts",
            "--budget", "100", "--simulations", "256"]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["compute"]["tokens_generated"] <= 1.25 * 100 and r["info"]["stopped"] == "budget" for r in rows)
    assert all(r["compute"]["flops"] > 0 for r in rows)


def keys(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(r["method"], r["budget"], r["problem_id"]) for r in rows]


def test_compare_writes_a_row_per_method_budget_and_problem_and_resumes(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "cmp.jsonl"
    assert main(compare_args(tiny_model_dir, out)) == 0
    first = keys(out)
    assert len(first) == len(set(first)) == 2 * 2 * 2
    printed = capsys.readouterr().out
    assert "| best-of-n | 40 | 2 |" in printed and "McNemar" in printed and out.with_suffix(".png").is_file()

    # killed mid-write: three whole rows and a torn fourth are left; the rerun redoes only the rest
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:25])
    assert main(compare_args(tiny_model_dir, out)) == 0
    again = keys(out)
    assert len(again) == len(set(again)) == 8 and again[:3] == first[:3]

    # a rerun adds only what is new (a budget, a method), and refuses other settings for the same rows
    assert main(compare_args(tiny_model_dir, out, "--budgets", "40,80,120")) == 0
    assert len(keys(out)) == 12
    assert main(compare_args(tiny_model_dir, out, "--set", "beam.beam_width=2")) == 2
    assert "written with other settings" in capsys.readouterr().err
    assert len(keys(out)) == 12


def test_each_state_is_charged_only_the_actions_it_draws(policy):
    """A rollout step draws as many actions at each state as it has continuations there; drawing the
    batch's largest number at every state charged actions nobody took as generated tokens."""
    env = SearchEnv(policy, TASK)
    a, b = State(PROBLEMS[0]), State(PROBLEMS[1])
    one, three = env.expand([a, b], [1, 3], 1.0)
    assert len(one) == 1 and len(three) == 3
    assert env.spent[a.problem.id].tokens_generated == one[0].num_tokens
    assert env.spent[b.problem.id].tokens_generated == sum(p.num_tokens for p in three)
    # a rollout: at each state, as many distinct actions as continuations went through it, and no more
    env.spent.clear()
    p = PROBLEMS[2]
    traces = env.rollout([State(p)], 5, 1.0)[0]
    edges = {(t[:d], t[d]) for t in traces for d in range(len(t))}
    charged = 0
    for steps, step in edges:
        legal, _, ntok = env._priors[p][steps]
        charged += ntok[legal.index(TASK.action_of(step))]
    assert env.spent[p.id].tokens_generated == charged
