"""``--ray``: problems spread over real Ray actors (a local Ray with 2 CPUs, not a mock), each holding a model."""

from __future__ import annotations

import json

import pytest

ray = pytest.importorskip("ray")

from ponder.cli import main  # noqa: E402
from ponder.distributed import RayPool, WorkerSpec  # noqa: E402
from ponder.evaluate import run_eval  # noqa: E402
from ponder.models import load_policy  # noqa: E402
from ponder.search import get_method  # noqa: E402
from ponder.tasks import get_task  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ray_eval_matches_the_local_run_and_resumes(local_ray, tiny_model_dir, tmp_path):
    task = get_task("game24")
    problems = task.problems("test")[:8]
    cfg = get_method("greedy").config()
    local, _ = run_eval(task, load_policy(str(tiny_model_dir)), "greedy", cfg, problems, tmp_path / "local.jsonl",
                        progress=False)

    out = tmp_path / "ray.jsonl"
    pool = RayPool(WorkerSpec("game24", None, str(tiny_model_dir)), workers=2)
    try:
        # a run killed after 3 problems: the Ray run does only the other 5 and keeps the 3
        first = rows(tmp_path / "local.jsonl")[:3]
        out.write_text("".join(json.dumps(r) + "\n" for r in first))
        summary, got = run_eval(task, None, "greedy", cfg, problems, out, batch=32, progress=False, pool=pool)
    finally:
        pool.close()
    assert [r["problem_id"] for r in got] == [p.id for p in problems]  # gathered in problem order
    assert rows(out)[:3] == first and len(rows(out)) == 8  # appended, nothing redone or lost
    want = {r["problem_id"]: r for r in rows(tmp_path / "local.jsonl")}
    for r in got:  # greedy: the same traces wherever they ran
        assert r["steps"] == want[r["problem_id"]]["steps"]
        assert r["compute"]["tokens_generated"] == want[r["problem_id"]]["compute"]["tokens_generated"]
    assert summary.accuracy == local.accuracy
    # both workers took chunks (5 problems in chunks of ceil(5 / 4) = 2), and their shares add up
    assert [s.problems > 0 for s in pool.stats] == [True, True]
    assert sum(s.problems for s in pool.stats) == 5
    assert sum(s.tokens_generated for s in pool.stats) == sum(r["compute"]["tokens_generated"] for r in got[3:])
    assert "| worker |" in pool.report()


def test_cli_ray_eval_with_a_critic_and_worker_table(local_ray, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "bon.jsonl"
    args = ["eval", "--model", str(tiny_model_dir), "--task", "game24", "--method", "best-of-n", "--n", "2",
            "--limit", "4", "--out", str(out), "--quiet", "--ray", "auto", "--workers", "2"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Ray: 2 workers" in text and text.count("| 0 |") + text.count("| 1 |") >= 2
    got = rows(out)
    assert len(got) == 4 and all(r["info"]["best_score"] is not None for r in got)  # the verifier ran in the actors
    assert main(args) == 0  # a finished run resumes to nothing new
    assert len(rows(out)) == 4


def test_ray_errors_are_one_line(local_ray, tmp_path, capsys):
    args = ["eval", "--model", str(tmp_path / "nope"), "--task", "game24", "--limit", "2", "--out",
            str(tmp_path / "x.jsonl"), "--quiet", "--ray", "auto", "--workers", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not load its model" in err[0] and "model not found" in err[0], err
    assert main(["eval", "--model", "x", "--workers", "2", "--out", str(tmp_path / "y.jsonl")]) == 2
    assert "--workers needs --ray" in capsys.readouterr().err


def test_improve_on_ray_workers_swaps_in_each_iterations_policy_and_critics(local_ray, tmp_path):
    from test_improve import small

    from ponder.io import read_rows
    from ponder.loop import improve

    root = tmp_path / "run"
    improve(root, small(iterations=2, eval_methods=["greedy", "mcts"]), progress=False, ray="auto", workers=2)
    metrics = read_rows(root / "metrics.jsonl")
    assert [m["iteration"] for m in metrics] == [0, 1, 2]
    assert len(read_rows(root / "iter-2" / "search.jsonl")) == 4
    # iteration 2 searched with iteration 1's critics, which the workers loaded from their specs
    phases = json.loads((root / "iter-2" / "phases.json").read_text())
    assert phases["search"]["guide"] == "value@1+prm@1" and phases["eval"]["mcts"]["critic"] == "value@1+prm@1"
    # the workers evaluated iteration 2's policy (greedy is deterministic)
    task = get_task("game24")
    test = task.problems("test")[:2]
    _, local = run_eval(task, load_policy(phases["policy"]), "greedy", get_method("greedy").config(), test, None,
                        progress=False)
    got = {r["problem_id"]: r["steps"] for r in read_rows(root / "iter-2" / "eval-greedy.jsonl")}
    assert got == {r["problem_id"]: r["steps"] for r in local}  # two workers may finish in either order
    table = (root / "ray-workers.md").read_text()
    assert table.startswith("| worker |") and len(table.strip().splitlines()) == 4  # header, rule, 2 workers


def test_a_pool_swaps_in_another_model(local_ray, tiny_model_dir, tmp_path):
    from conftest import small_tiny_model

    from ponder.train import SFTConfig, train_sft

    task = get_task("game24")
    other = tmp_path / "other"  # a model that writes steps (the untrained one writes none)
    model, tok = small_tiny_model()
    train_sft(model, tok, lambda n, step: task.bootstrap_texts(n, step), SFTConfig(steps=60, batch_size=8, lr=3e-3, warmup=3),
              other, progress=False)
    problems, cfg = task.problems("test")[:4], get_method("greedy").config()
    pool = RayPool(WorkerSpec("game24", None, str(tiny_model_dir)), workers=2)
    try:
        _, first = run_eval(task, None, "greedy", cfg, problems, None, pool=pool, progress=False)
        pool.use(WorkerSpec("game24", None, str(other)))
        _, second = run_eval(task, None, "greedy", cfg, problems, None, pool=pool, progress=False)
    finally:
        pool.close()
    for path, got in ((tiny_model_dir, first), (other, second)):
        _, want = run_eval(task, load_policy(str(path)), "greedy", cfg, problems, None, progress=False)
        assert [r["steps"] for r in got] == [r["steps"] for r in want]
    assert [r["steps"] for r in first] != [r["steps"] for r in second]


def test_improve_workers_without_ray_is_refused(tmp_path, capsys):
    assert main(["improve", "--out", str(tmp_path / "r"), "--workers", "2"]) == 2
    assert "--workers needs --ray" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
