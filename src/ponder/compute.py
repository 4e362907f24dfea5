"""Compute accounting: every sampler call, critic call and search result carries a ``Compute``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class Compute:
    """What a piece of work cost.

    tokens_generated: tokens sampled by the policy.
    tokens_read: prompt tokens processed (prefill); a prefix shared by k samples counts once.
    forward_calls: model forward passes (prefill + one per decoded token position), or requests for a server.
    seconds: wall-clock seconds.

    When one batched call serves many problems, tokens are attributed exactly and forward calls and
    seconds in proportion to each problem's tokens, so per-problem costs add up to the batch's cost.
    """

    tokens_generated: int = 0
    tokens_read: int = 0
    forward_calls: float = 0.0
    seconds: float = 0.0

    def __add__(self, other: "Compute") -> "Compute":
        return Compute(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def tokens(self) -> int:
        return self.tokens_generated + self.tokens_read

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def total(items) -> "Compute":
        out = Compute()
        for c in items:
            out = out + c
        return out


def split_compute(tokens_generated: list[int], tokens_read: list[int], forward_calls: float, seconds: float) -> list[Compute]:
    """Share one batched call's forward calls and seconds among its rows in proportion to their tokens."""
    weights = [g + r for g, r in zip(tokens_generated, tokens_read)]
    total = sum(weights) or 1
    return [
        Compute(g, r, forward_calls * w / total, seconds * w / total)
        for g, r, w in zip(tokens_generated, tokens_read, weights)
    ]
