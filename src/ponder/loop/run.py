"""The run folder (``Run``: config, per-iteration phases and paths, metrics), opening or resuming one,
and the loop's voice (``say``)."""

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import build, to_dict
from ..errors import PonderError
from ..io import read_rows, write_text
from ..tasks import Problem
from ..train.parallel import is_main_process
from .config import ImproveConfig

LOCK = "ponder.lock"  # the lock file inside a run folder, held by the process running it
SOAK_PAUSE = "PONDER_SOAK_PAUSE"  # bench/kill_soak.py's hook: see soak_pause


def soak_pause() -> None:
    """With ``PONDER_SOAK_PAUSE=S`` set, wait S seconds. The loop calls this as each phase ends, after the
    phase's files are written and before its record (``Run.mark``; the report: after the metrics line,
    before ``report.md``), so that ``bench/kill_soak.py`` can land a ``kill -9`` inside phases that take
    milliseconds (imagine, extract) at the moment a crash is likeliest to leave half a phase. Unset: nothing."""
    if os.environ.get(SOAK_PAUSE):
        time.sleep(float(os.environ[SOAK_PAUSE]))


class Run:
    """A run folder: config, per-iteration phases and paths, metrics."""

    def __init__(self, root: Path, cfg: ImproveConfig):
        self.root, self.cfg = root, cfg

    def it(self, i: int) -> Path:
        return self.root / f"iter-{i}"

    def phases(self, i: int) -> dict[str, Any]:
        p = self.it(i) / "phases.json"
        if not p.exists():
            return {}
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            raise PonderError(f"{p}: damaged (not JSON); delete it to redo iteration {i}") from None

    def mark(self, i: int, phase: str, info: Any) -> None:
        soak_pause()
        done = self.phases(i)
        done[phase] = info
        write_text(self.it(i) / "phases.json", json.dumps(done, indent=2))

    def metrics(self) -> list[dict]:
        return read_rows(self.root / "metrics.jsonl")  # a line torn by a crash is dropped


def open_run(root: str | Path, cfg: ImproveConfig | None, resume: bool, iterations: int | None = None) -> Run:
    """Create a run folder, or reopen one to resume. Resuming with a different config is refused, except
    for ``iterations``: a finished run can be extended (its earlier iterations are kept as they are)."""
    import yaml

    root = Path(root)
    path = root / "config.yaml"
    if path.exists():
        try:
            saved = build(ImproveConfig, yaml.safe_load(path.read_text()) or {}, str(path))
        except yaml.YAMLError:
            raise PonderError(f"{path}: not a readable config") from None
        if not resume:
            raise PonderError(f"{root} already holds a run; continue it with --resume {root}, or choose another --out")
        if cfg is not None and to_dict(cfg) != to_dict(saved):
            diff = [k for k, v in to_dict(cfg).items() if to_dict(saved).get(k) != v]
            raise PonderError(f"{root} was run with another config (differs in: {', '.join(diff)}); resume it without options")
        if iterations is not None and iterations != saved.iterations:
            saved = replace(saved, iterations=int(iterations))  # validated by __post_init__
            write_text(path, yaml.safe_dump(to_dict(saved), sort_keys=False))
        return Run(root, saved)
    if resume:
        raise PonderError(f"nothing to resume: {path} not found")
    root.mkdir(parents=True, exist_ok=True)
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return Run(root, cfg)


def problem_rows(path: Path) -> list[Problem]:
    """The problems of a run file (``iter-I/problems.jsonl``)."""
    return [Problem.from_dict(r) for r in read_rows(path)]


def say(msg: str) -> None:
    if is_main_process():  # under a training launcher, one voice
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

