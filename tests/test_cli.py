"""The command line, in-process: one-line errors with exit code 2, and eval / solve / train end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ponder.cli import main


@pytest.fixture(autouse=True)
def _quiet_transformers():
    """transformers draws "Loading weights" bars on stderr; they are not ponder's output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    yield
    hf_logging.enable_progress_bar()


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("ponder: error: "), err
    return lines[0]


def eval_args(model: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--model", str(model), "--task", "game24", "--out", str(out), "--quiet", *extra]


# --- bad input ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--task", "chess"], "unknown task 'chess'"),
        (["--method", "beam-me-up"], "unknown method 'beam-me-up'"),
        (["--limit", "0"], "--limit must be > 0, got 0"),
        (["--limit", "-3"], "--limit must be > 0, got -3"),
        (["--limit", "three"], "--limit must be a whole number"),
        (["--batch", "0"], "--batch must be > 0, got 0"),
        (["--method", "best-of-n", "--n", "0"], "--n must be > 0, got 0"),
        (["--method", "sampling", "--temperature", "-1"], "--temperature must be > 0"),
        (["--method", "best-of-n", "--critic", "oracle"], "unknown critic 'oracle'"),
        (["--split", "dev"], "invalid choice: 'dev'"),
        (["--dtype", "float8"], "unknown --dtype 'float8'"),
    ],
)
def test_eval_bad_options(tiny_model_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "run.jsonl"
    assert main(eval_args(tiny_model_dir, out, *extra)) == 2
    assert message in one_error_line(capsys)
    assert not out.exists()  # nothing was started


def test_missing_model(tmp_path, capsys):
    assert main(eval_args(tmp_path / "no-such-model", tmp_path / "run.jsonl")) == 2
    line = one_error_line(capsys)
    assert "model not found" in line and "no-such-model" in line


def test_model_folder_without_config(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(eval_args(tmp_path / "empty", tmp_path / "run.jsonl")) == 2
    assert "not a model folder" in one_error_line(capsys)


def test_missing_required_option_and_command(capsys):
    assert main(["eval", "--task", "game24"]) == 2
    assert "--model" in one_error_line(capsys)
    assert main([]) == 2
    one_error_line(capsys)
    assert main(["fly"]) == 2
    one_error_line(capsys)


def test_malformed_gsm8k_data_names_file_and_line(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"question": "1 + 1?", "answer": "#### 2"}\n\n{"question": "oops", "answer": \n')
    args = eval_args(tiny_model_dir, tmp_path / "run.jsonl", "--task", "gsm8k", "--data", str(data))
    assert main(args) == 2
    line = one_error_line(capsys)
    assert f"{data}:3: malformed JSON" in line


def test_gsm8k_data_missing_key_names_file_and_line(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"question": "1 + 1?", "answer": "#### 2"}\n{"question": "no answer"}\n')
    assert main(eval_args(tiny_model_dir, tmp_path / "run.jsonl", "--task", "gsm8k", "--data", str(data))) == 2
    assert f"{data}:2: missing key(s) answer" in one_error_line(capsys)


def test_bad_data_file_is_reported_before_the_model_is_loaded(tmp_path, capsys):
    data = tmp_path / "mine.jsonl"
    data.write_text("not json\n")
    assert main(eval_args(tmp_path / "no-such-model", tmp_path / "run.jsonl", "--task", "gsm8k", "--data", str(data))) == 2
    assert f"{data}:1" in one_error_line(capsys)


def test_config_yaml_with_unknown_key(tiny_model_dir, tmp_path, capsys):
    cfg = tmp_path / "bon.yaml"
    cfg.write_text("n: 4\nbeam_width: 3\n")
    assert main(eval_args(tiny_model_dir, tmp_path / "run.jsonl", "--method", "best-of-n", "--config", str(cfg))) == 2
    line = one_error_line(capsys)
    assert "unknown option(s)" in line and "beam_width" in line and str(cfg) in line


@pytest.mark.parametrize("content, message", [("n: 0\n", "--n must be > 0"), ("- 1\n- 2\n", "expected a mapping")])
def test_config_yaml_bad_values(tiny_model_dir, tmp_path, capsys, content, message):
    cfg = tmp_path / "bon.yaml"
    cfg.write_text(content)
    assert main(eval_args(tiny_model_dir, tmp_path / "run.jsonl", "--method", "best-of-n", "--config", str(cfg))) == 2
    assert message in one_error_line(capsys)


def test_config_yaml_missing(tiny_model_dir, tmp_path, capsys):
    args = eval_args(tiny_model_dir, tmp_path / "run.jsonl", "--method", "best-of-n", "--config", str(tmp_path / "x.yaml"))
    assert main(args) == 2
    assert "config file not found" in one_error_line(capsys)


# --- eval end to end, resume -------------------------------------------------------------------------------
ROW_KEYS = {"problem_id", "question", "reference", "meta", "method", "answer", "correct", "steps", "compute", "info", "tree_size"}


def read(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture(scope="module")
def eval_run(tiny_model_dir, tmp_path_factory):
    """One best-of-n eval of the untrained tiny model on 6 test puzzles (shared by the resume tests)."""
    out = tmp_path_factory.mktemp("eval") / "run.jsonl"
    args = eval_args(tiny_model_dir, out, "--limit", "6", "--batch", "4", "--method", "best-of-n", "--n", "2")
    assert main(args) == 0
    return args, out, out.read_text()


def test_eval_writes_one_row_per_problem(eval_run, capsys):
    args, out, text = eval_run
    rows = read(out)
    assert len(rows) == 6 and text.endswith("\n")
    assert [r["problem_id"] for r in rows] == [f"game24-{r}" for r in range(901, 907)]
    for r in rows:
        assert set(r) == ROW_KEYS
        assert r["method"] == "best-of-n" and r["correct"] in (0.0, 1.0)
        assert r["compute"]["tokens_generated"] > 0 and r["compute"]["tokens_read"] > 0
        assert r["compute"]["forward_calls"] > 0 and r["compute"]["seconds"] > 0
        assert r["info"]["pass_at_n"] in (0.0, 1.0) and r["tree_size"] >= 2
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    assert meta["method"] == "best-of-n" and meta["config"]["n"] == 2 and meta["task"] == "game24"


def test_eval_resumes_after_a_torn_line(eval_run, tmp_path, capsys):
    args, out, text = eval_run
    lines = text.splitlines(keepends=True)
    mine = tmp_path / "run.jsonl"
    mine.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    (tmp_path / "run.jsonl.meta.json").write_text(out.with_name(out.name + ".meta.json").read_text())
    args = [a if a != str(out) else str(mine) for a in args]
    assert main(args) == 0
    rows = read(mine)
    assert len(rows) == 6
    ids = [r["problem_id"] for r in rows]
    assert len(set(ids)) == 6 and set(ids) == {f"game24-{r}" for r in range(901, 907)}
    assert mine.read_text().startswith("".join(lines[:3]))  # finished rows are kept as they were
    assert "| best-of-n | 6 |" in capsys.readouterr().out

    # a rerun of a finished file does nothing
    before = mine.read_text()
    assert main(args) == 0
    assert mine.read_text() == before

    # other settings are refused and nothing is written
    other = [a if a != "2" else "3" for a in args]  # --n 2 -> --n 3
    assert other != args
    assert main(other) == 2
    assert "other settings" in one_error_line(capsys)
    assert mine.read_text() == before


def test_eval_resumes_after_a_row_without_its_newline(eval_run, tmp_path):
    args, out, text = eval_run
    lines = text.splitlines(keepends=True)
    mine = tmp_path / "run.jsonl"
    mine.write_text("".join(lines[:3]).rstrip("\n"))
    (tmp_path / "run.jsonl.meta.json").write_text(out.with_name(out.name + ".meta.json").read_text())
    assert main([a if a != str(out) else str(mine) for a in args]) == 0
    assert len(read(mine)) == 6


def test_eval_damaged_run_file_is_refused(eval_run, tmp_path, capsys):
    args, out, text = eval_run
    lines = text.splitlines(keepends=True)
    mine = tmp_path / "run.jsonl"
    mine.write_text(lines[0] + "{garbage\n" + lines[1])
    (tmp_path / "run.jsonl.meta.json").write_text(out.with_name(out.name + ".meta.json").read_text())
    assert main([a if a != str(out) else str(mine) for a in args]) == 2
    assert f"{mine}:2: malformed line" in one_error_line(capsys)
    assert mine.read_text() == lines[0] + "{garbage\n" + lines[1]


# --- solve, train --------------------------------------------------------------------------------------------
def test_solve_prints_an_answer_line(tiny_model_dir, capsys):
    assert main(["solve", "4 9 10 13", "--model", str(tiny_model_dir), "--task", "game24"]) == 0
    out = capsys.readouterr().out
    answer = [line for line in out.splitlines() if line.startswith("answer: ")]
    assert len(answer) == 1 and "tokens generated" in answer[0] and "reward" in answer[0]


def test_solve_bad_puzzle(tiny_model_dir, capsys):
    assert main(["solve", "4 9 10", "--model", str(tiny_model_dir)]) == 2
    assert "four whole numbers" in one_error_line(capsys)


def test_train_writes_a_loadable_model_folder(tmp_path, capsys):
    out = tmp_path / "model"
    args = ["train", "--task", "game24", "--steps", "3", "--batch-size", "4", "--checkpoint-every", "2", "--out", str(out),
            "--hidden-size", "64", "--num-layers", "1", "--intermediate-size", "128"]
    assert main(args) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "loss.png"):
        assert (out / name).is_file(), name
    assert not (tmp_path / "model.tmp").exists() and not (tmp_path / "model.old").exists()
    log = [json.loads(line) for line in (tmp_path / "model.losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1, 2] and all(r["loss"] > 0 for r in log)
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_size"] == 64 and config["num_hidden_layers"] == 1
    assert "final loss" in capsys.readouterr().out

    from ponder.models import load_policy

    policy = load_policy(str(out), device="cpu")
    assert sum(p.numel() for p in policy.model.parameters()) < 100_000


def test_train_bad_options(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "m"), "--steps", "0"]) == 2
    assert "--steps must be > 0" in one_error_line(capsys)
    assert main(["train", "--out", str(tmp_path / "m"), "--precision", "fp8"]) == 2
    assert "--precision" in one_error_line(capsys)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("command", ["train", "solve", "eval", "improve", "train-policy", "view", "credit"])
def test_every_command_prints_its_help(command, capsys):
    # argparse %-formats help text, so one option's help with a bare "%" crashed `ponder eval --help`
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ponder " + command) and "--" in out
