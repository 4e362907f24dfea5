"""``ponder improve --search-method best-of-n``: the search phase samples whole traces instead of searching a tree,
so that ``--policy-update sft`` is STaR (rejection-sampling fine-tuning on verified samples). The option and its
bad values, the flat tree's Monte-Carlo values (what the critics and expert targets read), and the loop end to end."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_improve import Boom, small
from test_search import GAME24, P1, P1_GOOD, P1_GOOD2, P1_WRONG, env_for

from ponder.cli import build_parser
from ponder.errors import PonderError
from ponder.io import read_rows
from ponder.loop import improve
from ponder.search import get_method
from ponder.search.best_of_n import BestOfNConfig
from ponder.search.tree import Node
from ponder.tasks import Problem, get_task
from ponder.tasks.game24 import NumberGame
from ponder.train import data


def test_the_option_parses_on_the_command_line_and_in_the_config():
    args = build_parser().parse_args(["improve", "--search-method", "best-of-n", "--search-n", "6"])
    assert args.cfg_search_method == "best-of-n" and args.cfg_search_n == 6
    cfg = small(search_method="best-of-n", search_n=6)
    assert cfg.search_method == "best-of-n" and cfg.search_n == 6
    assert small().search_method == "mcts" and small().search_n is None


@pytest.mark.parametrize("values, message", [
    ({"search_method": "beam"}, "--search-method: 'beam' is not one of mcts, best-of-n"),
    ({"search_method": "best-of-n", "search_n": 0}, "--search-n must be > 0, got 0"),
])
def test_bad_values_are_one_line_errors(values, message):
    with pytest.raises(PonderError) as e:
        small(**values)
    assert str(e.value) == message


def test_a_sampled_tree_carries_monte_carlo_values_that_train_data_read():
    """q of a state = the share of its samples the verifier accepted: the value and PRM labels and the expert
    targets come from it, as from a searched tree's Q."""
    env, _ = env_for({P1: [P1_GOOD, P1_GOOD2, P1_WRONG, P1_GOOD]})  # GOOD and GOOD2 share their first step
    from ponder.critics import Verifier

    env.critic = Verifier(GAME24)
    [r] = get_method("best-of-n").run([P1], env, BestOfNConfig(n=4))
    root = Node.from_dict(r.tree.to_dict())  # as extract reads it back from search.jsonl
    first, wrong = root.children
    assert (root.visits, root.q) == (4, 0.5)
    assert (first.visits, first.q) == (3, pytest.approx(2 / 3)) and (wrong.visits, wrong.q) == (1, 0.0)
    [target, *_] = data.policy_targets(P1, root, GAME24)
    assert target["prefix"] == [] and target["visits"] == [3, 1] and target["q"] == [pytest.approx(2 / 3, abs=1e-6), 0.0]
    prm = {tuple(s): y for s, y in ((r["steps"], r["labels"]) for r in data.critic_records(P1, root, data.prm_label("q")))}
    assert prm[tuple(GAME24.split_steps(P1_WRONG))][0] == 0.0
    assert any(y[0] == pytest.approx(2 / 3) for y in prm.values())
    [good] = [t for t in data.verified_traces(P1, root, GAME24) if "".join(t["steps"]) == P1_GOOD]
    assert len(data.verified_traces(P1, root, GAME24)) == 1 and good


def odd_length_wins(monkeypatch) -> None:
    """The 4-step bootstrap never reaches 24: a finished trace of odd length counts as solved instead (everywhere:
    the search's verifier, the data and the evaluation), so that some samples are verified and SFT has data."""
    def reward(self, problem, steps):
        return float(self.is_terminal(problem, steps) and len("".join(steps)) % 2 == 1)

    monkeypatch.setattr(NumberGame, "reward", reward)


def test_star_end_to_end_trains_the_policy_on_verified_samples(tmp_path, monkeypatch):
    odd_length_wins(monkeypatch)
    root = tmp_path / "run"
    improve(root, small(iterations=1, eval_methods=["greedy"], search_method="best-of-n", search_n=4,
                        policy_update="sft"), progress=False)
    it = root / "iter-1"
    phases = json.loads((it / "phases.json").read_text())
    assert list(phases) == ["imagine", "search", "extract", "policy", "critics", "eval", "watch"]

    # the search: 4 samples per problem, no tree search, their tokens counted as MCTS's are
    rows = read_rows(it / "search.jsonl")
    assert len(rows) == 4 and {r["method"] for r in rows} == {"best-of-n"}
    assert all(Node.from_dict(r["tree"]).visits == 4 for r in rows)
    s = phases["search"]
    assert s["method"] == "best-of-n" and s["n"] == 4 and s["guide"] is None
    total = sum(r["compute"]["tokens_generated"] for r in rows)
    assert total > 0 and s["tokens_generated"] == pytest.approx(total / 4)
    meta = json.loads((it / "search.jsonl.meta.json").read_text())
    assert meta["method"] == "best-of-n" and meta["config"]["n"] == 4

    # the SFT data: every trace verified, and one the samples wrote
    sft = read_rows(it / "data" / "sft.jsonl")
    assert sft
    game = get_task("game24")  # its reward is the patched one
    sampled = {(r["question"], tuple(n.steps())) for r in rows for n in Node.from_dict(r["tree"]) if n.terminal}
    for rec in sft:
        p = Problem.from_dict(rec["problem"])
        assert game.reward(p, rec["steps"]) == 1.0 and (p.question, tuple(rec["steps"])) in sampled

    # the policy learned from them by SFT, the critics from the flat trees
    info = json.loads((it / "policy-train.json").read_text())
    assert info["sft"]["traces"] == len(sft) and phases["policy"] == str(it / "policy")
    before, after = (load_file(d / "model.safetensors") for d in (root / "iter-0" / "policy", it / "policy"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (it / "critics" / "value" / "critic.json").is_file() and (it / "critics" / "prm" / "critic.json").is_file()
    prm = read_rows(it / "data" / "prm.jsonl")
    # a sampled tree has no rollouts: its unfinished steps are labelled by their share of verified samples (Q)
    assert any(len(r["steps"]) > 1 and r["labels"][0] is not None for r in prm)
    assert "best-of-4 sampling" in (root / "report.md").read_text()


def test_expert_iteration_learns_from_the_flat_tree_of_samples(tmp_path, monkeypatch):
    """--policy-update expert with best-of-n: the improved policy at the states where the samples part ways."""
    odd_length_wins(monkeypatch)
    root = tmp_path / "run"
    improve(root, small(iterations=1, eval_methods=["greedy"], search_method="best-of-n", search_n=8,
                        policy_update="expert", expert={"steps": 2, "batch_size": 4, "sft_batch": 2}), progress=False)
    it = root / "iter-1"
    targets = read_rows(it / "data" / "policy_targets.jsonl")
    assert targets and all(sum(t["visits"]) >= 2 for t in targets)
    info = json.loads((it / "policy-train.json").read_text())
    assert info["expert"]["steps"] >= 1 and json.loads((it / "phases.json").read_text())["policy"] == str(it / "policy")


def test_a_crash_in_the_sampling_search_resumes_without_sampling_a_problem_twice(tmp_path, monkeypatch):
    from ponder import search

    real = search.METHODS["best-of-n"].run
    calls = {"n": 0}

    def crashing(problems, env, cfg):
        calls["n"] += 1
        if calls["n"] == 2:  # the first batch of 2 is written, the second crashes
            raise Boom()
        return real(problems, env, cfg)

    monkeypatch.setitem(search.METHODS, "best-of-n", search.METHODS["best-of-n"]._replace(run=crashing))
    root = tmp_path / "run"
    cfg = small(iterations=1, eval_methods=["greedy"], search_method="best-of-n", search_n=2, policy_update="sft")
    with pytest.raises(Boom):
        improve(root, cfg, progress=False)
    before = [r["problem_id"] for r in read_rows(root / "iter-1" / "search.jsonl")]
    assert len(before) == 2

    sampled = []

    def counting(problems, env, cfg):
        sampled.extend(p.id for p in problems)
        return real(problems, env, cfg)

    monkeypatch.setitem(search.METHODS, "best-of-n", search.METHODS["best-of-n"]._replace(run=counting))
    improve(root, None, resume=True, progress=False)
    ids = [r["problem_id"] for r in read_rows(root / "iter-1" / "search.jsonl")]
    assert len(ids) == 4 == len(set(ids)) and ids[:2] == before and not set(sampled) & set(before)
    assert "policy" in json.loads((root / "iter-1" / "phases.json").read_text())
