"""Implicit rewards of a DPO policy (From r to Q*): the per-token values, their sums, the critic, the
heat maps, the first bad step that credit is measured against, and the credit-localization score."""

from __future__ import annotations

import html
import json
import re

import pytest
import torch

from conftest import small_tiny_model
from ponder.critics import get_critic, parse_critic
from ponder.critics.implicit import ImplicitReward, piece_texts
from ponder.errors import PonderError
from ponder.models.hf import TraceEncoder
from ponder.report.credit import NEWLINE, credit_html, credit_png
from ponder.tasks import Problem, get_task
from ponder.train import save_checkpoint
from ponder.train.dpo import step_logps

TASK = get_task("game24")
P = Problem("p", "4 6 8 10", meta={"numbers": [4, 6, 8, 10]})
GOOD = ["10 - 6 = 4 (left: 4 4 8)\n", "4 + 8 = 12 (left: 4 12)\n", "12 * 4 = 48 (left: 48)\n"]
TRACES = [GOOD, GOOD[:1], ["8 * 10 = 80 (left: 4 6 80)\n", "80 - 4 = 76 (left: 6 76)\n"]]


def models():
    """Two different small models with one tokenizer: a 'policy' and its 'reference'."""
    pol, tok = small_tiny_model(seed=0)
    ref, _ = small_tiny_model(seed=1)
    return pol, ref, tok


def test_the_implicit_reward_is_zero_when_the_policy_is_its_reference():
    pol, _, tok = models()
    reward = ImplicitReward(pol, pol, tok, TASK, beta=0.1)
    for c in reward.credit([P] * 3, TRACES):
        assert len(c.rewards) > 0 and all(r == 0.0 for r in c.rewards)
    assert reward.score([P] * 3, TRACES) == [0.0, 0.0, 0.0]


def test_the_rewards_sum_to_beta_times_the_sequence_log_ratio():
    pol, ref, tok = models()
    beta = 0.25
    reward = ImplicitReward(pol, ref, tok, TASK, beta=beta)
    enc = TraceEncoder(tok, TASK, 256)
    credits = reward.credit([P] * 3, TRACES)
    for steps, c in zip(TRACES, credits):
        # log pi(steps) as a sum of per-step log-probs, each computed on its own (the DPO trainer's code)
        with torch.no_grad():
            lp = sum(step_logps(pol, enc, [P], [steps[:i]], [s])[0].item() for i, s in enumerate(steps))
            lr = sum(step_logps(ref, enc, [P], [steps[:i]], [s])[0].item() for i, s in enumerate(steps))
        assert c.total == pytest.approx(beta * (lp - lr), abs=1e-4)
        assert abs(c.total) > 1e-3  # two different models: the test would notice all-zero rewards
        assert sum(c.step_sums) == pytest.approx(c.total, abs=1e-5)
        assert len(c.step_sums) == len(steps)
        # tokens join to the trace, and each step's tokens to that step
        assert "".join(c.tokens) == "".join(steps)
        for i, s in enumerate(steps):
            assert "".join(t for t, _ in c.step_tokens(i)) == s
    # the critic's score is the same sum, the per-step view the same split
    assert reward.score([P] * 3, TRACES) == pytest.approx([c.total for c in credits], abs=1e-5)
    assert reward.step_rewards([P] * 3, TRACES)[0] == pytest.approx(credits[0].step_sums, abs=1e-5)
    assert reward.score([P], [[]]) == [0.0]


def test_a_token_reward_depends_only_on_the_text_before_it():
    """What lets the viewer read a whole tree from its leaves: a prefix's rewards are the prefix of the trace's."""
    pol, ref, tok = models()
    reward = ImplicitReward(pol, ref, tok, TASK)
    whole, prefix = reward.credit([P, P], [GOOD, GOOD[:2]])
    n = len(prefix.rewards)
    assert whole.rewards[:n] == pytest.approx(prefix.rewards, abs=1e-5)


def test_piece_texts_join_to_the_decoded_text_even_across_multibyte_characters():
    from ponder.models.tiny import char_tokenizer

    tok = char_tokenizer()
    ids = tok("12 + 3\n", add_special_tokens=False)["input_ids"]
    assert "".join(piece_texts(tok, ids)) == "12 + 3\n"


def test_heat_map_html_holds_every_token_and_its_value(tmp_path):
    pol, ref, tok = models()
    [c] = ImplicitReward(pol, ref, tok, TASK, beta=0.1).credit([P], [GOOD])
    page = credit_html(c, P.question, {"verdict": "wrong"}, {1: "first bad step"})
    spans = re.findall(r'<span class="tok" style="background:rgba\([^"]*\)" title="r = ([-+][0-9.]+)[^"]*">(.*?)</span>', page)
    assert len(spans) == len(c.tokens)
    shown = "".join(html.unescape(t) for _, t in spans).replace(NEWLINE, "\n")
    assert shown == "".join(GOOD)
    assert [float(v) for v, _ in spans] == pytest.approx(c.rewards, abs=1e-4)
    for s in c.step_sums:
        assert f"{s:+.3f}" in page
    assert "first bad step" in page and "<script" not in page
    png = credit_png(c, tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_implicit_critic_specs(tmp_path):
    pol, ref, tok = models()
    save_checkpoint(pol, tok, tmp_path / "pol")
    save_checkpoint(ref, tok, tmp_path / "ref")
    assert parse_critic(f"implicit:{tmp_path}/pol:{tmp_path}/ref@0.5")[0].weight == 0.5
    with pytest.raises(PonderError, match="implicit needs models"):
        parse_critic("implicit")
    critic = get_critic(f"implicit:{tmp_path / 'pol'}:{tmp_path / 'ref'}", TASK)
    direct = ImplicitReward(pol, ref, tok, TASK)
    assert critic.score([P], [GOOD]) == pytest.approx(direct.score([P], [GOOD]), abs=1e-5)
    with pytest.raises(PonderError, match="same model"):
        get_critic(f"implicit:{tmp_path / 'pol'}:{tmp_path / 'pol'}", TASK)
    with pytest.raises(PonderError, match="POLICY:REFERENCE"):
        get_critic(f"implicit:{tmp_path / 'pol'}", TASK)
    # an iteration folder of ponder improve: policy + the reference its DPO recorded + the run's beta
    it = tmp_path / "run" / "iter-1"
    save_checkpoint(pol, tok, it / "policy")
    (it / "policy-train.json").write_text(json.dumps({"reference": str(tmp_path / "ref")}))
    (tmp_path / "run" / "config.yaml").write_text("dpo:\n  beta: 0.5\n")
    from_run = get_critic(f"implicit:{it}", TASK)
    assert from_run.beta == 0.5
    assert from_run.score([P], [GOOD])[0] == pytest.approx(5 * direct.score([P], [GOOD])[0], rel=1e-4)
    (it / "policy-train.json").write_text(json.dumps({"sft": {}}))
    with pytest.raises(PonderError, match="no DPO reference"):
        get_critic(f"implicit:{it}", TASK)


def test_game24_first_bad_step_is_where_24_became_unreachable():
    p = Problem("q", "4 6 8 10", meta={"numbers": [4, 6, 8, 10]})
    # 4 6 8 10 is solvable: (10 - 8) * ... ; after "8 * 10 = 80" the rest 4 6 80 cannot make 24
    assert TASK.first_bad_step(p, ["8 * 10 = 80 (left: 4 6 80)\n", "80 - 4 = 76 (left: 6 76)\n"]) == 0
    assert TASK.first_bad_step(p, ["10 - 6 = 4 (left: 4 4 8)\n", "4 + 8 = 12 (left: 4 12)\n"]) == 1
    assert TASK.first_bad_step(p, ["10 - 6 = 4 (left: 4 4 8)\n", "nonsense\n"]) == 1  # an illegal step is bad
    assert TASK.first_bad_step(p, ["10 - 6 = 4 (left: 4 4 8)\n"]) is None
    unsolvable = Problem("u", "1 1 1 1", meta={"numbers": [1, 1, 1, 1]})
    assert TASK.first_bad_step(unsolvable, ["1 + 1 = 2 (left: 1 1 2)\n"]) is None  # no step is to blame
    with pytest.raises(PonderError, match="first bad step"):
        get_task("gsm8k").first_bad_step(Problem("g", "q", "1"), ["x\n"])


def test_localization_counts_hits_and_the_two_baselines():
    from ponder.critics.localize import failed_with_first_bad, localize

    wrong_first = ["8 * 10 = 80 (left: 4 6 80)\n", "80 - 4 = 76 (left: 6 76)\n", "76 - 6 = 70 (left: 70)\n"]
    wrong_second = ["10 - 6 = 4 (left: 4 4 8)\n", "4 + 8 = 12 (left: 4 12)\n", "12 * 4 = 48 (left: 48)\n"]
    also_first = ["10 - 8 = 2 (left: 2 4 6)\n", "2 * 6 = 12 (left: 4 12)\n", "12 - 4 = 8 (left: 8)\n"]
    won = ["6 - 8 = -2 (left: 4 10 -2)\n", "-2 * 10 = -20 (left: 4 -20)\n", "4 - -20 = 24 (left: 24)\n"]
    traces = [wrong_first, wrong_second, also_first, won, [], wrong_first[:1]]
    cases = failed_with_first_bad(TASK, [P] * 6, traces)
    assert [c[2] for c in cases] == [0, 1, 0]  # not the solved trace, the empty one, nor one step (nothing to localize)
    assert len(failed_with_first_bad(TASK, [P] * 6, traces, min_steps=1)) == 4
    bad = [c[2] for c in cases]

    def oracle(problems, traces):  # rates the true first bad step lowest
        return [[0.0 if i == b else 1.0 for i in range(len(t))] for t, b in zip(traces, bad)]

    def last(problems, traces):
        return [[1.0] * (len(t) - 1) + [0.0] for t in traces]

    hits = {h.name: h for h in localize(cases, {"oracle": oracle, "last": last})}
    assert hits["oracle"].rate == 1.0
    assert hits["last"].hits == sum(b == 2 for b in bad)
    assert hits["random step"].hits == pytest.approx(sum(1 / len(c[1]) for c in cases))
    assert hits["always the first step"].hits == sum(b == 0 for b in bad)


def test_value_rater_rates_each_step_by_the_change_it_makes():
    from ponder.critics.localize import value_rater
    from ponder.critics.scalar import ScalarCritic
    from ponder.models.hf import HFPolicy

    pol, _, tok = models()
    critic = ScalarCritic.from_policy(HFPolicy(pol, tok), TASK, "value")
    level = value_rater(critic, "level")([P], [GOOD])[0]
    drop = value_rater(critic, "drop")([P], [GOOD])[0]
    start = critic.score([P], [[]])[0]
    assert len(level) == len(drop) == len(GOOD)
    assert drop[0] == pytest.approx(level[0] - start, abs=1e-5)
    assert drop[1:] == pytest.approx([b - a for a, b in zip(level, level[1:])], abs=1e-5)
