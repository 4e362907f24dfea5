"""Critics: the task verifier now; value head, PRM, ORM, LLM judge and implicit reward plug into the same protocol."""

from __future__ import annotations

from ..errors import PonderError
from ..tasks import Task
from .base import Critic, Verifier, checked_scores

CRITICS = ("verifier",)


def get_critic(name: str, task: Task) -> Critic:
    if name == "verifier":
        return Verifier(task)
    raise PonderError(f"unknown critic {name!r}; choose one of: {', '.join(CRITICS)}")


__all__ = ["CRITICS", "Critic", "Verifier", "checked_scores", "get_critic"]
