"""Tasks: problems, prompt format, step rule, answer extraction and verifier."""

from __future__ import annotations

from pathlib import Path

from ..errors import PonderError
from .base import Problem, Split, Task

TASKS = ("game24", "arithmetic", "gsm8k", "math500")


def get_task(name: str, data: str | Path | None = None, free_text: bool = False, **kw) -> Task:
    """A task by name; ``data`` is the user's own problem file in the task's format. ``free_text``: the
    model writes every step whole (no observations, no listed actions) even where the task could."""
    task = _make(name, data, **kw)
    task.free_text = free_text
    return task


def _make(name: str, data: str | Path | None, **kw) -> Task:
    if name == "game24":
        from .game24 import Game24

        return Game24(data, **kw)
    if name == "arithmetic":
        from .arithmetic import Arithmetic

        if data:
            raise PonderError("task 'arithmetic' is generated; it takes no --data file")
        return Arithmetic(**kw)
    if name in ("gsm8k", "math500"):
        from .math_word import GSM8K, MATH500

        return (GSM8K if name == "gsm8k" else MATH500)(data, **kw)
    raise PonderError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")


__all__ = ["Problem", "Split", "Task", "TASKS", "get_task"]
