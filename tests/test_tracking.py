"""``--report-to``: loss curves and per-iteration metrics land in TensorBoard (and MLflow, Trackio where
installed), read back equal to the run's own files; bad or missing backends are one-line errors."""

from __future__ import annotations

import json

import pytest

from ponder.cli import main
from ponder.errors import PonderError
from ponder.io import read_rows
from ponder.loop import improve
from ponder.tracking import Tracker, flatten, get_tracker, hparams
from test_improve import small


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("ponder: error:"), err
    return err


def events(logdir):
    """{tag: [(step, value)]} of the scalars and the image tags of a TensorBoard log folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}, set(tags["images"])


def logged_hparams(logdir):
    """([{name: value}] of every hparams session-start summary in the event files, in file order,
    {tag: text} of the text summaries), read with TensorBoard's own loaders."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import metadata
    from tensorboard.util import tensor_util

    sessions, texts = [], {}
    for path in sorted(logdir.glob("events.*")):
        for event in EventFileLoader(str(path)).Load():
            for v in event.summary.value:
                plugin = v.metadata.plugin_data
                if v.tag == metadata.SESSION_START_INFO_TAG:
                    info = metadata.parse_session_start_info_plugin_data(plugin.content)
                    sessions.append({k: getattr(x, x.WhichOneof("kind")) for k, x in info.hparams.items()})
                elif plugin.plugin_name == "text":
                    texts[v.tag] = tensor_util.make_ndarray(v.tensor).item().decode()
    return sessions, texts


def test_hparams_are_the_config_flattened_to_group_field():
    from ponder.loop import ImproveConfig

    cfg = small()
    got = hparams(cfg)
    assert got["iterations"] == cfg.iterations and got["search.simulations"] == cfg.search.simulations
    assert got["sft.lr"] == cfg.sft.lr and got["watch.rollback"] is cfg.watch.rollback
    assert got["report_to"] == "none" and got["eval_methods"] == str(list(cfg.eval_methods))  # a list as its str()
    assert all(isinstance(v, (bool, int, float, str)) for v in got.values())
    assert len(got) == len(hparams(ImproveConfig()))  # every field of every group, nothing dropped
    assert hparams({"task": "game24", "init": None, "tiny": {"hidden_size": 64}}) == {
        "task": "game24", "init": "None", "tiny.hidden_size": 64}


def test_flatten_keeps_the_numbers_under_their_paths():
    got = flatten({"eval": {"greedy": {"accuracy": 0.5, "critic": None}}, "warnings": ["x"], "frozen": True,
                   "n": 3, "bad": float("nan")}, "p")
    assert got == {"p/eval/greedy/accuracy": 0.5, "p/n": 3.0}


def test_train_report_to_tensorboard_logs_every_step_of_the_loss(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from ponder.train import SFTConfig

    out = tmp_path / "model"
    args = ["train", "--task", "game24", "--steps", "3", "--batch-size", "4", "--warmup", "2", "--out", str(out),
            "--hidden-size", "64", "--num-layers", "1", "--intermediate-size", "128", "--report-to", "tensorboard"]
    assert main(args) == 0
    assert "tensorboard: " in capsys.readouterr().out
    log = [json.loads(line) for line in (tmp_path / "model.losses.jsonl").read_text().splitlines()]
    scalars, _ = events(tmp_path / "model.tracking" / "tb")
    assert [s for s, _ in scalars["train/loss"]] == [0, 1, 2]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([r["loss"] for r in log], abs=1e-5)
    assert [v for _, v in scalars["train/lr"]] == pytest.approx([r["lr"] for r in log], rel=1e-6)
    assert not list(out.glob("events.*"))  # the model folder stays an ordinary model folder
    # the hyper-parameters: the whole SFT config, the task and the fresh model's size, once
    [hp], texts = logged_hparams(tmp_path / "model.tracking" / "tb")
    assert hp["steps"] == 3 and hp["batch_size"] == 4 and hp["warmup"] == 2 and hp["task"] == "game24"
    assert hp["tiny.hidden_size"] == 64 and hp["tiny.num_layers"] == 1 and hp["init"] == "None"
    assert hp["lr"] == pytest.approx(SFTConfig().lr)
    assert "steps: 3" in texts["config/text_summary"] and "hidden_size: 64" in texts["config/text_summary"]

    # a second train to the same --out replaces the curve instead of piling a second one onto it
    assert main([*args[:4], "2", *args[5:]]) == 0
    scalars, _ = events(tmp_path / "model.tracking" / "tb")
    assert [s for s, _ in scalars["train/loss"]] == [0, 1]
    [hp], _ = logged_hparams(tmp_path / "model.tracking" / "tb")
    assert hp["steps"] == 2


def test_improve_report_to_tensorboard_logs_each_iteration_once_also_after_resume(tmp_path):
    pytest.importorskip("tensorboard")
    root = tmp_path / "run"
    # validation=0: no collapse watch, whose sampling is most of a small run's time (its metrics go the same way)
    improve(root, small(iterations=1, eval_methods=["greedy"], validation=0, report_to="tensorboard"), progress=False)
    assert main(["improve", "--resume", str(root), "--iterations", "2", "--quiet"]) == 0  # a resumed run goes on logging
    scalars, images = events(root / "tb")
    metrics = read_rows(root / "metrics.jsonl")
    assert [m["iteration"] for m in metrics] == [0, 1, 2]
    # each iteration's metrics at its own step, once (iteration 0 and 1 are not logged again by the resume)
    for tag, get in [("eval/greedy/accuracy", lambda m: m["eval"]["greedy"]["accuracy"]),
                     ("eval/greedy/tokens_generated", lambda m: m["eval"]["greedy"]["tokens_generated"])]:
        assert scalars[tag] == [(m["iteration"], pytest.approx(get(m), rel=1e-5)) for m in metrics], tag
    for tag, get in [("search/solved", lambda m: m["search"]["solved"]),
                     ("data/policy_targets", lambda m: m["data"]["policy_targets"]),
                     ("critics/value/train_loss", lambda m: m["critics"]["value"]["train_loss"]),
                     ("policy_train/expert/policy_loss_last", lambda m: m["policy_train"]["expert"]["policy_loss_last"])]:
        assert scalars[tag] == [(i, pytest.approx(get(metrics[i]), rel=1e-5)) for i in (1, 2)], tag
    # every loss curve: the bootstrap's, expert iteration's and each critic's, step by step as in their files
    boot = read_rows(root / "iter-0" / "policy.losses.jsonl")
    assert scalars["bootstrap/loss"] == [(r["step"], pytest.approx(r["loss"], abs=1e-5)) for r in boot] and len(boot) == 4
    for i in (1, 2):
        rows = read_rows(root / f"iter-{i}" / "expert.losses.jsonl")
        assert rows and scalars[f"expert/iter-{i}/policy_loss"] == [(r["step"], pytest.approx(r["policy_loss"], abs=1e-5))
                                                                    for r in rows]
        assert [s for s, _ in scalars[f"expert/iter-{i}/sft_loss"]] == [r["step"] for r in rows]
        crit = read_rows(root / f"iter-{i}" / "critics.losses.jsonl")
        for kind in ("value", "prm"):
            want = [(r["step"], pytest.approx(r["loss"], abs=1e-5)) for r in crit if r["critic"] == kind]
            assert len(want) == 2 and scalars[f"{kind}_critic/iter-{i}/loss"] == want
    assert {"report/solve_rate", "report/solve_vs_tokens"} <= images
    # the hyper-parameters once, those the run started with: the resume (iterations 1 -> 2) adds no session
    [hp], texts = logged_hparams(root / "tb")
    started = small(iterations=1, eval_methods=["greedy"], validation=0, report_to="tensorboard")
    assert hp == pytest.approx(hparams(started)) and hp["iterations"] == 1 and hp["report_to"] == "tensorboard"
    assert "simulations:" in texts["config/text_summary"]


class Recorder(Tracker):
    """Keeps what it is given: [(step, {name: value})] and [(name, file name, step)]."""

    def __init__(self):
        self.rows, self.images = [], []

    def _scalars(self, scalars, step):
        self.rows.append((step, scalars))

    def _image(self, name, path, step):
        self.images.append((name, path.name, step))


def test_an_iterations_metrics_line_goes_to_the_tracker_once_with_the_reports_plots(tmp_path):
    import ponder.loop as loop

    run = loop.Run(tmp_path / "run", small())
    imp = loop.Improver(run, progress=False)
    imp.tracker = rec = Recorder()
    run.mark(0, "policy", "p")
    run.mark(0, "eval", {"greedy": {"accuracy": 0.25, "tokens_generated": 30, "problems": 4, "critic": None}})
    run.mark(0, "watch", {"val_accuracy": 0.5, "diversity": 0.75, "step_entropy": 1.5, "warnings": ["w"]})
    loop.record(imp, 0)
    loop.record(imp, 0)  # a resumed run records iteration 0 again: the tracker hears of it once
    assert rec.rows == [(0, {"eval/greedy/accuracy": 0.25, "eval/greedy/tokens_generated": 30.0, "eval/greedy/problems": 4.0,
                             "watch/val_accuracy": 0.5, "watch/diversity": 0.75, "watch/step_entropy": 1.5})]
    assert rec.images == [("report/solve_rate", "solve_rate.png", 0), ("report/solve_vs_tokens", "solve_vs_tokens.png", 0)]


def test_an_old_run_folder_without_report_to_loads_and_logs_nothing(tmp_path):
    import yaml

    from ponder.config import build, to_dict
    from ponder.loop import ImproveConfig

    saved = {k: v for k, v in to_dict(small()).items() if k != "report_to"}  # a config.yaml from before the option
    assert build(ImproveConfig, yaml.safe_load(yaml.safe_dump(saved))).report_to == "none"
    assert type(get_tracker("none", tmp_path / "x")) is Tracker and not (tmp_path / "x").exists()


def test_sft_and_dpo_log_each_step_to_the_tracker_they_are_given(tmp_path):
    from conftest import small_tiny_model
    from ponder.models.hf import HFPolicy
    from ponder.tasks import Problem, get_task
    from ponder.train import SFTConfig, train_sft
    from ponder.train.dpo import DPOConfig, train_dpo

    rec = Recorder()
    model, tok = small_tiny_model()
    losses = train_sft(model, tok, lambda n, step: ["1 + 2 = 3"] * n, SFTConfig(steps=3, batch_size=2, warmup=1),
                       tmp_path / "m", progress=False, tracker=rec.under("a").under("sft"))
    assert [(s, r["a/sft/loss"]) for s, r in rec.rows] == [(i, pytest.approx(x)) for i, x in enumerate(losses)]
    p = Problem("p", "4 6 8 10", meta={"numbers": [4, 6, 8, 10]}).to_dict()
    pairs = [{"problem": p, "prefix": [], "chosen": "10 - 6 = 4 (left: 4 8 4)\n", "rejected": "4 + 6 = 10 (left: 8 10 10)\n"}] * 4
    rec.rows.clear()
    train_dpo(HFPolicy(model, tok), get_task("game24"), pairs, DPOConfig(epochs=2, batch_size=2), tmp_path / "dpo.jsonl",
              progress=False, tracker=rec.under("dpo"))
    log = read_rows(tmp_path / "dpo.jsonl")
    assert [s for s, _ in rec.rows] == [0, 1, 2, 3] == list(range(len(log)))
    assert [r["dpo/loss"] for _, r in rec.rows] == pytest.approx([r["loss"] for r in log], abs=1e-5)
    assert [r["dpo/reward_acc"] for _, r in rec.rows] == pytest.approx([r["reward_acc"] for r in log], abs=1e-4)


@pytest.mark.parametrize("argv", [
    ["train", "--out", "OUT/m", "--report-to", "wandb"],
    ["improve", "--out", "OUT/r", "--report-to", "wandb"],
])
def test_an_unknown_report_to_is_one_line_naming_the_option(argv, tmp_path, capsys):
    argv = [a.replace("OUT", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = one_error_line(capsys)
    assert "--report-to: 'wandb' is not one of none, tensorboard, mlflow, trackio" in err
    assert not list(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("command", ["train", "improve"])
def test_a_backend_not_installed_is_one_line_saying_what_to_install(command, tmp_path, capsys, monkeypatch):
    import ponder.tracking as tracking

    monkeypatch.setattr(tracking, "find_spec", lambda name: None)
    assert main([command, "--out", str(tmp_path / "o"), "--report-to", "tensorboard"]) == 2
    assert "--report-to tensorboard needs the tensorboard package: pip install tensorboard" in one_error_line(capsys)
    assert not list(tmp_path.iterdir())
    with pytest.raises(PonderError, match="--report-to mlflow needs the mlflow package"):
        get_tracker("mlflow", tmp_path)


def test_mlflow_logs_to_a_local_file_store_and_a_reopened_folder_goes_on_in_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    png = tmp_path / "plot.png"
    _write_png(png)
    t = get_tracker("mlflow", tmp_path / "run")
    t.under("sft").log({"loss": 1.5, "note": "text"}, 0)
    t.log_image("report/plot", png, 0)
    t.close()
    t = get_tracker("mlflow", tmp_path / "run")  # --resume
    t.under("sft").log({"loss": 1.25}, 1)
    t.close()
    client = MlflowClient(tracking_uri=(tmp_path / "run" / "mlruns").resolve().as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("ponder").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "sft/loss")] == [(0, 1.5), (1, 1.25)]
    assert set(run.data.metrics) == {"sft/loss"}
    assert [f.path for f in client.list_artifacts(run.info.run_id, "report/plot/step-0")] == ["report/plot/step-0/plot.png"]


def test_mlflow_logs_the_config_as_params_once_and_a_resume_changes_none(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    import yaml
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = {"iterations": 1, "data": None, "g": {"long": "x" * 600, "methods": ["greedy", "mcts"]},
              "many": {f"p{i}": i for i in range(150)}}  # past MLflow's 100 params a batch
    get_tracker("mlflow", tmp_path / "run", config=config).close()
    # a resume with iterations raised: MLflow would refuse the changed value; the new key is added
    get_tracker("mlflow", tmp_path / "run", config={**config, "iterations": 2, "new": True}).close()
    client = MlflowClient(tracking_uri=(tmp_path / "run" / "mlruns").resolve().as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("ponder").experiment_id])
    params = run.data.params
    assert params["iterations"] == "1" and params["new"] == "True" and params["data"] == "None"
    assert params["g.long"] == "x" * 500 and params["g.methods"] == "['greedy', 'mcts']"
    assert all(params[f"many.p{i}"] == str(i) for i in range(150)) and len(params) == 155
    path = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / "dl"))
    assert yaml.safe_load(open(path)) == config  # the whole config, uncut, as the run started


def test_trackio_logs_offline_and_a_reopened_folder_goes_on_in_the_same_run(tmp_path, monkeypatch):
    import sys

    if "trackio" not in sys.modules:  # trackio reads its store folder once, on import: keep it out of ~/.cache
        monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "store"))
    trackio = pytest.importorskip("trackio")
    from trackio.sqlite_storage import SQLiteStorage

    for step, loss in [(0, 1.5), (1, 1.25)]:  # the second tracker is a resumed run
        t = get_tracker("trackio", tmp_path / "run")
        t.log({"sft": {"loss": loss}}, step)
        t.close()
    name = json.loads((tmp_path / "run" / "tracking.json").read_text())["trackio_run"]
    assert name.startswith("run-") and trackio is not None
    logs = SQLiteStorage.get_logs("ponder", name)
    assert [(r["step"], r["sft/loss"]) for r in logs] == [(0, 1.5), (1, 1.25)]


def test_trackio_keeps_the_config_the_run_started_with_across_a_resume(tmp_path, monkeypatch):
    import sys

    if "trackio" not in sys.modules:
        monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "store"))
    pytest.importorskip("trackio")
    from trackio.sqlite_storage import SQLiteStorage

    config = {"iterations": 1, "search": {"simulations": 8}, "eval_methods": ["greedy"]}
    for step, cfg in [(0, config), (1, {**config, "iterations": 2}), (2, None)]:  # a resume; a launched trainer
        t = get_tracker("trackio", tmp_path / "run", config=cfg)
        t.log({"loss": 1.0}, step)
        t.close()
    name = json.loads((tmp_path / "run" / "tracking.json").read_text())["trackio_run"]
    got = SQLiteStorage.get_run_config("ponder", name)
    assert {k: v for k, v in got.items() if not k.startswith("_")} == {
        "iterations": 1, "search.simulations": 8, "eval_methods": "['greedy']"}


def _write_png(path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path)
    plt.close(fig)
