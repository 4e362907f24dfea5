"""MCTS's adaptive branching: a node whose children's Q disagree (population std above ``widen_std``)
is expanded again, up to ``k_max`` children; the threshold is strict and decided exactly."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ponder.search.mcts import MCTSConfig, _Search, pstdev_above, select, wants_widening
from ponder.search.tree import Node
from test_mcts import TableCritic, run, toy


def node_with(qs, visits: int = 1) -> Node:
    node = Node(visits=visits * len(qs))
    for q in qs:
        node.add(f"{q}\n", visits=visits, value_sum=q * visits)
    return node


@given(st.lists(st.floats(0, 1), min_size=1, max_size=8), st.sampled_from([-1e-12, 0.0, 1e-12, 0.1]))
def test_pstdev_above_is_the_exact_comparison(xs, offset):
    threshold = statistics.pstdev(xs) + offset  # at, just around and away from the threshold
    assert pstdev_above(xs, threshold) == (statistics.pstdev(xs) > threshold)


@pytest.mark.parametrize(
    "qs, widen_std, k_max, wanted",
    [
        ([0.0, 1.0], 0.49, 8, True),  # pstdev 0.5
        ([0.0, 1.0], 0.5, 8, False),  # exactly at the threshold: no widening
        ([0.0, 0.5], 0.25, 8, False),  # exactly at it again, with the float std equal to it
        ([0.1, 0.7], 0.3, 8, statistics.pstdev([0.1, 0.7]) > 0.3),  # float std and exact std differ here
        ([0.0, 1.0, 0.5, 0.5], 0.35, 8, True),  # pstdev sqrt(1/8) = 0.354
        ([0.0, 1.0, 0.5, 0.5], 0.36, 8, False),
        ([0.0, 1.0, 0.0], 0.1, 3, False),  # already at k_max
        ([0.0, 1.0], 0.1, 2, False),  # k_max = k: widening off
        ([1.0], 1e-6, 8, False),  # one child has no spread to speak of
        ([], 1e-6, 8, False),  # an unexpanded leaf is expanded, not widened
        ([0.3, 0.3, 0.3], 1e-6, 8, False),  # agreement never widens, however low widen_std
    ],
)
def test_wants_widening(qs, widen_std, k_max, wanted):
    assert wants_widening(node_with(qs), MCTSConfig(k=2, k_max=k_max, widen_std=widen_std)) is wanted


def test_select_stops_at_a_node_to_widen_unless_widening_found_nothing_there():
    s = _Search(toy(), 0)
    s.root = node_with([0.0, 1.0])
    leaf = s.root.children[1].add("deeper\n")  # below PUCT's pick, the child of Q 1
    assert select(s, MCTSConfig(k=2, k_max=4, widen_std=0.25)) is s.root
    assert select(s, MCTSConfig(k=2, k_max=4, widen_std=0.5)) is leaf  # std 0.5 is not above 0.5
    s.saturated.add(s.root)
    assert select(s, MCTSConfig(k=2, k_max=4, widen_std=0.25)) is leaf


def six_first_steps(steps):
    if not steps:
        return [(f"{w}\n", -0.1 * i) for i, w in enumerate("pqrstu")]
    return [("x\n", -0.5), ("y\n", -0.5)]


@pytest.mark.parametrize("widen_std, k_max, children", [(0.5, 6, 2), (0.49, 6, 4), (0.3, 6, 6), (0.3, 3, 3), (0.3, 2, 2)])
def test_the_root_grows_by_k_while_its_childrens_values_disagree(widen_std, k_max, children):
    """The critic rates p 1 and q 0 (std 0.5), everything else 0.5: after the first widening the root's
    four children have std sqrt(1/8) = 0.354, after the second (six children) 0.289."""
    critic = TableCritic({"p": 1.0, "q": 0.0})
    cfg = MCTSConfig(simulations=3, k=2, k_max=k_max, widen_std=widen_std, rollouts=0, value_weight=1.0)
    [r], policy, _ = run(six_first_steps, [toy()], cfg, 3, critic)
    assert [c.step for c in r.tree.children] == [f"{w}\n" for w in "pqrstu"[:children]]
    root_calls = [p for prefixes, _, _ in policy.step_calls() for p in prefixes if p == "toy t\n"]
    assert len(root_calls) == 1 + (children - 1) // 2  # one expansion, then one call per widening


def test_a_widening_that_finds_no_new_step_spends_one_simulation_and_is_not_retried():
    def two_first_steps(steps):
        return [("p\n", -0.1), ("q\n", -0.2)] if not steps else [("x\n", -0.5)]

    critic = TableCritic({"p": 1.0, "q": 0.0})
    cfg = MCTSConfig(simulations=5, k=2, k_max=6, widen_std=0.25, rollouts=0, value_weight=1.0)
    [r], policy, _ = run(two_first_steps, [toy()], cfg, 3, critic)
    assert len(r.tree.children) == 2 and r.info["simulations"] == 5
    assert r.tree.visits == 4  # the empty widening backed nothing up
    root_calls = [p for prefixes, _, _ in policy.step_calls() for p in prefixes if p == "toy t\n"]
    assert len(root_calls) == 2  # the expansion and the one widening
