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

Metrics are nested dicts, as the loop records them; a metric's name is its path, ``/``-separated
(``eval/greedy/accuracy``), and only numbers are logged (text, lists, None and booleans are left out).
"""

from __future__ import annotations

import copy
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


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    """``{"eval": {"greedy": {"accuracy": 0.5}}}`` -> ``{"eval/greedy/accuracy": 0.5}``: the finite numbers only."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, name))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[name] = float(v)
    return out


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


def get_tracker(kind: str, folder: str | Path, name: str | None = None) -> Tracker:
    """The tracker for ``--report-to kind``, writing under ``folder``; ``name`` names the run (default:
    the folder's name)."""
    require(kind)
    folder = Path(folder)
    name = name or folder.name
    if kind == "tensorboard":
        return TensorBoardTracker(folder / "tb")
    if kind == "mlflow":
        return MLflowTracker(folder, name)
    if kind == "trackio":
        return TrackioTracker(folder, name)
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
    def __init__(self, logdir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = logdir
        self.writer = SummaryWriter(str(logdir), flush_secs=30)  # a resumed run adds an event file beside the old

    def _scalars(self, scalars, step):
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)

    def _image(self, name, path, step):
        self.writer.add_image(name, _png(path), step, dataformats="HWC")

    def close(self):
        self.writer.close()


class MLflowTracker(Tracker):
    def __init__(self, folder: Path, name: str):
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

    def _scalars(self, scalars, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in scalars.items()])

    def _image(self, name, path, step):
        self.client.log_artifact(self.run_id, str(path), artifact_path=f"{name}/step-{step}")

    def close(self):
        self.client.set_terminated(self.run_id)


class TrackioTracker(Tracker):
    def __init__(self, folder: Path, name: str):
        import trackio

        self.trackio = trackio
        run = _state(folder).get("trackio_run")
        if run is None:
            run = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"  # unique: trackio runs live in one store for all folders
            _remember(folder, trackio_run=run)
        self.run = trackio.init(project="ponder", name=run, resume="allow", embed=False, auto_log_cpu=False,
                                auto_log_gpu=False)

    def _scalars(self, scalars, step):
        self.run.log(scalars, step=step)

    def _image(self, name, path, step):
        self.run.log({name: self.trackio.Image(str(path))}, step=step)

    def close(self):
        self.run.finish()
