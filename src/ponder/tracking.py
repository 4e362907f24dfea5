"""Experiment tracking (``--report-to``): every loss curve and every iteration's metrics to TensorBoard,
MLflow or Trackio, offline and local, as transformers' and TRL's ``report_to`` does.

Each backend writes under the folder it is given (the run folder of ``ponder improve``; ``OUT.tracking``
beside the model folder of ``ponder train``):

- ``tensorboard``: event files in ``FOLDER/tb`` (``tensorboard --logdir FOLDER/tb``), through torch's
  ``SummaryWriter``;
- ``mlflow``: a local file store in ``FOLDER/mlruns`` (``mlflow ui --backend-store-uri FOLDER/mlruns``
  with ``MLFLOW_ALLOW_FILE_STORE=true``), or the server in ``MLFLOW_TRACKING_URI`` where one is set;
- ``trackio``: trackio's own local store (``TRACKIO_DIR``, by default ``~/.cache/huggingface/trackio``:
  trackio reads it once, on import), project ``ponder`` (``trackio show --project ponder``).

A folder remembers its MLflow run id and Trackio run name in ``FOLDER/tracking.json``, so ``ponder improve
--resume`` goes on logging into the same run instead of starting another.

The run's hyper-parameters are its whole resolved config (``ImproveConfig``; ``SFTConfig`` and the model's
for ``ponder train``), flattened to ``group.field`` names (``search.simulations``), logged once per run
through each backend's own hyper-parameter API (see ``hparams`` and each tracker). A resumed run never
logs a changed value: the only option a resume may change is ``iterations``, and the
hyper-parameters stay those the run started with (``config.yaml`` in the run folder has the current ones).

Metrics are nested dicts, as the loop records them; a metric's name is its path, ``/``-separated
(``eval/greedy/accuracy``), and only numbers are logged (text, lists, None and booleans are left out).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal, get_args

from .errors import PonderError
from .io import write_text

ReportTo = Literal["none", "tensorboard", "mlflow", "trackio"]
REPORT_TO: tuple[str, ...] = get_args(ReportTo)
#: the module each backend imports, and what to pip install for it
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"), "trackio": ("trackio", "trackio")}
HELP = ("log loss curves and metrics, offline, to: none, tensorboard (events in the run folder's tb/), mlflow (a local "
        "file store, mlruns/) or trackio (its local store; trackio show --project ponder)")


def _leaves(tree: dict, prefix: str, sep: str):
    """(path, value) of every value of a nested dict that is not a dict itself, the path ``sep``-joined."""
    for k, v in tree.items():
        name = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, dict):
            yield from _leaves(v, name, sep)
        else:
            yield name, v


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    """``{"eval": {"greedy": {"accuracy": 0.5}}}`` -> ``{"eval/greedy/accuracy": 0.5}``: the finite numbers only."""
    return {name: float(v) for name, v in _leaves(metrics, prefix, "/")
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def plain_config(config: Any) -> dict:
    """A config dataclass, or a mapping of plain values and config dataclasses, as nested plain data."""
    from .config import to_dict

    if dataclasses.is_dataclass(config):
        return to_dict(config)
    return {k: plain_config(v) if dataclasses.is_dataclass(v) or isinstance(v, dict) else v for k, v in config.items()}


def hparams(config: Any) -> dict[str, bool | int | float | str]:
    """A run's config as hyper-parameters: nested groups flattened to ``group.field``; booleans, numbers
    and strings kept, anything else (None, lists) as its ``str()``, as transformers' ``to_sanitized_dict``
    does for its trackers."""
    return {name: v if isinstance(v, (bool, int, float, str)) else str(v)
            for name, v in _leaves(plain_config(config), "", ".")}


class Tracker:
    """Where metrics go. This base class logs nothing (``--report-to none``); a backend overrides
    ``_scalars``, ``_image`` and ``close``. ``under(prefix)`` gives a view whose names start with ``prefix``,
    so a trainer logs ``loss`` and the loop decides it is ``sft/iter-2/loss``."""

    prefix = ""

    def log(self, metrics: dict, step: int, prefix: str = "") -> None:
        """Log the numbers in ``metrics`` (nested dicts allowed) at ``step``."""
        scalars = flatten(metrics, "/".join(p for p in (self.prefix, prefix) if p))
        if scalars:
            self._scalars(scalars, int(step))

    def log_image(self, name: str, path: str | Path, step: int) -> None:
        """Log the PNG at ``path`` as image ``name`` at ``step``."""
        if Path(path).is_file():
            self._image("/".join(p for p in (self.prefix, name) if p), Path(path), int(step))

    def under(self, prefix: str) -> "Tracker":
        view = copy.copy(self)  # shares the backend's writer; only the tracker get_tracker returned is closed
        view.prefix = "/".join(p for p in (self.prefix, prefix) if p)
        return view

    def close(self) -> None:
        pass

    def _scalars(self, scalars: dict[str, float], step: int) -> None:
        pass

    def _image(self, name: str, path: Path, step: int) -> None:
        pass


def require(kind: str) -> None:
    """A one-line ``PonderError`` for an unknown backend or one whose package is not installed."""
    if kind not in REPORT_TO:
        raise PonderError(f"--report-to: {kind!r} is not one of {', '.join(REPORT_TO)}")
    if kind in PACKAGES and find_spec(PACKAGES[kind][0]) is None:
        raise PonderError(f"--report-to {kind} needs the {PACKAGES[kind][0]} package: pip install {PACKAGES[kind][1]}")


def get_tracker(kind: str, folder: str | Path, name: str | None = None, config: Any = None) -> Tracker:
    """The tracker for ``--report-to kind``, writing under ``folder``; ``name`` names the run (default:
    the folder's name); ``config`` (a config dataclass, or a mapping of them and plain values) is logged as
    the run's hyper-parameters, once per run (a resumed run does not log them again)."""
    require(kind)
    folder = Path(folder)
    name = name or folder.name
    config = {} if config is None else plain_config(config)
    if kind == "tensorboard":
        return TensorBoardTracker(folder, config)
    if kind == "mlflow":
        return MLflowTracker(folder, name, config)
    if kind == "trackio":
        return TrackioTracker(folder, name, config)
    return Tracker()


def _state(folder: Path) -> dict:
    p = folder / "tracking.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def _remember(folder: Path, **kw) -> None:
    write_text(folder / "tracking.json", json.dumps({**_state(folder), **kw}, indent=2))


def _png(path: Path):
    """(H, W, 3) uint8 pixels of a PNG."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


class TensorBoardTracker(Tracker):
    """Event files in ``FOLDER/tb``. The hyper-parameters go to the HPARAMS tab as TensorBoard's hparams
    plugin reads them: one session-start summary (``tensorboard.plugins.hparams.summary_v2.hparams_pb``)
    in this run's own event file, so the table's row is this run and its metric columns are the run's
    scalars (the plugin finds them itself when no experiment summary is written). Not torch's
    ``SummaryWriter.add_hparams``: it needs a final metric dict up front and writes the hyper-parameters
    into a sub-run of their own (``tb/<time>``), apart from the curves. The whole config is also in the
    TEXT tab as YAML (``config``), where lists and long values read whole. Both are written once per run:
    ``tracking.json`` remembers it, so a resume (which adds an event file) writes no second session."""

    def __init__(self, folder: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = folder / "tb"
        self.writer = SummaryWriter(str(self.logdir), flush_secs=30)  # a resumed run adds an event file beside the old
        if config and not _state(folder).get("tensorboard_hparams"):
            import yaml
            from tensorboard.plugins.hparams.summary_v2 import hparams_pb

            self.writer.file_writer.add_summary(hparams_pb(hparams(config)))
            text = yaml.safe_dump(config, sort_keys=False)
            self.writer.add_text("config", "".join(f"    {line}\n" for line in text.splitlines()), 0)  # a code block
            self.writer.flush()
            _remember(folder, tensorboard_hparams=True)

    def _scalars(self, scalars, step):
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)

    def _image(self, name, path, step):
        self.writer.add_image(name, _png(path), step, dataformats="HWC")

    def close(self):
        self.writer.close()


class MLflowTracker(Tracker):
    """A run in MLflow's experiment ``ponder``. The hyper-parameters are the run's params (``log_batch``,
    at most ``PARAMS_PER_BATCH`` a call, each value cut to ``PARAM_CHARS`` characters, the limit of older
    MLflow servers); MLflow refuses to change a logged param, so a resumed run logs only those it does not
    have yet. The whole config, uncut, is the artifact ``config.yaml``, written with the first params."""

    PARAMS_PER_BATCH = 100  # MLflow's limit on params in one log_batch
    PARAM_CHARS = 500

    def __init__(self, folder: Path, name: str, config: dict):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 refuses a file store unless told
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (folder / "mlruns").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        run_id = _state(folder).get("mlflow_run_id")
        if run_id is None:
            exp = self.client.get_experiment_by_name("ponder")
            exp_id = exp.experiment_id if exp else self.client.create_experiment("ponder")
            run_id = self.client.create_run(exp_id, run_name=name).info.run_id
            _remember(folder, mlflow_run_id=run_id)
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        if config:
            self._params(config)

    def _params(self, config: dict) -> None:
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)[: self.PARAM_CHARS]) for k, v in hparams(config).items() if k not in logged]
        for i in range(0, len(new), self.PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + self.PARAMS_PER_BATCH])
        if not logged:
            self.client.log_dict(self.run_id, config, "config.yaml")

    def _scalars(self, scalars, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in scalars.items()])

    def _image(self, name, path, step):
        self.client.log_artifact(self.run_id, str(path), artifact_path=f"{name}/step-{step}")

    def close(self):
        self.client.set_terminated(self.run_id)


class TrackioTracker(Tracker):
    """A run in trackio's project ``ponder``. The hyper-parameters are trackio's run config
    (``trackio.init(config=...)``, shown on the run's page). Trackio keeps one config a run and replaces it
    with the latest init's (a resumed run that gave none would be left with trackio's own keys only), so
    every init gives the one the run started with, remembered in ``tracking.json``."""

    def __init__(self, folder: Path, name: str, config: dict):
        import trackio

        self.trackio = trackio
        state = _state(folder)
        run = state.get("trackio_run") or f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"  # unique: one store, all folders
        params = state.get("trackio_config") or hparams(config)
        _remember(folder, trackio_run=run, trackio_config=params)
        self.run = trackio.init(project="ponder", name=run, resume="allow", embed=False, auto_log_cpu=False,
                                auto_log_gpu=False, config=params or None)

    def _scalars(self, scalars, step):
        self.run.log(scalars, step=step)

    def _image(self, name, path, step):
        self.run.log({name: self.trackio.Image(str(path))}, step=step)

    def close(self):
        self.run.finish()
