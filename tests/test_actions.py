"""Steps as action + observation, exact priors over every legal action, k distinct proposals by
Gumbel-top-k, the improved-policy targets and the expert-iteration trainer."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from conftest import small_tiny_model
from ponder.errors import PonderError
from ponder.models import HFPolicy
from ponder.models.branches import branch_logprobs
from ponder.models.hf import token_logprobs
from ponder.search import Node, SearchEnv, State, get_method
from ponder.search.env import gumbel_top_k, softmax
from ponder.search.mcts import MCTSConfig
from ponder.tasks import Problem, get_task
from ponder.tasks.game24 import Game24, apply_step, parse_step, replay
from ponder.train import data
from ponder.train.expert import ExpertConfig, searched_states, train_expert
from ponder.train.losses import improved_policy, policy_target_loss
from ponder.train.sft import batch_tensors

TASK = Game24()


def puzzle(*nums: int) -> Problem:
    return Problem(id="p", question=" ".join(map(str, nums)), meta={"numbers": list(nums)})


# --- the task's actions and observations ------------------------------------------------------------------


def assert_every_legal_operation_is_listed_once(task, p) -> None:
    """Each listed action of ``p``'s first state observes to a legal step, and every legal operation on two of its
    numbers is listed (by its resulting numbers): the check Game of 24 and Countdown share."""
    acts = task.legal_actions(p, [])
    assert len(acts) == len(set(acts))
    for a in acts:
        step = task.observe(p, [], a)
        assert step.startswith(a) and task.action_of(step) == a
        assert apply_step(replay(task.numbers(p), []), step) is not None
    listed = {tuple(sorted(replay(task.numbers(p), [task.observe(p, [], a)]))) for a in acts}
    nums = task.numbers(p)
    want = set()
    for i, j in itertools.permutations(range(len(nums)), 2):
        rest = [x for k, x in enumerate(nums) if k not in (i, j)]
        for r in (nums[i] + nums[j], nums[i] - nums[j], nums[i] * nums[j], nums[i] / nums[j]):
            want.add(tuple(sorted(rest + [r])))
    assert listed == want


def test_every_listed_action_observes_to_a_legal_step_and_nothing_is_missing():
    p = puzzle(4, 5, 6, 10)
    assert len(TASK.legal_actions(p, [])) == 36  # 6 pairs x (+, *, a-b, b-a, a/b, b/a)
    assert_every_legal_operation_is_listed_once(TASK, p)


def test_actions_on_equal_numbers_are_listed_once_and_zero_is_never_a_divisor():
    p = puzzle(3, 3, 3, 3)
    assert TASK.legal_actions(p, []) == ["3 + 3 =", "3 - 3 =", "3 * 3 =", "3 / 3 ="]  # both orders are one text
    s1 = TASK.observe(p, [], "3 - 3 =")
    assert s1 == "3 - 3 = 0 (left: 0 3 3)\n"
    acts = TASK.legal_actions(p, [s1])
    assert "3 / 0 =" not in acts and "0 / 3 =" in acts
    assert TASK.observe(p, [s1], "3 / 0 =") is None  # the observation cannot be computed: not a step
    assert TASK.observe(p, [], "7 + 3 =") is None  # an operand that is not there
    assert TASK.observe(p, [], "three plus three") is None
    assert TASK.legal_actions(p, [s1, "bad step\n"]) == []  # a dead state has no action


def test_observations_write_the_numbers_left_sorted_and_free_text_keeps_their_order():
    # one text per state, whichever pair was combined: what a critic and the policy read
    p = puzzle(1, 4, 6, 8)
    assert TASK.observe(p, [], "6 - 4 =") == "6 - 4 = 2 (left: 1 2 8)\n"
    assert TASK.observe(p, [], "8 - 6 =") == "8 - 6 = 2 (left: 1 2 4)\n"
    rng = random.Random(0)
    for trace in (TASK.random_trace((1, 4, 6, 8), rng) for _ in range(20)):  # bootstrap traces read the same
        for step in trace:
            left = parse_step(step)[4]
            assert left == sorted(left)
    free = Game24(free_text=True)  # the model writes the step: untouched numbers in order, then the result
    steps = [s for _ in range(20) for s in free.random_trace((1, 4, 6, 8), rng)]
    assert all(parse_step(s)[4][-1] == parse_step(s)[3] for s in steps)
    assert any(parse_step(s)[4] != sorted(parse_step(s)[4]) for s in steps)


def test_no_action_is_a_prefix_of_another():
    # "1 + 1" would be a prefix of "1 + 13": the action stop keeps the priors a distribution
    acts = TASK.legal_actions(puzzle(1, 1, 13, 2), [])
    assert not any(a != b and b.startswith(a) for a in acts for b in acts)


def test_segments_train_on_the_action_only():
    steps = ["4 + 8 = 12 (left: 1 6 12)\n"]
    assert TASK.segments("1 4 6 8\n", steps) == [("1 4 6 8\n", False), ("4 + 8 =", True), (" 12 (left: 1 6 12)\n", False)]
    assert Game24(free_text=True).segments("1 4 6 8\n", steps) == [("1 4 6 8\n", False), (steps[0], True)]


def test_observation_tokens_carry_no_loss():
    _, tok = small_tiny_model()
    seg = TASK.segments("1 4 6 8\n", ["4 + 8 = 12 (left: 1 6 12)\n"])
    inputs, targets, mask = batch_tensors(tok, [seg], 256, "cpu")
    scored = "".join(tok.decode([t]) for t, m in zip(targets[0].tolist(), mask[0].tolist()) if m)
    assert scored == "4 + 8 =" + tok.eos_token  # the action and the end; never the prompt or the observation


# --- scoring and drawing ---------------------------------------------------------------------------------


def test_tree_attention_scores_each_continuation_as_if_alone():
    model, tok = small_tiny_model(seed=3)
    prefixes = [tok("4 5 6 10\n")["input_ids"], tok("1 2\n")["input_ids"]]
    conts = [[tok(a, add_special_tokens=False)["input_ids"] for a in ("4 + 5 =", "10 - 6 =", "6 * 4 =")],
             [tok("1 + 2 =", add_special_tokens=False)["input_ids"]]]
    with torch.no_grad():
        got = branch_logprobs(model, prefixes, conts, tok.pad_token_id)
        for p, cs, g in zip(prefixes, conts, got):
            lp = token_logprobs(model, [p + c for c in cs], tok.pad_token_id)
            want = [float(lp[i, len(p) - 1 : len(p) - 1 + len(c)].sum()) for i, c in enumerate(cs)]
            assert g.tolist() == pytest.approx(want, abs=1e-4)


def test_tree_attention_fast_passes_match_transformers_values_and_gradients(monkeypatch):
    from ponder.models import branches

    model, tok = small_tiny_model(seed=4)
    # prefixes and continuations of different lengths, and a state with fewer actions: every kind of padding
    prefixes = [tok("4 5 6 10\n")["input_ids"], tok("1 2\n")["input_ids"]]
    conts = [[tok(a, add_special_tokens=False)["input_ids"] for a in ("4 + 5 =", "10 - 6 =", "6 = 6 (left: 4 6)")],
             [tok("1 + 2 =", add_special_tokens=False)["input_ids"]]]
    calls = []
    fast = branches.fast_llama.FastLlama
    for name in ("logits", "tree_logprobs"):
        real = getattr(fast, name)
        monkeypatch.setattr(fast, name, lambda self, *a, _n=name, _r=real: calls.append(_n) or _r(self, *a))

    def run():
        model.zero_grad()
        out = branch_logprobs(model, prefixes, conts, tok.pad_token_id)
        assert [len(o) for o in out] == [3, 1]
        torch.cat(out).sum().backward()
        with torch.no_grad():
            scored = torch.cat(branch_logprobs(model, prefixes, conts, tok.pad_token_id))
        return torch.cat(out).detach(), scored, model.model.layers[0].self_attn.q_proj.weight.grad.clone()

    fast_lp, fast_scored, fast_grad = run()
    assert calls == ["tree_logprobs", "tree_logprobs"]  # training and scoring in two blocks
    monkeypatch.setattr(branches.fast_llama, "supports", lambda m: False)
    slow_lp, slow_scored, slow_grad = run()
    assert len(calls) == 2  # and now transformers' did both
    assert torch.allclose(fast_lp, slow_lp, atol=1e-5) and torch.allclose(fast_scored, slow_lp, atol=1e-5)
    assert torch.allclose(slow_scored, slow_lp, atol=1e-6)
    assert fast_grad.abs().sum() > 0 and torch.allclose(fast_grad, slow_grad, atol=1e-5)


def test_tree_attention_fast_pass_with_grouped_query_attention():
    """Query heads sharing a kv head (as SmolLM2's do): each continuation scored as if alone."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64)).eval()
    from ponder.models import fast_llama

    assert fast_llama.supports(model)
    prefixes = [[1, 7, 9, 3, 4], [2, 5], [6, 8, 10]]  # the last state has no continuation to score
    conts = [[[11, 12], [13, 14, 15, 16], [17]], [[18, 19, 20]], []]
    with torch.no_grad():
        got = branch_logprobs(model, prefixes, conts, 0)
        assert [len(g) for g in got] == [3, 1, 0]
        for p, cs, g in zip(prefixes[:2], conts, got):
            lp = token_logprobs(model, [p + c for c in cs], 0)
            want = [float(lp[i, len(p) - 1 : len(p) - 1 + len(c)].sum()) for i, c in enumerate(cs)]
            assert g.tolist() == pytest.approx(want, abs=1e-4)


def test_gumbel_top_k_draws_distinct_actions_with_the_right_inclusion_probabilities():
    logits = [math.log(p) for p in (0.5, 0.3, 0.15, 0.05)]
    p = softmax(logits)
    rng, n = random.Random(0), 20000
    first = [0] * 4
    included = [0] * 4
    for _ in range(n):
        draw = gumbel_top_k(logits, 2, rng)
        assert len(set(draw)) == 2
        first[draw[0]] += 1
        for i in draw:
            included[i] += 1
    # sampling without replacement: P(i first) = p_i; P(i in the two) = p_i + sum_j p_j p_i / (1 - p_j)
    incl = [p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(4) if j != i) for i in range(4)]
    for i in range(4):
        for got, want in ((first[i] / n, p[i]), (included[i] / n, incl[i])):
            assert abs(got - want) < 4 * math.sqrt(want * (1 - want) / n)
    assert gumbel_top_k(logits, 3, rng, temperature=0) == [0, 1, 2]


def test_listed_expansion_gives_k_distinct_legal_steps_with_exact_priors():
    model, tok = small_tiny_model(seed=1)
    env = SearchEnv(HFPolicy(model, tok), TASK)
    assert env.lists_actions
    p = puzzle(4, 5, 6, 10)
    [props] = env.expand([State(p)], k=6)
    assert len({x.text for x in props}) == 6
    assert all(apply_step(replay(TASK.numbers(p), []), x.text) is not None for x in props)
    # the priors are the policy's exact distribution over all 36 legal actions
    scores = env.policy.score([env.prefix(State(p))], [TASK.legal_actions(p, [])])
    exact = dict(zip(TASK.legal_actions(p, []), softmax(scores.logprobs[0])))
    for x in props:
        assert x.prior == pytest.approx(exact[TASK.action_of(x.text)])
    c = env.take_compute(p)
    assert c.tokens_generated == sum(x.num_tokens for x in props) and c.tokens_read > 0
    # all of them when k is larger than the legal actions; free text samples instead
    assert len(env.expand([State(p)], k=100)[0]) == 36
    assert not SearchEnv(HFPolicy(model, tok), Game24(free_text=True)).lists_actions


def test_listed_whole_steps_are_their_own_observation_and_the_prior_reads_them():
    task, p = get_task("game24", listed="step"), puzzle(4, 5, 6, 10)
    acts = task.legal_actions(p, [])
    assert acts == [TASK.observe(p, [], a) for a in TASK.legal_actions(p, [])]  # the same moves, each written whole
    assert all(task.observe(p, [], a) == a and task.action_of(a) == a for a in acts)
    assert task.observe(p, [], "4 + 5 = 10 (left: 6 10 10)\n") is None  # wrong arithmetic is not a legal step
    model, tok = small_tiny_model(seed=1)
    env = SearchEnv(HFPolicy(model, tok), task)
    [props] = env.expand([State(p)], k=6)
    assert len({x.text for x in props}) == 6 and {x.text for x in props} <= set(acts)
    scores = env.policy.score([env.prefix(State(p))], [acts])
    exact = dict(zip(acts, softmax(scores.logprobs[0])))
    assert all(x.prior == pytest.approx(exact[x.text]) for x in props)
    with pytest.raises(PonderError, match="listed must be 'action' or 'step'"):
        get_task("countdown", listed="steps")


def test_every_search_method_takes_only_legal_steps_with_listed_actions():
    model, tok = small_tiny_model(seed=2)
    policy = HFPolicy(model, tok)
    problems = TASK.problems("test")[:3]
    for name, cfg in (("greedy", None), ("mcts", MCTSConfig(simulations=6, k=3, k_max=3, seed=0)),
                      ("sampling", None)):
        method = get_method(name)
        res = method.run(problems, SearchEnv(policy, TASK), cfg or method.config())
        for r in res:
            for node in r.tree:
                if node.parent is not None:
                    assert apply_step(replay(TASK.numbers(r.problem), node.parent.steps()), node.step) is not None


def test_a_listed_action_the_task_cannot_observe_is_a_clear_error():
    class Broken(Game24):
        def observe(self, problem, steps, action):
            return None

    model, tok = small_tiny_model()
    with pytest.raises(PonderError, match="listed .* as legal but cannot observe it"):
        SearchEnv(HFPolicy(model, tok), Broken()).expand([State(puzzle(1, 2, 3, 4))], 2)


def test_a_state_with_no_legal_action_is_a_terminal_leaf_with_reward_0():
    class Stuck(Game24):
        def legal_actions(self, problem, steps):
            return []

    model, tok = small_tiny_model()
    [r] = get_method("mcts").run([puzzle(1, 2, 3, 4)], SearchEnv(HFPolicy(model, tok), Stuck()),
                                 MCTSConfig(simulations=2, k=2, k_max=2, seed=0))
    assert r.tree.terminal and r.tree.reward == 0.0 and not r.tree.children


def test_sampled_actions_are_observed_and_an_illegal_one_ends_the_trace():
    class Writes:
        name = "writes"

        def render(self, task, problem):
            return task.prompt(problem)

        def sample(self, prefixes, k, params):
            from ponder.compute import Compute
            from ponder.models import Samples, Step

            assert params.stop == ("=",)  # the model writes the action only
            texts = ["4 + 8 =", "9 + 9 ="]
            return Samples([[Step(texts[j % 2], (0,) * 7, (-1.0,), "stop") for j in range(k)] for _ in prefixes],
                           [Compute(7 * k, 5) for _ in prefixes])

    env = SearchEnv(Writes(), TASK)
    [props] = env.expand([State(puzzle(1, 4, 6, 8))], k=2)
    assert [x.text for x in props] == ["4 + 8 = 12 (left: 1 6 12)\n", "9 + 9 =\n"]
    assert TASK.is_terminal(puzzle(1, 4, 6, 8), [props[1].text]) and TASK.reward(puzzle(1, 4, 6, 8), [props[1].text]) == 0


# --- learning from every searched state ---------------------------------------------------------------------


def test_improved_policy_sums_to_one_and_moves_mass_to_what_the_search_found():
    logits = torch.log(torch.tensor([0.4, 0.4, 0.1, 0.1]))
    target = improved_policy(logits, q=torch.tensor([0.0, 1.0, 0.0, 0.0]), visits=torch.tensor([3.0, 3.0, 0.0, 0.0]),
                             value=0.5)
    assert float(target.sum()) == pytest.approx(1.0)
    assert target[1] > 0.9 and target[0] < target[2]  # a tried, failed action falls below an untried one
    same = improved_policy(logits, torch.zeros(4), torch.zeros(4), 0.0)
    assert same.tolist() == pytest.approx(torch.softmax(logits, -1).tolist())  # no search: the prior
    loss = policy_target_loss([logits.clone().requires_grad_()], [target])
    assert float(loss) > 0


def test_rescaled_targets_pick_the_winning_move_when_the_mean_q_is_small():
    # a two-number state with one way to 24: its mean backed-up Q is 1/6, its siblings' 0
    logits = torch.log(torch.full((6,), 1 / 6))
    q, visits = torch.tensor([1 / 6, 0, 0, 0, 0, 0]), torch.tensor([6.0, 2, 2, 2, 0, 0])
    plain = improved_policy(logits, q, visits, value=0.05, rescale=False)
    scaled = improved_policy(logits, q, visits, value=0.05)
    assert float(plain[0]) < 0.5 < 0.9 < float(scaled[0])
    assert float(scaled.sum()) == pytest.approx(1.0)
    flat = improved_policy(logits, torch.full((6,), 0.3), torch.full((6,), 2.0), value=0.3)
    assert flat.tolist() == pytest.approx(torch.softmax(logits, -1).tolist())  # all alike: the prior, no NaN


def test_policy_targets_only_where_the_verifier_met_a_win_below():
    p = puzzle(4, 6, 1, 1)
    root = Node()
    kids = [root.add(TASK.observe(p, [], a)) for a in ("4 * 6 =", "1 + 1 =")]
    for c, v in zip(kids, (0.7, 0.1)):  # the children's values differ by a critic's guess alone
        c.visits, c.value_sum = 1, v
    root.visits, root.value_sum = 2, 0.8
    assert data.policy_targets(p, root, TASK) == []
    win = kids[0].add(TASK.observe(p, [kids[0].step], "24 * 1 ="))
    win.add(TASK.observe(p, [kids[0].step, win.step], "24 * 1 =")).terminal = True
    leaf = win.children[0]
    leaf.reward, leaf.visits, leaf.value_sum = 1.0, 1, 1.0
    assert TASK.reward(p, leaf.steps()) == 1
    rows = data.policy_targets(p, root, TASK)
    assert [r["prefix"] for r in rows] == [[]]  # the root: a verified win is below it (kids[0] has one child only)
    assert data.met_a_win(root) == {root, kids[0], win, leaf}


def test_free_text_targets_are_over_actions_not_the_arithmetic_written_after_them():
    free = Game24(free_text=True)
    p = puzzle(2, 22, 1, 1)
    root = Node()
    steps = {"22 - 2 = 20 (left: 1 1 20)\n": (3, 0.0), "22 - 2 = 29 (left: 1 1 29)\n": (1, 0.0),
             "2 + 22 = 24 (left: 1 1 24)\n": (2, 1.0), "2 * 22 = 44 (left: 1 1 44)\n": (2, 0.0)}
    for step, (n, q) in steps.items():
        c = root.add(step)
        c.visits, c.value_sum = n, n * q
    root.visits, root.value_sum = 8, 2.0
    root.children[2].add("24 * 1 = 24 (left: 1 24)\n").terminal = True  # a verified win below the root
    win = root.children[2].children[0]
    win.reward, win.visits, win.value_sum = 1.0, 1, 1.0
    [row] = data.policy_targets(p, root, free)
    # no result or "left" list is a target: scored low, correct arithmetic (2 * 22 = 44) would be unlearned
    assert row["actions"] == ["22 - 2 =", "2 + 22 =", "2 * 22 ="]
    assert row["visits"] == [4, 2, 2] and row["q"] == [0.0, 1.0, 0.0]
    # with observations each child is already one action
    assert [a for a in data.policy_targets(p, root, TASK)[0]["actions"]] == row["actions"]


def test_proven_values_come_from_the_verifier_and_full_expansion_only():
    p = puzzle(1, 1, 1, 1)  # unsolvable; every legal path fails
    root = Node()
    s1 = TASK.observe(p, [], "1 + 1 =")
    n1 = root.add(s1)
    for a in TASK.legal_actions(p, [s1]):
        n1.add(TASK.observe(p, [s1], a))  # every action tried (none to the end yet)
    win = puzzle(4, 6, 1, 1)
    r2 = Node()
    path = ["4 * 6 = 24 (left: 1 1 24)\n", "1 * 1 = 1 (left: 24 1)\n", "24 * 1 = 24 (left: 24)\n"]
    leaf = r2.add_path(path, terminal=True, reward=1.0)
    proven = data.proven_values(win, r2, TASK)
    assert proven[leaf] == 1.0 and proven[r2] == 1.0 and all(proven[n] == 1.0 for n in leaf.path())
    # children not finished: nothing is proven lost yet; once all are, the parent is
    assert data.proven_values(p, root, TASK) == {}
    for c in n1.children:
        c.terminal, c.reward = True, 0.0
    proven = data.proven_values(p, root, TASK)
    assert proven[n1] == 0.0 and root not in proven  # the root's other actions were never tried


def test_expert_iteration_moves_the_policy_toward_the_search_targets():
    model, tok = small_tiny_model(seed=4)
    policy = HFPolicy(model, tok)
    p = puzzle(4, 5, 6, 10)
    good = "10 - 4 ="  # what the "search" found
    record = {"problem": p.to_dict(), "prefix": [], "actions": [good, "4 + 5 ="], "visits": [30, 2], "q": [1.0, 0.0],
              "value": 0.3}
    cfg = ExpertConfig(steps=30, epochs=100, batch_size=4, lr=3e-3, warmup=1, sft_batch=0)
    [state] = searched_states(policy, TASK, [record], cfg)
    g = state.actions.index(good)

    def policy_now() -> torch.Tensor:
        return torch.softmax(torch.tensor(policy.score([state.prefix], [state.actions]).logprobs[0]), -1)

    def kl(q: torch.Tensor) -> float:
        return float((state.target * (state.target.log() - q.log())).sum())

    before = policy_now()
    assert state.target[g] > 2 * before[g] and float(state.target.sum()) == pytest.approx(1.0)
    info = train_expert(policy, TASK, [record] * 8, [], cfg, progress=False)
    after = policy_now()
    assert info["steps"] == 30 and info["policy_loss_last"] < info["policy_loss_first"]
    assert kl(after) < 0.5 * kl(before) and after[g] > 2 * before[g]
