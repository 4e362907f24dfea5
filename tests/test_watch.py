"""The loop's collapse watch (``ponder.loop.watch``): its measures, its warnings and its rollback.

The policy is a scripted one (its samples chosen per test) and the greedy validation accuracy is set
per test, so each warning can be made to fire, or to just miss, on purpose.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import ponder.loop as loop
from ponder.compute import Compute
from ponder.loop import ImproveConfig, WatchConfig
from ponder.loop.watch import watch
from ponder.models import Samples, Step
from ponder.tasks.base import Problem


class ScriptedPolicy:
    """Every prompt's k whole-trace samples are ``texts`` in turn, each token of log-prob -0.5."""

    name = "scripted"

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.calls: list[tuple[int, int]] = []  # (prompts, k) per call

    def render(self, task, problem) -> str:
        return problem.question + "\n"

    def sample(self, prefixes, k, params) -> Samples:
        self.calls.append((len(prefixes), k))
        row = [self.texts[j % len(self.texts)] for j in range(k)]
        steps = [[Step(t, tuple(range(len(t))), (-0.5,) * len(t), "eos") for t in row] for _ in prefixes]
        return Samples(steps, [Compute() for _ in prefixes])


def improver(tmp_path, monkeypatch, accuracy: float, texts: list[str], history: list[float], **watch):
    """An Improver at iteration ``len(history)`` whose earlier iterations had these validation accuracies;
    its policy samples ``texts`` and scores ``accuracy`` greedily on 3 validation problems."""
    cfg = ImproveConfig(validation=3, eval_batch=2, watch=WatchConfig(samples=4, **watch))
    run = loop.open_run(tmp_path / "run", cfg, resume=False)
    for j, acc in enumerate(history):
        run.mark(j, "policy", f"policy-{j}")
        with (run.root / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps({"iteration": j, "watch": {"val_accuracy": acc}}) + "\n")
    run.mark(len(history), "policy", f"policy-{len(history)}")
    imp = loop.Improver(run, progress=False)
    imp.val = [Problem(id=f"v{j}", question=f"q{j}", reference="") for j in range(3)]
    policy = ScriptedPolicy(texts)
    monkeypatch.setattr(imp, "policy", lambda spec: policy)
    monkeypatch.setattr("ponder.evaluate.run_eval", lambda *a, **kw: (SimpleNamespace(accuracy=accuracy), []))
    return imp, policy


def test_a_healthy_iteration_measures_diversity_and_entropy_and_warns_of_nothing(tmp_path, monkeypatch, capsys):
    imp, policy = improver(tmp_path, monkeypatch, 0.6, ["a\n", "b\n", "c\n", "a\n"], history=[0.5, 0.6])
    out = watch(imp, 2)
    assert out == {"val_accuracy": 0.6, "diversity": 0.75, "entropy": 0.5, "warnings": []}
    assert policy.calls == [(2, 4), (1, 4)]  # the 3 validation problems in batches of eval_batch
    assert "collapse watch" not in capsys.readouterr().out


def test_low_diversity_warns_and_rolls_back_to_the_best_iteration(tmp_path, monkeypatch, capsys):
    imp, _ = improver(tmp_path, monkeypatch, 0.75, ["same\n"], history=[0.5, 0.8, 0.7], min_diversity=0.3)
    out = watch(imp, 3)
    assert out["diversity"] == 0.25 and out["warnings"] == ["sample diversity 0.25 < 0.3"]
    assert out["next_policy"] == "policy-1"  # the best so far, not the latest
    said = capsys.readouterr().out
    assert "collapse watch, iteration 3: sample diversity 0.25 < 0.3" in said
    assert "collapse watch: iteration 4 starts from iteration 1's policy" in said
    imp.run.mark(3, "watch", out)
    assert imp.start_policy(4) == "policy-1"


def test_an_accuracy_drop_beyond_max_drop_warns_and_rolls_back(tmp_path, monkeypatch):
    imp, _ = improver(tmp_path, monkeypatch, 0.25, ["a\n", "b\n"], history=[0.4, 0.6, 0.5], max_drop=0.3)
    out = watch(imp, 3)
    assert out["warnings"] == ["validation accuracy 0.25 fell more than 0.3 below the best 0.60"]
    assert out["next_policy"] == "policy-1"


@pytest.mark.parametrize("accuracy, warned", [(0.25, False), (0.2, True)])
def test_a_drop_of_exactly_max_drop_does_not_warn(tmp_path, monkeypatch, accuracy, warned):
    imp, _ = improver(tmp_path, monkeypatch, accuracy, ["a\n", "b\n"], history=[0.5], max_drop=0.25)
    out = watch(imp, 1)
    assert bool(out["warnings"]) is warned and ("next_policy" in out) is warned


@pytest.mark.parametrize("accuracy, warned", [(0.0, True), (0.01, False), (0.03, False)])
def test_a_significant_fall_from_a_low_best_warns_though_it_is_below_max_drop(tmp_path, monkeypatch, accuracy, warned):
    """Free text on Game of 24 fell 6% -> 0% of 100 validation problems (z = 2.5) while max_drop, 0.1, stayed quiet."""
    imp, _ = improver(tmp_path, monkeypatch, accuracy, ["a\n", "b\n"], history=[0.06])
    imp.val = [Problem(id=f"v{j}", question=f"q{j}", reference="") for j in range(100)]
    out = watch(imp, 1)
    assert bool(out["warnings"]) is warned and ("next_policy" in out) is warned
    if warned:
        assert out["warnings"] == ["validation accuracy 0.00 fell 2.5 standard errors below the best 0.06 (of 100 problems)"]
    imp, _ = improver(tmp_path / "off", monkeypatch, accuracy, ["a\n", "b\n"], history=[0.06], max_z=0)
    imp.val = [Problem(id=f"v{j}", question=f"q{j}", reference="") for j in range(100)]
    assert watch(imp, 1)["warnings"] == []


def test_without_rollback_a_warning_changes_nothing_next(tmp_path, monkeypatch):
    imp, _ = improver(tmp_path, monkeypatch, 0.1, ["same\n"], history=[0.9], min_diversity=0.3, rollback=False)
    out = watch(imp, 1)
    assert len(out["warnings"]) == 2 and "next_policy" not in out
    imp.run.mark(1, "watch", out)
    assert imp.start_policy(2) == "policy-1"  # the policy iteration 1 ended with


def test_iteration_0_can_warn_but_has_nothing_to_roll_back_to(tmp_path, monkeypatch):
    imp, _ = improver(tmp_path, monkeypatch, 0.0, ["same\n"], history=[], min_diversity=0.3)
    out = watch(imp, 0)
    assert out["warnings"] == ["sample diversity 0.25 < 0.3"] and "next_policy" not in out


def test_no_validation_problems_no_watch(tmp_path, monkeypatch):
    imp, policy = improver(tmp_path, monkeypatch, 0.0, ["same\n"], history=[0.9])
    imp.val = []
    assert watch(imp, 1) == {} and policy.calls == []


def test_a_negative_max_z_is_a_one_line_error():
    from ponder.errors import PonderError

    with pytest.raises(PonderError, match="watch.max_z must be >= 0"):
        WatchConfig(max_z=-1)
