"""The model protocol every backend implements (local transformers, tiny, server).

A backend turns a batch of text prefixes into k sampled *steps* each. Search code sees only this,
through the callables built in ``ponder.search.env``; it never touches a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, Sequence, runtime_checkable

from ..compute import Compute
from ..errors import PonderError


def default_device(device: str | None = None) -> str:
    """``device`` if given, else ``cuda`` when a GPU is visible, else ``cpu``."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

if TYPE_CHECKING:
    from ..tasks import Problem, Task

Finish = Literal["stop", "eos", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one step (or, with ``stop=()``, a whole completion).

    temperature: 0 means greedy (argmax); log-probs are always those of the untempered model.
    top_p: nucleus sampling mass (1 = off).
    max_tokens: most tokens to generate per sample.
    stop: strings that end a step once it has non-blank content; the stop string stays in the text.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 48
    stop: tuple[str, ...] = ("\n",)

    def __post_init__(self):
        if self.temperature < 0:
            raise PonderError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise PonderError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens <= 0:
            raise PonderError(f"max_tokens must be > 0, got {self.max_tokens}")


@dataclass(frozen=True)
class Step:
    """One sampled step: its text (ending with the stop string when ``finish == "stop"``), token ids,
    per-token log-probs under the model (temperature 1), and why it ended."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish: Finish

    @property
    def logprob(self) -> float:
        return float(sum(self.logprobs))

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class Samples:
    """``steps[i][j]`` is sample j of prefix i; ``compute[i]`` is prefix i's share of the call's cost."""

    steps: list[list[Step]]
    compute: list[Compute]


@dataclass(frozen=True)
class Scores:
    """``logprobs[i][j]``: log pi(continuation j | prefix i), summed over its ``tokens[i][j]`` tokens;
    ``compute[i]``: prefix i's share of the call's cost (the continuations are read, not generated)."""

    logprobs: list[list[float]]
    tokens: list[list[int]]
    compute: list[Compute]


@runtime_checkable
class Policy(Protocol):
    """A language model that writes steps."""

    name: str

    def render(self, task: "Task", problem: "Problem") -> str:
        """The prompt text for a problem (the chat template applied where the model has one)."""
        ...

    def sample(self, prefixes: Sequence[str], k: int, params: SamplingParams) -> Samples:
        """k samples for each prefix, in one batched call."""
        ...


@runtime_checkable
class ActionScorer(Protocol):
    """A policy that can also score given continuations (local models): exact priors over a task's
    legal actions come from one batched teacher-forced pass instead of samples."""

    def score(self, prefixes: Sequence[str], continuations: Sequence[Sequence[str]]) -> Scores:
        """log pi(c | prefix) for every continuation c of every prefix, in batched passes."""
        ...
