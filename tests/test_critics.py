"""Learned critics (value head, PRM, ORM), the judge, mixtures, and the critic spec on the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import small_tiny_model
from ponder.critics import Mixture, Verifier, get_critic, parse_critic
from ponder.critics.judge import Judge
from ponder.critics.scalar import ScalarCritic, aggregate
from ponder.errors import PonderError
from ponder.models.hf import HFPolicy
from ponder.tasks import Problem, get_task
from ponder.train.critic import CriticConfig, train_critic

TASK = get_task("game24")
P = Problem("p", "4 6 8 10", meta={"numbers": [4, 6, 8, 10]})
GOOD = ["10 - 6 = 4 (left: 4 8 4)\n", "4 + 4 = 8 (left: 8 8)\n"]
BAD = ["10 + 8 = 18 (left: 4 6 18)\n", "18 - 6 = 12 (left: 4 12)\n"]


@pytest.fixture()
def policy():
    model, tok = small_tiny_model(num_layers=2)
    return HFPolicy(model, tok, name="tiny")


def test_scores_are_one_probability_per_state(policy):
    critic = ScalarCritic.from_policy(policy, TASK, "value")
    scores = critic.score([P, P, P], [[], GOOD[:1], GOOD])
    assert len(scores) == 3 and all(0 < s < 1 for s in scores)
    # the critic's backbone is a copy: training it leaves the policy alone
    assert critic.backbone is not policy.model.base_model
    assert torch.equal(critic.backbone.embed_tokens.weight, policy.model.model.embed_tokens.weight)


def test_step_logits_give_one_output_per_step(policy):
    critic = ScalarCritic.from_policy(policy, TASK, "prm")
    [z0, z2] = critic.step_logits([P, P], [[], GOOD])
    assert z0.shape == (1,) and z2.shape == (2,)
    # the output after step 1 does not depend on step 2 (causal backbone, read at each step's end)
    [z1] = critic.step_logits([P], [GOOD[:1]])
    assert z1[0].item() == pytest.approx(z2[0].item(), abs=1e-5)


@pytest.mark.parametrize("how,expected", [("last", 0.5), ("min", 0.2), ("product", 0.9 * 0.2 * 0.5)])
def test_prm_aggregation(how, expected):
    assert aggregate(torch.tensor([0.9, 0.2, 0.5]), how) == pytest.approx(expected)


def test_training_separates_good_from_bad_states_and_round_trips(policy, tmp_path):
    """A value critic learns labels that depend on the state (a reachable 24 or not), on held-out problems too."""
    rng_problems = TASK.imagine(40, seed=3)
    records = []
    for p in rng_problems:
        nums = p.meta["numbers"]
        good = TASK.random_trace(nums, __import__("random").Random(p.id))[:1]
        label = float(TASK.can_reach(p, good))
        records.append({"problem": p.to_dict(), "steps": good, "labels": [label]})
    critic = ScalarCritic.from_policy(policy, TASK, "value")
    before = critic.score([Problem.from_dict(r["problem"]) for r in records], [r["steps"] for r in records])
    metrics = train_critic(critic, records, CriticConfig(steps=40, batch_size=16, lr=3e-3, holdout=0.2), progress=False)
    assert metrics["holdout_labels"] > 0 and math.isfinite(metrics["holdout_loss"])
    assert metrics["train_loss"] < metrics["holdout_baseline_loss"] * 1.5
    after = critic.score([Problem.from_dict(r["problem"]) for r in records], [r["steps"] for r in records])
    assert after != before
    critic.save(tmp_path / "value")
    loaded = ScalarCritic.load(tmp_path / "value", TASK, device="cpu")
    assert loaded.kind == "value" and loaded.agg == "last"
    again = loaded.score([Problem.from_dict(r["problem"]) for r in records], [r["steps"] for r in records])
    assert again == pytest.approx(after, abs=1e-5)


def test_holdout_measurement_is_capped_at_holdout_paths(policy):
    records = [{"problem": p.to_dict(), "steps": ["1 + 1 = 2 (left: 2)"], "labels": [float(i % 2)]}
               for i, p in enumerate(TASK.imagine(40, seed=4))]
    critic = ScalarCritic.from_policy(policy, TASK, "value")
    full = train_critic(critic, records, CriticConfig(steps=1, batch_size=4, holdout=0.5), progress=False)
    capped = train_critic(critic, records, CriticConfig(steps=1, batch_size=4, holdout=0.5, holdout_paths=3), progress=False)
    assert full["holdout_labels"] == 20 and capped["holdout_labels"] == 3


def test_value_critic_fits_a_rule(policy):
    """Squared error falls well below always predicting the mean: the head + backbone learn."""
    records = [{"problem": P.to_dict(), "steps": GOOD[:1], "labels": [1.0]},
               {"problem": P.to_dict(), "steps": BAD[:1], "labels": [0.0]}] * 8
    critic = ScalarCritic.from_policy(policy, TASK, "value")
    train_critic(critic, records, CriticConfig(steps=60, batch_size=8, lr=3e-3, holdout=0.0), progress=False)
    good, bad = critic.score([P, P], [GOOD[:1], BAD[:1]])
    assert good > 0.8 and bad < 0.2


def test_a_frozen_backbone_reads_each_path_once_and_trains_as_without_the_cache(policy, monkeypatch):
    """With tune_backbone=False the head trains on cached features: the backbone sees each distinct
    path once, and the trained critic equals one trained by running the backbone every step."""
    import ponder.train.critic as tc

    records = [{"problem": P.to_dict(), "steps": GOOD[:1], "labels": [1.0]},
               {"problem": P.to_dict(), "steps": BAD[:1], "labels": [0.0]},
               {"problem": P.to_dict(), "steps": GOOD, "labels": [1.0, 1.0]}]
    cfg = CriticConfig(steps=40, batch_size=4, lr=3e-2, holdout=0.0, balance=0.25, tune_backbone=False)

    def trained(cache: bool):
        critic = ScalarCritic.from_policy(policy, TASK, "value")
        rows = []
        critic.backbone.register_forward_hook(lambda m, args, kw, out: rows.append(kw["input_ids"].shape[0]), with_kwargs=True)
        if not cache:
            monkeypatch.setattr(tc, "FrozenFeatures", lambda critic: None)
        train_critic(critic, records, cfg, progress=False)
        monkeypatch.undo()
        return critic, sum(rows)

    cached, rows = trained(cache=True)
    assert rows == len(records)  # 40 steps of 4 paths, and the backbone ran over 3 paths
    plain, plain_rows = trained(cache=False)
    assert plain_rows == 40 * 4
    states = [GOOD[:1], BAD[:1], GOOD]
    assert cached.score([P] * 3, states) == pytest.approx(plain.score([P] * 3, states), abs=1e-5)
    good, bad, _ = cached.score([P] * 3, states)
    assert good > 0.7 and bad < 0.3


def test_nan_critic_loss_stops(policy, monkeypatch):
    import ponder.train.critic as tc

    monkeypatch.setattr(tc, "value_loss", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    critic = ScalarCritic.from_policy(policy, TASK, "value")
    records = [{"problem": P.to_dict(), "steps": GOOD, "labels": [1.0, 1.0]}]
    with pytest.raises(PonderError, match="value critic training stopped: loss is nan"):
        train_critic(critic, records, CriticConfig(steps=3), progress=False)


def test_corrupt_or_wrong_critic_folders_are_named(policy, tmp_path):
    with pytest.raises(PonderError, match="not a critic folder"):
        ScalarCritic.load(tmp_path, TASK)
    critic = ScalarCritic.from_policy(policy, TASK, "orm")
    critic.save(tmp_path / "orm")
    with pytest.raises(PonderError, match="holds the orm critic, not a value one"):
        get_critic(f"value:{tmp_path / 'orm'}", TASK)
    (tmp_path / "orm" / "head.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(PonderError, match="corrupt critic checkpoint"):
        ScalarCritic.load(tmp_path / "orm", TASK)
    (tmp_path / "orm" / "critic.json").write_text("{")
    with pytest.raises(PonderError, match="corrupt critic metadata"):
        ScalarCritic.load(tmp_path / "orm", TASK)


@pytest.mark.parametrize("spec,message", [
    ("value", "needs a folder"),
    ("verifier:x", "takes no path"),
    ("oracle", "unknown critic 'oracle'"),
    ("verifier@zero", "is not a number"),
    ("verifier@-1", "must be > 0"),
    ("verifier,,judge", "empty term"),
])
def test_bad_critic_specs(spec, message):
    with pytest.raises(PonderError, match=message):
        parse_critic(spec)


def test_mixture_is_the_weighted_mean_and_names_a_bad_part():
    class Const:
        def __init__(self, name, v):
            self.name, self.v = name, v

        def score(self, problems, steps):
            return [self.v] * len(problems) if self.v is not None else [0.0]

    mix = Mixture([Const("a", 1.0), Const("b", 0.0)], [3, 1])
    assert mix.score([P, P], [[], []]) == [0.75, 0.75]
    assert mix.name == "a@3+b@1"
    with pytest.raises(PonderError, match="critic 'bad' returned 1 scores for 2 states"):
        Mixture([Const("a", 1.0), Const("bad", None)], [1, 1]).score([P, P], [[], []])
    spec = get_critic("verifier@2,verifier@1", TASK)
    right = ["10 - 6 = 4 (left: 4 8 4)\n", "4 * 4 = 16 (left: 8 16)\n", "8 + 16 = 24 (left: 24)\n"]
    assert isinstance(spec, Mixture) and spec.score([P, P], [right, GOOD]) == [1.0, 0.0]
    assert isinstance(get_critic("verifier", TASK), Verifier)


def test_judge_reads_three_words_in_one_pass(policy):
    judge = Judge(policy, TASK)
    assert set(judge.word_ids) == {"sure", "likely", "impossible"}
    scores = judge.score([P, P, P], [[], GOOD[:1], BAD[:1]])
    assert len(scores) == 3 and all(0 <= s <= 1 for s in scores)
    assert "4 8 4" in judge.prompt(P, GOOD[:1]) and "impossible" in judge.prompt(P, ["nonsense\n"])


def test_critic_saved_metadata(policy, tmp_path):
    ScalarCritic.from_policy(policy, TASK, "prm", agg="product").save(tmp_path / "prm")
    meta = json.loads((tmp_path / "prm" / "critic.json").read_text())
    assert meta == {"kind": "prm", "aggregate": "product", "hidden_size": 64, "prior_shift": 0.0}


def test_critic_name_matches_the_loaded_critics_name_without_loading_it(tmp_path):
    from ponder.critics import critic_name

    task = get_task("game24")
    assert critic_name("verifier", task) == get_critic("verifier", task).name == "verifier"
    assert critic_name("value:/x@1,prm:/y@0.5", task) == "value@1+prm@0.5"
    assert critic_name("orm:/z", task) == "orm"
    with pytest.raises(PonderError, match="unknown critic"):
        critic_name("nope", task)


def test_auc_is_the_mann_whitney_probability_with_ties_as_half():
    import itertools
    import random

    from ponder.train.critic import auc

    assert auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([False, False, True, True])) == 0.75
    assert auc(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([False, True, True])) == 0.5
    assert auc(torch.tensor([1.0, 2.0]), torch.tensor([True, True])) is None
    rng = random.Random(0)
    s = [rng.choice([0.0, 0.5, 1.0, 2.0]) for _ in range(40)]
    y = [rng.random() < 0.3 for _ in range(40)]
    pairs = [(a, b) for (a, ya), (b, yb) in itertools.product(zip(s, y), repeat=2) if ya and not yb]
    brute = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert auc(torch.tensor(s), torch.tensor(y)) == pytest.approx(brute)


def test_balance_draws_that_share_of_each_batch_from_successful_paths():
    import random

    from ponder.train.critic import draw

    paths = [{"labels": [0.0], "i": i} for i in range(100)] + [{"labels": [0.0, 1.0], "i": 100}]
    positive = [p for p in paths if max(p["labels"]) > 0.5]
    rng = random.Random(0)
    batch = draw(paths, positive, CriticConfig(batch_size=8, balance=0.5), rng)
    assert len(batch) == 8 and sum(p["i"] == 100 for p in batch) >= 4
    uniform = [draw(paths, positive, CriticConfig(batch_size=8), rng) for _ in range(20)]
    assert all(len(b) == 8 and len({p["i"] for p in b}) == 8 for b in uniform)  # balance 0: a plain sample
    assert draw(paths[:100], [], CriticConfig(batch_size=8, balance=0.5), rng)  # no successes: uniform
    with pytest.raises(PonderError, match="critic.balance"):
        CriticConfig(balance=1.0)


def test_balanced_training_takes_its_prior_shift_off_again():
    from ponder.train.critic import prior_shift

    paths = [{"labels": [0.0, 0.0]} for _ in range(98)] + [{"labels": [0.0, 1.0]} for _ in range(2)]
    positive = paths[98:]
    assert prior_shift(paths, positive, 0.0) == 0.0 and prior_shift(paths, [], 0.5) == 0.0
    # true label mean m = 2/200 = 0.01; half of each batch from successes: m_bal = (0.5*0.5 + 0.5*0.01) / 1 = 0.255
    m, m_bal = 0.01, 0.255
    logit = lambda x: math.log(x / (1 - x))  # noqa: E731
    assert prior_shift(paths, positive, 0.5) == pytest.approx(logit(m_bal) - logit(m), rel=1e-4)


def test_a_balanced_critic_is_shifted_back_toward_the_true_label_mean(policy, tmp_path):
    """Rare successes drawn into half of every batch: after training the critic scores with its logits
    shifted down by the reported prior shift (saved with it), so the mean score moves from the
    balanced mean toward the true one."""
    problems = TASK.imagine(40, seed=5)
    records = [{"problem": p.to_dict(), "steps": TASK.random_trace(p.meta["numbers"], __import__("random").Random(p.id))[:1],
                "labels": [float(k < 3)]} for k, p in enumerate(problems)]  # 3 successes in 40
    critic = ScalarCritic.from_policy(policy, TASK, "prm")
    metrics = train_critic(critic, records, CriticConfig(steps=30, batch_size=8, lr=3e-3, holdout=0.0, balance=0.5),
                           progress=False)
    shift = metrics["prior_shift"]
    assert shift > 1.0  # the balanced label mean (~0.53) is far above the true one (0.075)
    args = ([Problem.from_dict(r["problem"]) for r in records], [r["steps"] for r in records])
    shifted = sum(critic.score(*args)) / len(records)
    critic.save(tmp_path / "prm")
    assert ScalarCritic.load(tmp_path / "prm", TASK, device="cpu").score(*args) == pytest.approx(critic.score(*args), abs=1e-5)
    critic.shift = 0.0
    unshifted = sum(critic.score(*args)) / len(records)
    assert abs(shifted - 0.075) < abs(unshifted - 0.075)
