"""``ponder improve --policy-update grpo``: GRPO as the loop's policy update, end to end on the small model,
resumed after a crash in its phase, and its bad inputs (no reward to learn from, a launcher, bad options)."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from test_improve import Boom, small

import ponder.loop as loop
import ponder.train.grpo as grpo
from ponder.cli import main
from ponder.errors import PonderError
from ponder.io import read_rows, write_jsonl
from ponder.loop import improve
from ponder.tasks import Problem, get_task

GRPO = {"steps": 2, "problems_per_step": 2, "group_size": 2}
REAL_GRPO = grpo.train_grpo


def grpo_run(**kw):
    return small(iterations=1, eval_methods=["greedy"], policy_update="grpo", grpo=GRPO, **kw)


def odd_length_reward(monkeypatch, calls: list) -> None:
    """The 4-step bootstrap never reaches 24, so every group would tie and GRPO skip its steps: inside
    GRPO only, a trace's reward is its length's parity, so groups differ and the policy moves."""
    def train_grpo(policy, task, problems, cfg, *a, **kw):
        calls.append({"problems": list(problems), "cfg": cfg, "critic": kw.get("critic")})
        task = copy.copy(task)
        task.reward = lambda p, steps: float(len("".join(steps)) % 2)
        return REAL_GRPO(policy, task, problems, cfg, *a, **kw)

    monkeypatch.setattr(grpo, "train_grpo", train_grpo)


def test_grpo_trains_the_policy_on_the_iterations_problems(tmp_path, monkeypatch):
    calls: list = []
    odd_length_reward(monkeypatch, calls)
    root = tmp_path / "run"
    improve(root, grpo_run(), progress=False)
    it = root / "iter-1"
    phases = json.loads((it / "phases.json").read_text())
    assert list(phases) == ["imagine", "search", "extract", "policy", "critics", "eval", "watch"]
    assert phases["policy"] == str(it / "policy")

    # on the iteration's imagined problems, never a test puzzle, with the verifier as reward (no ORM)
    [call] = calls
    ids = [p["id"] for p in read_rows(it / "problems.jsonl")]
    assert {p.id for p in call["problems"]} == set(ids) and call["critic"] is None
    test = {p.question for p in get_task("game24").problems("test")}
    assert not {p.question for p in call["problems"]} & test
    assert call["cfg"].seed == 1  # grpo.seed + the iteration, as expert iteration's

    rows = read_rows(it / "grpo.losses.jsonl")
    assert [r["step"] for r in rows] == [0, 1] and {"loss", "reward", "kl", "tokens_generated"} <= set(rows[0])
    before, after = (load_file(d / "model.safetensors") for d in (root / "iter-0" / "policy", it / "policy"))
    assert any(not torch.equal(before[k], after[k]) for k in before)

    # GRPO's compute is its own, apart from the search's (which still ran: it trains the critics)
    info = json.loads((it / "policy-train.json").read_text())
    assert info["from"] == str(root / "iter-0" / "policy") and info["reward"] == "verifier"
    g = info["grpo"]
    assert g["steps"] == 2 and g["traces"] == 8 and g["tokens_generated"] == rows[-1]["tokens_generated"] > 0
    assert phases["search"]["tokens_generated"] > 0 and len(read_rows(it / "search.jsonl")) == 4
    assert (it / "critics" / "value" / "critic.json").is_file()
    [_, m1] = read_rows(root / "metrics.jsonl")
    assert m1["policy_train"]["grpo"]["tokens_generated"] == g["tokens_generated"]
    assert "greedy" in m1["eval"]


def test_a_crash_in_grpo_resumes_by_redoing_only_that_phase(tmp_path, monkeypatch):
    def crash_after_one_step(policy, task, problems, cfg, log_path=None, *a, **kw):
        REAL_GRPO(policy, task, problems, replace(cfg, steps=1), log_path, *a, **kw)  # one row of the log written
        raise Boom()

    monkeypatch.setattr(grpo, "train_grpo", crash_after_one_step)
    root = tmp_path / "run"
    with pytest.raises(Boom):
        improve(root, grpo_run(), progress=False)
    phases = json.loads((root / "iter-1" / "phases.json").read_text())
    assert list(phases) == ["imagine", "search", "extract"]
    assert len(read_rows(root / "iter-1" / "grpo.losses.jsonl")) == 1
    searched = (root / "iter-1" / "search.jsonl").read_bytes()

    calls: list = []
    odd_length_reward(monkeypatch, calls)
    from ponder import search

    def no_search(*a, **kw):
        raise AssertionError("a finished search ran again")

    monkeypatch.setitem(search.METHODS, "mcts", search.METHODS["mcts"]._replace(run=no_search))
    improve(root, None, resume=True, progress=False)
    assert len(calls) == 1 and (root / "iter-1" / "search.jsonl").read_bytes() == searched
    phases = json.loads((root / "iter-1" / "phases.json").read_text())
    assert list(phases) == ["imagine", "search", "extract", "policy", "critics", "eval", "watch"]
    assert phases["policy"] == str(root / "iter-1" / "policy")
    assert [r["step"] for r in read_rows(root / "iter-1" / "grpo.losses.jsonl")] == [0, 1]  # one curve, not two
    assert [m["iteration"] for m in read_rows(root / "metrics.jsonl")] == [0, 1]


def test_a_nan_in_grpo_keeps_the_start_policy(tmp_path, monkeypatch):
    def nan(*a, **kw):
        raise PonderError("GRPO stopped: loss is nan at step 0")

    monkeypatch.setattr(grpo, "train_grpo", nan)
    root = tmp_path / "run"
    improve(root, grpo_run(), progress=False)
    assert json.loads((root / "iter-1" / "phases.json").read_text())["policy"] == str(root / "iter-0" / "policy")
    assert "loss is nan" in json.loads((root / "iter-1" / "policy-train.json").read_text())["grpo"]["error"]


def _unanswered_run(tmp_path, orm: bool, reference: str | None = None):
    """An Improver on a task without a verifier (GSM8K) whose iteration-2 problem has no gold answer (or
    ``reference``); with ``orm``, iteration 1 trained an ORM (an untrained one here)."""
    data = tmp_path / "mine.jsonl"
    write_jsonl(data, [{"question": f"What is {n} + 1?", "answer": f"#### {n + 1}"} for n in range(8)])
    cfg = small(task="gsm8k", data=str(data), validation=2, policy_update="grpo", grpo=GRPO)
    run = loop.Run(tmp_path / "run", cfg)
    imp = loop.Improver(run, progress=False)
    write_jsonl(run.it(2) / "problems.jsonl", [Problem("q", "What is 2 + 2?", reference).to_dict()])
    if orm:
        from conftest import small_tiny_model
        from ponder.critics.scalar import ScalarCritic
        from ponder.models.hf import HFPolicy

        model, tok = small_tiny_model()
        ScalarCritic.from_policy(HFPolicy(model, tok), imp.task, "orm").save(run.it(1) / "critics" / "orm")
        run.mark(1, "critics", {})
    return imp


def test_grpo_without_a_verifier_needs_an_orm(tmp_path):
    imp = _unanswered_run(tmp_path, orm=False)
    with pytest.raises(PonderError, match="grpo needs a verifier or an ORM: task 'gsm8k' cannot check iteration 2's") as e:
        loop.learn.train_policy(imp, 2, "never loaded")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("reference", [None, "4"])
def test_grpo_without_a_verifier_is_rewarded_by_gold_answers_or_else_the_last_orm(tmp_path, monkeypatch,
                                                                                   tiny_model_dir, reference):
    imp = _unanswered_run(tmp_path, orm=True, reference=reference)
    seen = {}

    def train_grpo(policy, task, problems, cfg, log_path=None, progress=True, tracker=None, critic=None):
        seen["critic"] = critic
        return {"steps": 0}

    monkeypatch.setattr(grpo, "train_grpo", train_grpo)
    assert loop.learn.train_policy(imp, 2, str(tiny_model_dir)) == str(imp.run.it(2) / "policy")
    info = json.loads((imp.run.it(2) / "policy-train.json").read_text())
    if reference is None:
        assert seen["critic"].kind == "orm" and info["reward"] == f"orm:{imp.run.it(1) / 'critics' / 'orm'}"
    else:  # a training problem's gold answer checks its traces, as it does in the search's rollouts
        assert seen["critic"] is None and info["reward"] == "gold answers"


def test_grpo_refuses_a_training_launcher(tmp_path):
    with pytest.raises(PonderError, match="grpo trains in one process.*without --train-launcher"):
        improve(tmp_path / "run", grpo_run(), progress=False, launcher="accelerate launch --num_processes 2")


@pytest.mark.parametrize("option,message", [
    ("grpo.group_size=1", "--group-size must be >= 2"),
    ("grpo.beta=-1", "--beta .*must be >= 0"),
    ("grpo.nope=1", "unknown option.*grpo.nope"),
])
def test_bad_grpo_options_are_one_line_errors(option, message, capsys, tmp_path):
    import re

    assert main(["improve", "--out", str(tmp_path / "r"), "--policy-update", "grpo", "--set", option]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and re.search(message, err), err


def test_grpo_options_come_from_set_and_yaml_and_move_with_the_seed(tmp_path):
    from ponder.config import apply_sets, build
    from ponder.loop import ImproveConfig

    cfg = build(ImproveConfig, apply_sets({"policy_update": "grpo"}, ["grpo.group_size=4", "grpo.beta=0"]))
    assert cfg.grpo.group_size == 4 and cfg.grpo.beta == 0 and cfg.grpo.steps == grpo.GRPOConfig().steps
    assert loop.seeded(build(ImproveConfig, {"seed": 3, "grpo": {"seed": 1}})).grpo.seed == 4
    import yaml

    from ponder.config import to_dict

    cfg = build(ImproveConfig, yaml.safe_load("policy_update: grpo\ngrpo:\n  steps: 3\n  epsilon: 0.1\n"))
    assert (cfg.grpo.steps, cfg.grpo.epsilon, cfg.grpo.group_size) == (3, 0.1, 8)
    assert build(ImproveConfig, yaml.safe_load(yaml.safe_dump(to_dict(cfg)))) == cfg  # config.yaml round trip
