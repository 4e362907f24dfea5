"""The frozen result every search method returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..compute import Compute
from ..tasks import Problem
from .tree import Node


@dataclass(frozen=True)
class SearchResult:
    """What a search found for one problem and what it cost.

    answer: the chosen trace's final answer (None if it has none); steps: the chosen trace;
    tree: every trace the search looked at, as one tree; compute: what the search spent on this problem;
    info: method-specific extras (votes, number of samples, ...).
    """

    problem: Problem
    answer: str | None
    steps: tuple[str, ...]
    tree: Node
    compute: Compute
    info: dict[str, Any] = field(default_factory=dict)
