"""bench/improve_vs_grpo.py without training: TRL's steps matched to ponder GRPO's tokens, an arm's compute and
solve rates read from a run folder's records, the rows' resume rule, the table, and refused settings."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from ponder.errors import PonderError
from ponder.io import read_rows, write_jsonl

BENCH = Path(__file__).resolve().parent.parent / "bench" / "improve_vs_grpo.py"
spec = importlib.util.spec_from_file_location("improve_vs_grpo", BENCH)
vs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vs)


def test_trl_steps_close_the_token_gap_at_trls_own_rate():
    # the first training: ponder's rate (6,400 tokens over 20 steps = 320 a step)
    assert vs.trl_steps(6400, 0, 0, 320.0) == 20
    # TRL spent 5,000 tokens in 20 steps (250 a step); ponder is at 12,800: 7,800 more = 31.2 -> 31 steps
    assert vs.trl_steps(12800, 5000, 20, 320.0) == 31
    # already past the target: still one step, so every iteration has a model to evaluate
    assert vs.trl_steps(1000, 5000, 20, 320.0) == 1
    with pytest.raises(PonderError, match="no tokens per step"):
        vs.trl_steps(1000, 0, 0, 0.0)


def fake_run(root: Path, grpo: bool) -> None:
    """A two-iteration loop run folder with the records the bench reads."""
    for i in range(3):
        it = root / f"iter-{i}"
        it.mkdir(parents=True)
        ph = {"policy": str(it / "policy"), "eval": {"greedy": {"accuracy": 0.1 * (i + 1), "problems": 100},
                                                     "mcts": {"accuracy": 0.5, "problems": 100}}}
        if i:
            write_jsonl(it / "problems.jsonl", [{"id": str(j), "question": "1 2 3 4"} for j in range(4)])
            ph["search"] = {"solved": 0.5, "tokens_generated": 250.0, "seconds": 10.0}
            ph["critics"] = {"value": {"seconds": 2.0}, "prm": {"seconds": 3.0}, "orm": {"skipped": "no labels"}}
            train = {"from": "x", "grpo": {"steps": 5, "tokens_generated": 3000, "seconds": 20.0}} if grpo else \
                {"from": "x", "expert": {"steps": 5, "seconds": 7.0}}
            (it / "policy-train.json").write_text(json.dumps(train))
        (it / "phases.json").write_text(json.dumps(ph))


def test_a_loop_arms_rows_come_from_its_records(tmp_path):
    fake_run(tmp_path / "grpo", grpo=True)
    rows = vs.loop_rows("grpo", tmp_path / "grpo", 2)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert [r["tokens"] for r in rows] == [0, 4000, 8000]  # 250 a problem x 4 searched + 3,000 GRPO tokens, each iteration
    assert [r["policy_tokens"] for r in rows] == [0, 3000, 6000]  # what the policy learned from: GRPO's samples
    assert [r["seconds"] for r in rows] == [0.0, 35.0, 70.0]  # search 10 + GRPO 20 + critics 2 + 3
    assert rows[1]["greedy"] == pytest.approx(0.2) and rows[1]["greedy_se"] == pytest.approx(math.sqrt(0.2 * 0.8 / 100))
    assert rows[2]["mcts"] == 0.5 and rows[2]["mcts_se"] == pytest.approx(0.05)
    assert vs.grpo_targets(tmp_path / "grpo", 2) == [(3000.0, 5), (3000.0, 5)]

    fake_run(tmp_path / "mcts", grpo=False)
    rows = vs.loop_rows("mcts", tmp_path / "mcts", 2)
    assert [r["policy_tokens"] for r in rows] == [r["tokens"] for r in rows] == [0, 1000, 2000]
    with pytest.raises(PonderError, match="has none; run --arms grpo,trl"):
        vs.grpo_targets(tmp_path / "mcts", 2)
    with pytest.raises(PonderError, match="not evaluated yet"):
        vs.loop_rows("mcts", tmp_path / "mcts", 3)


def test_rows_resume_by_arm_and_the_table_lists_them(tmp_path):
    fake_run(tmp_path / "mcts", grpo=False)
    path = tmp_path / "results.jsonl"
    first = vs.loop_rows("mcts", tmp_path / "mcts", 1)
    vs.append_rows(path, [], first)
    assert vs.done_arms(read_rows(path), 1) == {"mcts"} and vs.done_arms(read_rows(path), 2) == set()
    vs.append_rows(path, read_rows(path), vs.loop_rows("mcts", tmp_path / "mcts", 2))  # extended: iteration 2 added once
    assert [(r["arm"], r["iteration"]) for r in read_rows(path)] == [("mcts", 0), ("mcts", 1), ("mcts", 2)]
    text = vs.table(read_rows(path), 2)
    assert text.splitlines()[3] == "| (a) ponder improve: MCTS + expert iteration | 1 | 1,000 | 1,000 | 22 | 20% ± 4 | 50% ± 5 |"


def test_arms_and_settings_are_checked(tmp_path):
    assert vs.parse_arms("trl,star,grpo") == ["grpo", "star", "trl"]  # grpo runs before trl, which matches it
    with pytest.raises(PonderError, match="--arms: unknown ppo; choose from mcts, grpo, star, trl"):
        vs.parse_arms("grpo,ppo")
    args = vs.parse_args(["--out", str(tmp_path), "--seed", "1"])
    vs.check_settings(tmp_path, args)
    vs.check_settings(tmp_path, vs.parse_args(["--out", str(tmp_path), "--seed", "1", "--iterations", "3"]))
    with pytest.raises(PonderError, match=r"other settings \(differs in: seed\)"):
        vs.check_settings(tmp_path, vs.parse_args(["--out", str(tmp_path), "--seed", "2"]))
    with pytest.raises(PonderError, match="--problems must be > 0"):
        vs.parse_args(["--problems", "0"])


def test_the_loop_arms_command_starts_from_the_bootstrap_and_resumes(tmp_path):
    args = vs.parse_args(["--out", str(tmp_path), "--eval-limit", "4", "--set", "sft.steps=2"])
    cmd = vs.improve_command("star", tmp_path / "star", "BOOT", args)
    assert cmd[cmd.index("--model") + 1] == "BOOT" and cmd[cmd.index("--search-method") + 1] == "best-of-n"
    assert cmd[cmd.index("--policy-update") + 1] == "sft" and cmd[cmd.index("--set") + 1] == "sft.steps=2"
    assert cmd[cmd.index("--eval-methods") + 1] == "greedy,mcts" and cmd[cmd.index("--eval-limit") + 1] == "4"
    (tmp_path / "star").mkdir()
    (tmp_path / "star" / "config.yaml").write_text("task: game24\n")
    assert vs.improve_command("star", tmp_path / "star", "BOOT", args)[4:] == ["--resume", str(tmp_path / "star"),
                                                                              "--iterations", "2"]
