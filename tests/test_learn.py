"""Trees -> training data, and step-level DPO: pairs, labels, the loss and the trainer."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import small_tiny_model
from ponder.errors import PonderError
from ponder.models.hf import HFPolicy, TraceEncoder
from ponder.search.tree import Node
from ponder.tasks import Problem, get_task
from ponder.train import data, dpo_loss
from ponder.train.dpo import DPOConfig, step_logps, train_dpo

TASK = get_task("game24")
P = Problem("p", "4 6 8 10", meta={"numbers": [4, 6, 8, 10]})
S1 = "10 - 6 = 4 (left: 4 8 4)\n"
S2 = "4 + 4 = 8 (left: 8 8)\n"
S3 = "8 + 8 = 16 (left: 16)\n"
WIN = "8 * 8 = 64 (left: 64)\n"


def tree() -> Node:
    """root -> a (Q .8) -> {a0 (Q 1, terminal, reward 1), a1 (Q .5)}; root -> b (Q .1) -> {}; root -> c unvisited."""
    root = Node(visits=3, value_sum=1.7)
    a = root.add(S1, visits=2, value_sum=1.6)
    b = root.add("10 + 8 = 18 (left: 4 6 18)\n", visits=1, value_sum=0.1, scores={"rollout": 0.0})
    root.add("junk\n")
    a.add(S2, visits=1, value_sum=1.0, scores={"rollout": 1.0})
    a.add("8 + 4 = 12 (left: 4 12)\n", visits=1, value_sum=0.5, scores={"rollout": 0.5})
    a.children[0].add("8 * 3 = 24 (left: 24)\n")  # illegal: not rewarded
    b.terminal, b.reward = False, None
    return root


def test_step_pairs_take_the_best_sibling_against_clearly_worse_ones():
    pairs = data.step_pairs(P, tree(), margin=0.3)
    got = {(tuple(p["prefix"]), p["chosen"], p["rejected"]) for p in pairs}
    assert got == {((), S1, "10 + 8 = 18 (left: 4 6 18)\n"), ((S1,), S2, "8 + 4 = 12 (left: 4 12)\n")}
    for p in pairs:
        assert p["q_chosen"] - p["q_rejected"] >= 0.3
    [only] = data.step_pairs(P, tree(), margin=0.65)  # 0.8 - 0.1 passes, 1.0 - 0.5 does not
    assert only["prefix"] == [] and only["chosen"] == S1 and only["problem"] == P.to_dict()
    assert (only["q_chosen"], only["q_rejected"]) == pytest.approx((0.8, 0.1))


def test_labelled_paths_label_every_node_once():
    paths = data.labelled_paths(tree(), data.value_label)
    labelled = [(tuple(s[: i + 1]), y) for s, ys in paths for i, y in enumerate(ys) if y is not None]
    assert len(labelled) == len(set(k for k, _ in labelled))  # no node twice
    assert dict(labelled) == {(S1,): 0.8, (S1, S2): 1.0, (S1, "8 + 4 = 12 (left: 4 12)\n"): 0.5,
                              ("10 + 8 = 18 (left: 4 6 18)\n",): 0.1}
    prm = dict((tuple(s), ys) for s, ys in data.labelled_paths(tree(), data.prm_label("rollout")))
    assert prm[(S1, S2, "8 * 3 = 24 (left: 24)\n")] == [None, 1.0, None]  # S1 has no rollout score
    assert data.labelled_paths(tree(), data.orm_label) == []  # no terminal node has a reward


def test_verified_traces_are_distinct_checked_and_capped():
    root = Node()
    good = ["4 + 8 = 12 (left: 6 10 12)\n", "10 - 6 = 4 (left: 12 4)\n", "12 * 4 = 48 (left: 48)\n"]
    solved = ["10 - 8 = 2 (left: 4 6 2)\n", "6 * 2 = 12 (left: 4 12)\n", "4 * 12 = 48 (left: 48)\n"]
    assert TASK.reward(P, good) == 0 and TASK.reward(P, solved) == 0
    right = ["10 - 6 = 4 (left: 4 8 4)\n", "4 * 4 = 16 (left: 8 16)\n", "8 + 16 = 24 (left: 24)\n"]
    assert TASK.reward(P, right) == 1
    root.add_path(right, terminal=True, reward=1.0, visits=3)
    root.add_path(good, terminal=True, reward=1.0)  # a wrong reward in the tree is re-checked
    out = data.verified_traces(P, root, TASK, extra=[right, solved])
    assert [r["steps"] for r in out] == [right]
    assert data.verified_traces(P, root, TASK, limit=0) == []


def test_dpo_loss_values_and_direction():
    z = torch.zeros(3)
    loss, margin = dpo_loss(z, z, z, z, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2)) and margin.tolist() == [0, 0, 0]
    pc = torch.tensor([0.0], requires_grad=True)
    pr = torch.tensor([0.0], requires_grad=True)
    loss, _ = dpo_loss(pc, pr, torch.tensor([-1.0]), torch.tensor([-1.0]), beta=0.5)
    loss.backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # descent raises the chosen, lowers the rejected
    loss, margin = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.5)
    assert margin.item() == pytest.approx(1.0) and loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))


def test_step_logps_score_only_the_step_tokens():
    model, tok = small_tiny_model()
    enc = TraceEncoder(tok, TASK)
    lp, n = step_logps(model, enc, [P, P], [[], [S1]], [S1, S2])
    assert n.tolist() == [len(S1), len(S2)]  # char-level tokenizer: one token per character
    # the same step scored after a longer prefix is scored on its own tokens only
    ids, ends = enc(P, [S1, S2])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    start = ends[0] + 1
    want = sum(logp[t - 1, ids[t]].item() for t in range(start, ends[1] + 1))
    assert lp[1].item() == pytest.approx(want, abs=1e-4)


def test_train_dpo_moves_the_policy_toward_chosen_steps():
    model, tok = small_tiny_model(num_layers=2)
    policy = HFPolicy(model, tok)
    pairs = [{"problem": P.to_dict(), "prefix": [], "chosen": S1, "rejected": "10 + 8 = 18 (left: 4 6 18)\n"},
             {"problem": P.to_dict(), "prefix": [S1], "chosen": S2, "rejected": "8 + 4 = 12 (left: 4 12)\n"}] * 4
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    m = train_dpo(policy, TASK, pairs, DPOConfig(epochs=6, batch_size=8, lr=3e-3, sft_weight=0.0), progress=False)
    assert m["loss_last"] < m["loss_first"] and m["loss_first"] == pytest.approx(math.log(2), abs=1e-3)
    assert m["reward_accuracy"] == 1.0 and m["reward_margin"] > 0
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not model.training
    with pytest.raises(PonderError, match="no step pairs"):
        train_dpo(policy, TASK, [], DPOConfig(), progress=False)


@pytest.mark.parametrize("field,value", [("beta", 0), ("epochs", 0), ("sft_weight", -1.0), ("lr", -1.0)])
def test_dpo_config_validates(field, value):
    with pytest.raises(PonderError, match=field.replace("_", "-")):
        DPOConfig(**{field: value})
