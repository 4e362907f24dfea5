"""``ponder improve``: the loop runs end to end on a small model, resumes after a crash in any phase
without redoing or duplicating finished searches, and refuses bad run folders and options."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext

import pytest
import yaml

import ponder.loop as loop
from ponder.cli import main
from ponder.config import apply_sets, build
from ponder.errors import PonderError
from ponder.io import read_rows
from ponder.loop import ImproveConfig, improve

SMALL = {
    "iterations": 2, "problems": 4, "validation": 2, "eval_limit": 2, "eval_n": 2, "search_batch": 2, "eval_batch": 2,
    "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
    "bootstrap": {"steps": 4, "batch_size": 4, "warmup": 1},
    "sft": {"steps": 2, "batch_size": 4, "warmup": 1},
    "critic": {"steps": 2, "batch_size": 4},
    "dpo": {"epochs": 1, "batch_size": 4},
    "search": {"simulations": 2, "k": 2, "k_max": 2},
    "eval_mcts": {"simulations": 2, "k": 2, "k_max": 2, "token_budget": 200},
    "watch": {"samples": 2},
}


def small(**kw) -> ImproveConfig:
    return build(ImproveConfig, {**SMALL, **kw})


class Boom(Exception):
    pass


def feed_the_policy_phase(monkeypatch, copies: int = 1) -> None:
    """The small model finds nothing: add a verified trace and a step pair to each iteration's data."""
    from ponder.io import write_jsonl

    real = loop.extract.extract

    def extract(imp, i):
        counts = real(imp, i)
        p = {"id": "x", "question": "4 6 8 10", "reference": None, "meta": {"numbers": [4, 6, 8, 10]}}
        win = ["6 - 8 = -2 (left: 4 10 -2)\n", "-2 * 10 = -20 (left: 4 -20)\n", "4 - -20 = 24 (left: 24)\n"]
        pair = {"problem": p, "prefix": [], "chosen": win[0], "rejected": "8 * 10 = 80 (left: 4 6 80)\n"}
        d = imp.run.it(i) / "data"
        write_jsonl(d / "sft.jsonl", read_rows(d / "sft.jsonl") + [{"problem": p, "steps": win}] * copies)
        write_jsonl(d / "pairs.jsonl", read_rows(d / "pairs.jsonl") + [pair] * copies)
        return counts

    monkeypatch.setattr(loop.extract, "extract", extract)


def test_loop_runs_end_to_end_and_writes_the_run_folder(tmp_path):
    report = improve(tmp_path / "run", small(), progress=False)
    root = tmp_path / "run"
    metrics = read_rows(root / "metrics.jsonl")
    assert [m["iteration"] for m in metrics] == [0, 1, 2]
    for m in metrics:
        assert set(m["eval"]) == {"greedy", "best-of-n", "mcts"}
        for e in m["eval"].values():
            assert e["problems"] == 2 and e["tokens_generated"] > 0 and 0 <= e["accuracy"] <= 1
        assert {"val_accuracy", "diversity", "entropy", "warnings"} <= set(m["watch"])
    for i in (1, 2):
        phases = json.loads((root / f"iter-{i}" / "phases.json").read_text())
        assert list(phases) == ["imagine", "search", "extract", "policy", "critics", "eval", "watch"]
        rows = read_rows(root / f"iter-{i}" / "search.jsonl")
        assert len(rows) == 4 and all("tree" in r for r in rows)
        for kind in ("value", "prm"):
            assert (root / f"iter-{i}" / "critics" / kind / "critic.json").is_file()
        assert not (root / f"iter-{i}" / "critics" / "orm").exists()  # game24 has a verifier: nothing reads an ORM
    # iteration 2's search is guided by iteration 1's critics; iteration 1's by rollouts alone
    assert json.loads((root / "iter-1" / "phases.json").read_text())["search"]["guide"] is None
    assert "value@1" in json.loads((root / "iter-2" / "phases.json").read_text())["search"]["guide"]
    # no imagined problem is a test puzzle, a validation puzzle, or one of an earlier iteration
    from ponder.tasks import get_task

    task = get_task("game24")
    test = {p.question for p in task.problems("test")}
    seen = set()
    for i in (1, 2):
        qs = {json.loads(x)["question"] for x in (root / f"iter-{i}" / "problems.jsonl").read_text().splitlines()}
        assert not qs & test and not qs & seen
        seen |= qs
    text = report.read_text()
    assert "| iter | greedy (tokens) | best-of-n (tokens) | mcts (tokens) |" in text
    assert (root / "solve_rate.png").stat().st_size > 1000 and (root / "solve_vs_tokens.png").is_file()
    saved = yaml.safe_load((root / "config.yaml").read_text())
    assert build(ImproveConfig, saved) == small()


def test_resume_after_a_crash_mid_search_redoes_nothing_finished(tmp_path, monkeypatch):
    from ponder.search.mcts import mcts as real

    calls = {"n": 0}

    def crashing(problems, env, cfg, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # iteration 1's search: the first batch of 2 finishes, the second crashes
            raise Boom()
        return real(problems, env, cfg, *a, **kw)

    from ponder import search

    monkeypatch.setitem(search.METHODS, "mcts", search.METHODS["mcts"]._replace(run=crashing))
    cfg = small(iterations=1, eval_methods=["greedy"])
    with pytest.raises(Boom):
        improve(tmp_path / "run", cfg, progress=False)
    rows = read_rows(tmp_path / "run" / "iter-1" / "search.jsonl")
    assert len(rows) == 2
    done_before = [r["problem_id"] for r in rows]

    searched = []

    def counting(problems, env, cfg, *a, **kw):
        searched.extend(p.id for p in problems)
        return real(problems, env, cfg, *a, **kw)

    monkeypatch.setitem(search.METHODS, "mcts", search.METHODS["mcts"]._replace(run=counting))
    improve(tmp_path / "run", None, resume=True, progress=False)
    rows = read_rows(tmp_path / "run" / "iter-1" / "search.jsonl")
    ids = [r["problem_id"] for r in rows]
    assert len(ids) == 4 == len(set(ids)) and ids[:2] == done_before
    assert not set(searched) & set(done_before) and len(searched) == 2
    assert [m["iteration"] for m in read_rows(tmp_path / "run" / "metrics.jsonl")] == [0, 1]


@pytest.mark.parametrize("phase", ["train_policy", "train_critics"])
def test_resume_after_a_crash_in_training(tmp_path, monkeypatch, phase):
    real = getattr(loop.learn, phase)

    def crash(*a, **kw):
        raise Boom()

    monkeypatch.setattr(loop.learn, phase, crash)
    cfg = small(iterations=1, eval_methods=["greedy"])
    with pytest.raises(Boom):
        improve(tmp_path / "run", cfg, progress=False)
    phases = json.loads((tmp_path / "run" / "iter-1" / "phases.json").read_text())
    assert "search" in phases and "critics" not in phases
    before = (tmp_path / "run" / "iter-1" / "search.jsonl").read_bytes()
    monkeypatch.setattr(loop.learn, phase, real)
    from ponder import search

    def no_search(*a, **kw):
        raise AssertionError("a finished search ran again")

    monkeypatch.setitem(search.METHODS, "mcts", search.METHODS["mcts"]._replace(run=no_search))
    improve(tmp_path / "run", None, resume=True, progress=False)
    assert (tmp_path / "run" / "iter-1" / "search.jsonl").read_bytes() == before
    phases = json.loads((tmp_path / "run" / "iter-1" / "phases.json").read_text())
    assert list(phases) == ["imagine", "search", "extract", "policy", "critics", "eval", "watch"]


def test_a_training_phase_redone_after_a_crash_keeps_one_loss_curve(tmp_path, monkeypatch):
    """bench/kill_soak.py found it: a kill -9 after the critics were saved and before the phase was recorded,
    and the resume appended a second curve to critics.losses.jsonl (DPO's log the same way)."""
    feed_the_policy_phase(monkeypatch)  # so that DPO has pairs
    real, rows_then = loop.Run.mark, {}

    def crash_once(run, i, phase, info):  # the phase's files written, its record not yet
        if i == 1 and phase in ("policy", "critics") and phase not in rows_then:
            log = "dpo" if phase == "policy" else "critics"
            rows_then[phase] = read_rows(run.it(1) / f"{log}.losses.jsonl")
            raise Boom()
        real(run, i, phase, info)

    monkeypatch.setattr(loop.Run, "mark", crash_once)
    cfg = small(iterations=1, eval_methods=["greedy"], policy_update="sft+dpo")
    with pytest.raises(Boom):
        improve(tmp_path / "run", cfg, progress=False)
    for _ in range(2):  # the policy's crash redone, then the critics' crash, then the rest
        with pytest.raises(Boom) if len(rows_then) < 2 else nullcontext():
            improve(tmp_path / "run", None, resume=True, progress=False)
    it = tmp_path / "run" / "iter-1"
    dpo, crit = read_rows(it / "dpo.losses.jsonl"), read_rows(it / "critics.losses.jsonl")
    assert dpo and len(dpo) == len(rows_then["policy"])
    steps = [(r["critic"], r["step"]) for r in crit]
    assert len(steps) == len(set(steps)) == 2 * cfg.critic.steps == len(rows_then["critics"])


def test_nan_in_policy_training_keeps_the_previous_policy(tmp_path, monkeypatch):
    import ponder.train.sft as sft

    cfg = small(iterations=1, eval_methods=["greedy"])
    real_loss, extracted = sft.lm_loss, []

    def nan_after_extract(*a):  # the bootstrap trains normally; the iteration's SFT goes NaN
        return real_loss(*a) * (float("nan") if extracted else 1.0)

    def extract(imp, i):
        extracted.append(i)
        return _fake_extract(imp, i)

    monkeypatch.setattr(sft, "lm_loss", nan_after_extract)
    monkeypatch.setattr(loop.extract, "extract", extract)
    improve(tmp_path / "run", cfg, progress=False)
    phases = json.loads((tmp_path / "run" / "iter-1" / "phases.json").read_text())
    assert phases["policy"] == str(tmp_path / "run" / "iter-0" / "policy")
    info = json.loads((tmp_path / "run" / "iter-1" / "policy-train.json").read_text())
    assert "loss is nan" in info["sft"]["error"]


def _fake_extract(imp, i):
    """Data with one verified trace, so the SFT phase has something to train on."""
    from ponder.io import write_jsonl
    from ponder.tasks import Problem

    d = imp.run.it(i) / "data"
    d.mkdir(parents=True, exist_ok=True)
    p = Problem("x", "4 6 8 10", meta={"numbers": [4, 6, 8, 10]})
    right = ["10 - 6 = 4 (left: 4 8 4)\n", "4 * 4 = 16 (left: 8 16)\n", "8 + 16 = 24 (left: 24)\n"]
    write_jsonl(d / "sft.jsonl", [{"problem": p.to_dict(), "steps": right}])
    for name in ("pairs", "value", "prm", "orm"):
        write_jsonl(d / f"{name}.jsonl", [])
    return {"sft": 1}


def test_run_folder_guards(tmp_path):
    cfg = small(iterations=1, eval_methods=["greedy"])
    with pytest.raises(PonderError, match="nothing to resume"):
        improve(tmp_path / "none", None, resume=True)
    loop.open_run(tmp_path / "run", cfg, resume=False)
    with pytest.raises(PonderError, match="already holds a run; continue it with --resume"):
        loop.open_run(tmp_path / "run", cfg, resume=False)
    with pytest.raises(PonderError, match=r"another config \(differs in: problems\)"):
        loop.open_run(tmp_path / "run", small(iterations=1, eval_methods=["greedy"], problems=5), resume=True)
    (tmp_path / "run" / "iter-1").mkdir()
    (tmp_path / "run" / "iter-1" / "phases.json").write_text("{torn")
    run = loop.open_run(tmp_path / "run", None, resume=True)
    with pytest.raises(PonderError, match="phases.json: damaged"):
        run.phases(1)


@pytest.mark.parametrize("argv,message", [
    (["--resume", "x", "--problems", "2"], "--resume takes the run's own config"),
    (["--resume", "x", "--iterations", "2"], "nothing to resume"),
    (["--set", "search.nope=1"], "unknown option.*search.nope"),
    (["--set", "iterations"], "expected KEY=VALUE"),
    (["--iterations", "0"], "--iterations must be > 0"),
    (["--critics", "value,judge"], "--critics: unknown judge"),
    (["--guide", "value@1", "--critics", "prm"], "--guide uses the value critic"),
    (["--guide", "verifier@1"], "not a learned critic"),
    (["--policy-update", "rlhf"], "--policy-update: 'rlhf' is not one of"),
    (["--config", "/nonexistent.yaml"], "config file not found"),
])
def test_improve_cli_errors_are_one_line(argv, message, capsys, tmp_path):
    assert main(["improve", "--out", str(tmp_path / "r"), *argv] if "--resume" not in argv else ["improve", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("ponder: error:")
    import re

    assert re.search(message, err), err


def test_apply_sets_nests_and_reads_yaml_values():
    assert apply_sets({"a": 1}, ["search.k=4", "dpo.beta=0.5", "critics=[value, prm]", "model=smollm2"]) == {
        "a": 1, "search": {"k": 4}, "dpo": {"beta": 0.5}, "critics": ["value", "prm"], "model": "smollm2"}


def test_lora_trains_adapters_and_saves_an_ordinary_model(tmp_path, monkeypatch):
    import torch

    from ponder.models import load_policy

    monkeypatch.setattr(loop.extract, "extract", _fake_extract)
    improve(tmp_path / "run", small(iterations=1, eval_methods=["greedy"], lora_r=2), progress=False)
    phases = json.loads((tmp_path / "run" / "iter-1" / "phases.json").read_text())
    assert phases["policy"] == str(tmp_path / "run" / "iter-1" / "policy")
    new = load_policy(phases["policy"], device="cpu").model
    old = load_policy(str(tmp_path / "run" / "iter-0" / "policy"), device="cpu").model
    assert not any("lora" in n for n, _ in new.named_parameters())  # merged: a plain model folder
    changed = [n for (n, p), (_, q) in zip(new.named_parameters(), old.named_parameters()) if not torch.equal(p, q)]
    assert changed and all("proj" in n for n in changed)  # only the adapted linear layers moved
    assert "sft" in json.loads((tmp_path / "run" / "iter-1" / "policy-train.json").read_text())


def test_a_partial_group_keeps_the_loops_own_defaults():
    cfg = build(ImproveConfig, apply_sets({}, ["search.simulations=7"]))
    default = ImproveConfig()
    assert cfg.search.simulations == 7
    assert cfg.search.k_max == default.search.k_max and cfg.search.skip_finished == default.search.skip_finished
    assert cfg.search.seed == 0 and cfg.sft == default.sft


@pytest.mark.parametrize("train_from", ["previous", "initial"])
def test_policy_training_starts_from_the_previous_or_the_initial_policy(tmp_path, monkeypatch, train_from):
    import torch
    from safetensors.torch import load_file

    feed_the_policy_phase(monkeypatch)
    root = tmp_path / "run"
    improve(root, small(policy_update="sft", train_from=train_from), progress=False)
    info = json.loads((root / "iter-2" / "policy-train.json").read_text())
    start = root / ("iter-1" if train_from == "previous" else "iter-0") / "policy"
    assert info["from"] == str(start) and info["sft"]["steps"] >= 1
    # iteration 2's SFT moved the weights away from where it started
    before, after = (load_file(d / "model.safetensors") for d in (start, root / "iter-2" / "policy"))
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_run_keeps_its_dpo_reference_reads_credit_and_extends_on_resume(tmp_path, capsys, monkeypatch):
    feed_the_policy_phase(monkeypatch)
    root = tmp_path / "run"
    improve(root, small(iterations=1, policy_update="sft+dpo"), progress=False)
    info = json.loads((root / "iter-1" / "policy-train.json").read_text())
    assert "dpo" in info and "sft" in info  # both ran on this seed: the reference is the model after SFT
    assert info["reference"] == str(root / "iter-1" / "reference")
    assert (root / "iter-1" / "reference" / "config.json").is_file()

    # the implicit reward of iteration 1's policy against that reference, as a heat map and in the tree viewer
    trace = tmp_path / "trace.txt"
    trace.write_text("10 - 6 = 4 (left: 4 4 8)\n4 + 8 = 12 (left: 4 12)\n")
    assert main(["credit", "--iteration", str(root / "iter-1"), "--problem", "4 6 8 10", "--steps", str(trace),
                 "--out", str(tmp_path / "c.html")]) == 0
    assert "step sums:" in capsys.readouterr().out
    assert 'class="tok"' in (tmp_path / "c.html").read_text() and (tmp_path / "c.png").stat().st_size > 1000
    page = tmp_path / "v.html"
    assert main(["view", str(root / "iter-1" / "search.jsonl"), "--credit", str(root / "iter-1"), "--task", "game24",
                 "--out", str(page)]) == 0
    text = page.read_text()
    assert text.count('title="implicit reward of this step') >= 4 and 'class="tok"' in text

    # a finished run goes on for more iterations with --resume --iterations; other options are still refused
    assert main(["improve", "--resume", str(root), "--iterations", "2", "--quiet"]) == 0
    assert [m["iteration"] for m in read_rows(root / "metrics.jsonl")] == [0, 1, 2]
    assert yaml.safe_load((root / "config.yaml").read_text())["iterations"] == 2
    assert main(["improve", "--resume", str(root), "--problems", "8"]) == 2
    assert "give no other options but --iterations" in capsys.readouterr().err


def test_once_fresh_problems_run_out_earlier_unsolved_ones_are_searched_again(tmp_path):
    from ponder.io import write_jsonl

    data = tmp_path / "mine.jsonl"
    write_jsonl(data, [{"question": f"What is {n} + 1?", "answer": f"#### {n + 1}"} for n in range(8)])
    cfg = small(task="gsm8k", data=str(data), problems=3, validation=2)
    run = loop.Run(tmp_path / "run", cfg)
    imp = loop.Improver(run, progress=False)
    val = {p.question for p in imp.val}
    searched: list[list[str]] = []
    for i in (1, 2, 3):
        problems, again = loop.imagine.training_problems(imp, i)
        qs = [p.question for p in problems]
        assert len(qs) == 3 == len(set(qs)) and not set(qs) & val
        searched.append(qs)
        run.it(i).mkdir(parents=True)
        write_jsonl(run.it(i) / "problems.jsonl", [p.to_dict() for p in problems])
        # the search solves the first problem of each iteration
        write_jsonl(run.it(i) / "search.jsonl", [{"question": q, "correct": float(k == 0)} for k, q in enumerate(qs)])
        assert again == (3 if i == 3 else 0)
    # iterations 1 and 2 share out the six problems outside validation
    assert len(set(searched[0]) | set(searched[1])) == 6
    # iteration 3 has none fresh: the unsolved ones, oldest first, never one that was solved
    assert searched[2] == [searched[0][1], searched[0][2], searched[1][1]]


def test_the_orm_is_trained_only_where_the_task_has_no_verifier(tmp_path):
    from ponder.io import write_jsonl

    data = tmp_path / "mine.jsonl"
    write_jsonl(data, [{"question": f"What is {n} + 1?", "answer": f"#### {n + 1}"} for n in range(8)])
    kinds = {}
    for name, cfg in [("game24", small()), ("gsm8k", small(task="gsm8k", data=str(data), validation=2)),
                      ("chosen", small(critics=["orm", "value", "prm"]))]:
        kinds[name] = loop.Improver(loop.Run(tmp_path / name, cfg), progress=False).critic_kinds()
    assert kinds == {"game24": ("value", "prm"), "gsm8k": ("value", "prm", "orm"), "chosen": ("orm", "value", "prm")}


def test_the_top_seed_moves_every_group_seed_and_seed_0_changes_nothing(tmp_path):
    groups = ("bootstrap", "sft", "dpo", "critic", "search", "eval_mcts")
    base = small()
    assert loop.seeded(base) is base
    cfg = small(seed=3)
    imp = loop.Improver(loop.Run(tmp_path / "run", cfg), progress=False)
    for name in groups:
        assert getattr(imp.cfg, name).seed == getattr(base, name).seed + 3, name
    assert imp.run.cfg.bootstrap.seed == base.bootstrap.seed  # what the run folder records is what was given


def test_the_report_says_how_large_a_difference_is_noise(tmp_path):
    from ponder.report.run_report import noise_note, write_report

    metrics = [{"iteration": i, "eval": {"greedy": {"accuracy": a, "tokens_generated": 75, "problems": 100},
                                         "mcts": {"accuracy": b, "tokens_generated": 900, "problems": 100}}}
               for i, (a, b) in enumerate([(0.02, 0.13), (0.06, 0.07)])]
    # the largest standard error is at 13%: sqrt(0.13 * 0.87 / 100) = 3.4 points; a difference needs ~9.5
    note = noise_note(metrics)
    assert "up to 3.4 points" in note and "at 13%" in note and "about 10 points" in note
    text = write_report(tmp_path, metrics, small()).read_text()
    assert note in text and (tmp_path / "solve_rate.png").stat().st_size > 1000


def test_no_training_signal_comes_from_the_solver(tmp_path, monkeypatch):
    """The brute-force solver is for analysis only: the whole loop runs with it made to raise."""
    import ponder.tasks.game24 as g

    def solver(*a, **k):
        raise AssertionError("the loop asked the brute-force solver")

    monkeypatch.setattr(g, "_solve", solver)
    monkeypatch.setattr(g, "solve", solver)
    monkeypatch.setattr(g, "reachable", solver)
    improve(tmp_path / "run", small(iterations=1), progress=False)
    metrics = read_rows(tmp_path / "run" / "metrics.jsonl")
    assert [m["iteration"] for m in metrics] == [0, 1]
    assert read_rows(tmp_path / "run" / "iter-1" / "data" / "policy_targets.jsonl")  # it learned from its search
    watch = metrics[1]["watch"]  # the step-level collapse watch over the legal actions of the first step
    assert 0 < watch["step_entropy"] <= math.log(36) + 1e-6 and 1 <= watch["step_distinct"] <= 2
