"""GRPO: the loss against TRL's GRPOTrainer on one fixed batch, its parts by hand, and the trainer end to end."""

from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import small_tiny_model
from ponder.errors import PonderError
from ponder.models.hf import HFPolicy
from ponder.tasks import Problem, Task, get_task
from ponder.tasks.game24 import solve
from ponder.train.grpo import GRPOConfig, grpo_batch, token_logps, train_grpo
from ponder.train.losses import group_advantages, grpo_loss

GAME24 = get_task("game24")


def game24_batch(n_groups: int = 3, group_size: int = 4):
    """Fixed Game-of-24 traces (with the task's observations), ``group_size`` per puzzle: solutions (reward 1),
    random legal traces (almost always 0), and one unobservable action ended as the env ends it (0)."""
    rng = random.Random(0)
    problems = [p for p in GAME24.problems("train") if solve(GAME24.numbers(p))][:n_groups]
    traces = []
    for g, p in enumerate(problems):
        for j in range(group_size):
            if g == 1 or j % 2:  # group 1 is all random (equal rewards unless one happens to reach 24)
                traces.append(GAME24.random_trace(p.meta["numbers"], rng))
            else:
                traces.append(solve(GAME24.numbers(p)))
        if g == 2:
            traces[-1] = ["13 * 13 =\n"]  # not observable: kept as written, the trace ends with reward 0
    owners = [p for p in problems for _ in range(group_size)]
    return owners, traces, [GAME24.reward(p, t) for p, t in zip(owners, traces)]


# --- the loss's parts, by hand -----------------------------------------------------------------------------------

def test_advantages_are_group_relative_and_zero_for_equal_rewards():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5]), 4)
    std = torch.tensor([1.0, 0.0, 0.0, 0.0]).std().item()  # sample std, 0.5
    assert adv[:4].tolist() == pytest.approx([0.75 / (std + 1e-4), -0.25 / (std + 1e-4), -0.25 / (std + 1e-4),
                                              -0.25 / (std + 1e-4)])
    assert adv[4:].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_loss_at_ratio_one_is_the_advantage_weighted_mean_log_likelihood_gradient():
    """beta = 0 and pi_old = pi: L = -mean_i A_i, and dL/dlogp_it = -A_i / (B |o_i|) on scored tokens, 0 elsewhere:
    averaged per trace, then over traces (a long trace does not weigh more)."""
    torch.manual_seed(0)
    logps = (-torch.rand(3, 5)).requires_grad_()
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 1, 1, 1, 1], [1, 0, 1, 0, 0]])
    adv = torch.tensor([1.0, -2.0, 0.5])
    loss, kl, clipped = grpo_loss(logps, logps.detach(), None, adv, mask, epsilon=0.2, beta=0.0)
    assert loss.item() == pytest.approx(-adv.mean().item())
    loss.backward()
    expected = -adv[:, None] / (3 * mask.sum(-1, keepdim=True)) * mask
    assert torch.allclose(logps.grad, expected)
    assert kl.item() == 0.0 and clipped.item() == 0.0


def test_clip_stops_the_gradient_only_where_the_ratio_is_past_the_range_in_the_advantages_direction():
    old = torch.zeros(4, 1)
    logps = torch.log(torch.tensor([[1.5], [1.5], [0.5], [1.1]])).requires_grad_()  # ratios 1.5, 1.5, 0.5, 1.1
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, _, clipped = grpo_loss(logps, old, None, adv, torch.ones(4, 1), epsilon=0.2, beta=0.0)
    loss.backward()
    grad = logps.grad.flatten().tolist()
    assert grad[0] == 0.0 and grad[2] == 0.0  # pushed further out: clipped, no gradient
    assert grad[1] == pytest.approx(1.5 / 4) and grad[3] == pytest.approx(-1.1 / 4)  # d(-r A)/dlogp = -r A / B
    assert clipped.item() == pytest.approx(0.5)


def test_kl_term_is_the_k3_estimator_to_the_reference():
    logps = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -2.0]])
    loss, kl, _ = grpo_loss(logps, logps, ref, torch.zeros(1), torch.ones(1, 2), beta=0.5)
    d = torch.tensor(-0.5)
    k3 = (d.exp() - d - 1).item()
    assert kl.item() == pytest.approx(k3 / 2)
    assert loss.item() == pytest.approx(0.5 * k3 / 2)


def test_observation_tokens_and_the_prompt_carry_no_loss():
    """Only the model's actions are scored (``4 + 8 =``), never the prompt, the task's `` 12 (left: ...)``, nor the
    appended <eos>; the loss's gradient reaches no other position."""
    _, tok = small_tiny_model()
    owners, traces, _ = game24_batch()
    prompts = [GAME24.prompt(p) for p in owners]
    inputs, targets, mask = grpo_batch(tok, GAME24, prompts, traces, 256, "cpu")
    for i, steps in enumerate(traces):
        scored = tok.decode(targets[i][mask[i].bool()])
        assert scored == "".join(GAME24.action_of(s) for s in steps)
        assert "left" not in scored
    logps = torch.zeros(mask.shape, requires_grad=True)
    grpo_loss(logps, logps.detach(), logps.detach() - 0.1, torch.ones(len(traces)), mask, beta=0.1)[0].backward()
    assert (logps.grad[mask == 0] == 0).all() and (logps.grad[mask == 1] != 0).all()


def test_config_rejects_bad_input_naming_the_option():
    with pytest.raises(PonderError, match="--group-size"):
        GRPOConfig(group_size=1)
    with pytest.raises(PonderError, match="--beta"):
        GRPOConfig(beta=-0.1)
    with pytest.raises(PonderError, match="--epsilon"):
        GRPOConfig(epsilon=0)


# --- against TRL ------------------------------------------------------------------------------------------------

def _perturb(model, seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def test_grpo_loss_agrees_with_trl_on_a_fixed_batch(tiny_model_dir, tmp_path, monkeypatch):
    """TRL's GRPOTrainer and ponder score the same Game-of-24 traces (observation tokens masked through TRL's
    ``env_mask``, as from a rollout function), each with its own code: rewards, group advantages, log-probs of the
    policy, the sampling policy and the reference, and the loss (``loss_type="grpo"``, DeepSeekMath eq. 3; TRL's
    default multiplies the KL term by the ratio, DeepSeek-V3.2, so that is off). The policy is moved away from the
    sampling policy, and that from the reference, so that the ratio, the clip and the KL all act."""
    trl = pytest.importorskip("trl", reason="TRL is not installed (pip install 'ponder[dev]')")
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from ponder.models.hf import load_hf
    from ponder.train.sft import encode_text

    G, temperature, beta, epsilon = 4, 0.8, 0.1, 0.2
    owners, traces, rewards = game24_batch(3, G)
    assert 0 < sum(rewards) < len(rewards)
    policy = load_hf(str(tiny_model_dir), device="cpu")
    tok = policy.tokenizer
    by_prompt = {}
    for p, t in zip(owners, traces):
        by_prompt.setdefault(GAME24.prompt(p), []).append(t)

    def rollout(prompts, trainer):  # the fixed traces, tokenized as ponder tokenizes them
        out = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "env_mask": []}
        seen: dict[str, int] = {}
        for prompt in prompts:
            steps = by_prompt[prompt][seen.setdefault(prompt, 0)]
            seen[prompt] += 1
            ids, flags = encode_text(tok, GAME24.segments(prompt, steps))
            n = len(encode_text(tok, [(prompt, False)])[0])
            out["prompt_ids"].append(ids[:n])
            out["completion_ids"].append(ids[n:])
            out["env_mask"].append(flags[n:])
            out["logprobs"].append([0.0] * (len(ids) - n))
        return out

    def verifier(prompts, completions, numbers, **kw):
        return [GAME24.reward(Problem("x", "", meta={"numbers": n}), GAME24.split_steps(c)) for c, n in zip(completions, numbers)]

    rows = [{"prompt": GAME24.prompt(p), "numbers": p.meta["numbers"]} for p in owners]
    args = trl.GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=len(rows), num_generations=G,
                          num_iterations=2, loss_type="grpo", beta=beta, epsilon=epsilon, temperature=temperature,
                          use_bias_correction_kl=False, max_completion_length=64, report_to=[], use_cpu=True, bf16=False,
                          save_strategy="no", seed=0)
    trainer = trl.GRPOTrainer(model=str(tiny_model_dir), reward_funcs=[verifier], args=args, processing_class=tok,
                              train_dataset=Dataset.from_list(rows[::G]), rollout_func=rollout)
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    _perturb(trainer.model, 1, 0.02)  # the sampling policy: away from the reference
    batch = trainer._generate_and_score_completions(rows)
    old_state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    _perturb(trainer.model, 2, 0.02)  # the policy being trained: away from the sampling policy
    trl_loss = trainer._compute_loss(trainer.model, batch).item()
    trl_kl = trainer._metrics["train"]["kl"][-1]
    trl_clip = trainer._metrics["train"]["clip_ratio/region_mean"][-1]

    def ponder_model(state=None):
        m = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        if state is not None:
            m.load_state_dict(state)
        return m.eval()

    inputs, targets, mask = grpo_batch(tok, GAME24, [GAME24.prompt(p) for p in owners], traces, 256, "cpu")
    adv = group_advantages(torch.tensor(rewards), G)
    with torch.no_grad():
        lp = token_logps(ponder_model(trainer.model.state_dict()), inputs, targets, temperature)
        old = token_logps(ponder_model(old_state), inputs, targets, temperature)
        ref = token_logps(ponder_model(), inputs, targets, temperature)
    loss, kl, clipped = grpo_loss(lp, old, ref, adv, mask, epsilon, beta)

    assert torch.allclose(adv, batch["advantages"], atol=1e-6)
    assert 0 < clipped.item() < 0.5, "the batch should exercise the clip"
    assert kl.item() > 1e-4, "the batch should exercise the KL term"
    assert loss.item() == pytest.approx(trl_loss, abs=1e-6)
    assert kl.item() == pytest.approx(trl_kl, rel=1e-5)
    assert clipped.item() == pytest.approx(trl_clip, abs=1e-6)


# --- the trainer ------------------------------------------------------------------------------------------------

class FirstDigit(Task):
    """One step of at most 2 tokens after ``?``; reward 1 if it starts with a digit (an untrained character model
    does about 1 time in 10, so groups differ and GRPO has a signal)."""

    name = "first-digit"
    max_steps = 1
    max_step_tokens = 2

    def problems(self, split):
        return [Problem(f"q{i}", str(i)) for i in range(8)]

    def prompt(self, problem):
        return problem.question + "?"

    def answer(self, problem, steps):
        return steps[0] if steps else None

    def reward(self, problem, steps):
        return float(bool(steps) and steps[0][:1].isdigit())


def test_grpo_raises_the_reward_and_logs_each_step(tmp_path):
    model, tok = small_tiny_model()
    policy = HFPolicy(model, tok, seed=0)
    task = FirstDigit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = GRPOConfig(steps=16, problems_per_step=4, group_size=8, lr=1e-2, beta=0.01, updates=2, seed=0)
    log = tmp_path / "grpo.jsonl"
    out = train_grpo(policy, task, task.problems("train"), cfg, log, progress=False)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(16))
    assert {"loss", "reward", "kl", "clipped", "tokens_generated", "seconds"} <= set(rows[0])
    assert out["tokens_generated"] == rows[-1]["tokens_generated"] > 0 and out["seconds"] > 0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    first = sum(r["reward"] for r in rows[:4]) / 4
    assert out["reward_last"] > first + 0.2, (first, out["reward_last"])
    assert any(r["kl"] > 0 for r in rows[1:])


def test_written_grpo_on_game24_samples_actions_and_the_task_observes(tmp_path):
    """train_grpo on Game of 24 with written actions runs through the sampler with the task's observations. The untrained model never
    reaches 24, so an outcome critic that rewards odd-length traces gives the groups different rewards."""
    class OddLength:
        name = "odd-length"

        def score(self, problems, steps):
            return [float(len("".join(s)) % 2) for s in steps]

    model, tok = small_tiny_model()
    policy = HFPolicy(model, tok, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = GRPOConfig(steps=2, problems_per_step=2, group_size=4, max_step_tokens=8, actions="written")
    out = train_grpo(policy, GAME24, GAME24.problems("train")[:4], cfg, tmp_path / "log.jsonl", progress=False,
                     critic=OddLength())
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert out["steps"] == 2 and out["traces"] == 16 and out["tokens_generated"] > 0
    assert len(rows) == 2 and not rows[0]["skipped"] and 0 < rows[0]["reward"] < 1
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_critic_that_breaks_its_protocol_is_a_one_line_error():
    class Broken:
        name = "broken"

        def score(self, problems, steps):
            return [float("nan")] * len(problems)

    model, tok = small_tiny_model()
    task = FirstDigit()
    with pytest.raises(PonderError, match="non-finite"):
        train_grpo(HFPolicy(model, tok), task, task.problems("train"), GRPOConfig(steps=1, problems_per_step=2, group_size=2),
                   progress=False, critic=Broken())


# --- over listed actions --------------------------------------------------------------------------------------

def test_independent_listed_draws_follow_the_policy_over_the_legal_actions():
    """GRPO's listed draws (``distinct=False``) are i.i.d. from softmax over the legal actions' log-probs, repeats
    and all; search's (the default) are distinct."""
    from collections import Counter

    from ponder.search.env import SearchEnv, State

    model, tok = small_tiny_model()
    env = SearchEnv(HFPolicy(model, tok, seed=0), GAME24)
    env.seed(0)
    state = State(GAME24.problems("train")[0])
    n, temp = 4000, 0.3
    draws = env._expand(env._main, [state], n, temp, 1.0, distinct=False)[0]
    assert len(draws) == n
    prior = {p.text: p.prior for p in draws}  # softmax of the log-probs at temperature 1
    want = dict(zip(prior, torch.softmax(torch.tensor(list(prior.values())).log() / temp, -1).tolist()))
    assert max(want.values()) > 2 / len(GAME24.legal_actions(state.problem, ()))  # far from uniform at this temperature
    seen = Counter(p.text for p in draws)
    assert max(abs(seen[a] / n - w) for a, w in want.items()) < 0.03
    distinct = env.expand([state], 20)[0]
    assert len({p.text for p in distinct}) == len(distinct) == 20


def test_listed_steps_score_each_action_against_every_legal_one_as_the_policy_does():
    from ponder.train.grpo import ListedSteps

    model, tok = small_tiny_model()
    policy = HFPolicy(model, tok, seed=0)
    from ponder.search.env import SearchEnv, State

    problems = GAME24.problems("train")[:2]
    env = SearchEnv(policy, GAME24)
    traces = [t for group in env.rollout([State(p) for p in problems], 3, distinct=False) for t in group]
    owners = [p for p in problems for _ in range(3)]
    steps = ListedSteps.build(policy, GAME24, owners, traces)
    assert len(steps.heads) < sum(map(len, traces))  # the root states are scored once per puzzle
    with torch.no_grad():
        got = steps.logps(model, tok.pad_token_id, 0.7)
        part = steps.part(slice(3, 6)).logps(model, tok.pad_token_id, 0.7)
    for b, (p, t) in enumerate(zip(owners, traces)):
        for j, step in enumerate(t):
            legal = GAME24.legal_actions(p, t[:j])
            lps = torch.tensor(policy.score([policy.render(GAME24, p) + "".join(t[:j])], [legal]).logprobs[0])
            want = torch.log_softmax(lps / 0.7, -1)[legal.index(GAME24.action_of(step))]
            assert got[b, j].item() == pytest.approx(want.item(), abs=1e-4)
        assert (got[b, len(t):] == 0).all()
    assert torch.allclose(part, got[3:6], atol=1e-5)
    with pytest.raises(PonderError, match="not one of its state's legal actions"):
        ListedSteps.build(policy, GAME24, owners[:1], [["13 * 13 = 169 (left: 169)\n"]])


def test_listed_grpo_on_game24_draws_only_legal_steps_and_learns_from_the_verifier(tmp_path):
    """With the task's listed actions every sampled step is legal, so even an untrained model reaches 24 now and
    then: the verifier's reward alone moves the policy (no critic)."""
    model, tok = small_tiny_model()
    policy = HFPolicy(model, tok, seed=0)
    easy = [p for p in GAME24.problems("train") if solve(GAME24.numbers(p))][:8]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = GRPOConfig(steps=4, problems_per_step=4, group_size=8, updates=2, seed=0)
    out = train_grpo(policy, GAME24, easy, cfg, tmp_path / "log.jsonl", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert out["actions"] == "listed" and out["traces"] == 128 and out["tokens_generated"] > 0
    assert any(r["reward"] > 0 for r in rows) and out["skipped_steps"] < 4
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(r["kl"] > 0 for r in rows if not r["skipped"])


def test_listed_actions_where_the_task_lists_none_is_a_one_line_error():
    model, tok = small_tiny_model()
    task = FirstDigit()
    with pytest.raises(PonderError, match="--actions listed"):
        train_grpo(HFPolicy(model, tok), task, task.problems("train"),
                   GRPOConfig(steps=1, problems_per_step=2, group_size=2, actions="listed"), progress=False)
    with pytest.raises(PonderError, match="actions"):
        GRPOConfig(actions="sampled")
