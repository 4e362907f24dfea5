"""Tasks: problems, prompt format, step rule, answer extraction and verifier."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Sequence

from ..errors import PonderError
from .base import Problem, Split, Task

TASKS = ("game24", "countdown", "arithmetic", "gsm8k", "math500")


def get_task(name: str, data: str | Path | None = None, free_text: bool = False, **options) -> Task:
    """A task by name; ``data`` is the user's own problem file in the task's format. ``free_text``: the
    model writes every step whole (no observations, no listed actions) even where the task could.
    ``options``: the task's own knobs (``--task-option``, e.g. ``n_numbers=5`` for countdown), kept on the
    task as ``task.options`` so that whoever rebuilds it (a Ray worker, a resumed run) gets the same task."""
    task = _make(name, data, options)
    task.free_text = free_text
    task.options = dict(options)
    return task


def _make(name: str, data: str | Path | None, options: dict[str, Any]) -> Task:
    if name == "game24":
        from .game24 import Game24

        return _build(name, Game24, options, data)
    if name == "countdown":
        from .countdown import Countdown

        return _build(name, Countdown, options, data)
    if name == "arithmetic":
        from .arithmetic import Arithmetic

        if data:
            raise PonderError("task 'arithmetic' is generated; it takes no --data file")
        return _build(name, Arithmetic, options)
    if name in ("gsm8k", "math500"):
        from .math_word import GSM8K, MATH500

        return _build(name, GSM8K if name == "gsm8k" else MATH500, options, data)
    raise PonderError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")


def _build(name: str, cls: type, options: dict[str, Any], *args) -> Task:
    """``cls(*args, **options)``, with an option the task does not take a one-line error naming those it does."""
    known = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "data", "free_text")]
    unknown = [k for k in options if k not in known]
    if unknown:
        takes = f"its options: {', '.join(known)}" if known else "it takes none"
        raise PonderError(f"task {name!r} has no option {', '.join(map(repr, unknown))}; {takes}")
    return cls(*args, **options)


def parse_task_options(items: Sequence[str]) -> dict[str, Any]:
    """``["n_numbers=5", "max_target=200"]`` -> ``{"n_numbers": 5, "max_target": 200}`` (each value read as
    YAML, like ``--set``); a malformed item or a key given twice is a one-line error."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise PonderError(f"--task-option {item!r}: expected KEY=VALUE, e.g. n_numbers=5")
        if key in out:
            raise PonderError(f"--task-option {key} is given twice")
        try:
            out[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise PonderError(f"--task-option {item!r}: cannot read the value") from None
    return out


__all__ = ["Problem", "Split", "Task", "TASKS", "get_task", "parse_task_options"]
