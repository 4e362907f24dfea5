"""Data-parallel training through a real ``accelerate launch`` (2 processes on the CPU, gloo): ``ponder train``
and the policy phase of ``ponder improve --train-launcher``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ponder.cli import main
from ponder.io import read_rows
from ponder.loop import improve

ACCELERATE = Path(sys.executable).with_name("accelerate")
LAUNCH = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533"]
TINY = ["--hidden-size", "64", "--num-layers", "1", "--num-heads", "4", "--intermediate-size", "128"]

pytestmark = pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate's launcher is not installed")


@pytest.fixture
def one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two processes on two cores


def train(out: Path, launcher: list[str]) -> list[float]:
    cmd = [*launcher, "-m", "ponder.cli", "train", "--task", "game24", "--out", str(out), "--steps", "8",
           "--batch-size", "8", "--lr", "3e-3", "--warmup", "2", *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line)["loss"] for line in out.with_name(out.name + ".losses.jsonl").read_text().splitlines()]


def test_ponder_train_under_accelerate_launch_splits_each_batch_over_two_processes(tmp_path, one_thread):
    two = train(tmp_path / "two", LAUNCH)
    one = train(tmp_path / "one", [sys.executable])
    assert len(two) == len(one) == 8  # one log line per step: only the main process writes
    assert json.loads((tmp_path / "two" / "train_config.json").read_text())["processes"] == 2
    assert json.loads((tmp_path / "one" / "train_config.json").read_text())["processes"] == 1
    # the same global batches, halved per process: the mean of the two halves' losses is close to the
    # whole batch's (token-weighted) loss, and training goes the same way
    assert two[0] == pytest.approx(one[0], rel=0.05)
    assert two[-1] < 0.9 * two[0] and one[-1] < 0.9 * one[0]
    assert two[-1] == pytest.approx(one[-1], rel=0.15)
    assert (tmp_path / "two" / "config.json").is_file()


def test_improve_trains_its_policy_through_the_launcher(tmp_path, one_thread, monkeypatch):
    from test_improve import feed_the_policy_phase, small

    feed_the_policy_phase(monkeypatch, copies=3)
    root = tmp_path / "run"
    improve(root, small(iterations=1, policy_update="sft+dpo"), progress=False, launcher=" ".join(LAUNCH))
    info = json.loads((root / "iter-1" / "policy-train.json").read_text())
    assert info["processes"] == 2 and "error" not in info["sft"] and "error" not in info["dpo"]
    assert info["sft"]["traces"] >= 3 and info["dpo"]["pairs"] >= 3  # one batch of 3 pairs: 2 on rank 0, 1 on rank 1
    phases = json.loads((root / "iter-1" / "phases.json").read_text())
    assert phases["policy"] == str(root / "iter-1" / "policy")
    assert (root / "iter-1" / "policy" / "config.json").is_file() and (root / "iter-1" / "reference").is_dir()
    assert [m["iteration"] for m in read_rows(root / "metrics.jsonl")] == [0, 1]  # the loop went on after it
    assert not (root / "iter-1" / "policy-sft").exists()


def test_a_failing_launcher_is_one_clear_error(tmp_path, capsys):
    from test_improve import SMALL

    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**SMALL, "iterations": 1}))
    argv = ["improve", "--config", str(cfg), "--out", str(tmp_path / "r"), "--quiet",
            "--train-launcher", f"{sys.executable} -c 'import sys; sys.exit(3)'"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--train-launcher: policy training exited with code 3" in err, err
    assert main(["improve", "--config", str(cfg), "--out", str(tmp_path / "s"), "--quiet",
                 "--train-launcher", "no-such-launcher-xyz"]) == 2
    assert "'no-such-launcher-xyz' not found" in capsys.readouterr().err
    assert os.path.isdir(tmp_path / "r" / "iter-1")  # what ran before the training phase is kept for --resume
