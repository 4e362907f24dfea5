"""Compute accounting: every sampler call, critic call and search result carries a ``Compute``, and a
``Budget`` says when a problem has spent enough.

Every model call is charged to the problems it served: the policy's sampling and action scoring, and
the critics that read states (value head, PRM, ORM, the LLM judge, the implicit reward's two models).
Tokens and forward calls are counted per model call; ``flops`` makes calls to models of different
sizes comparable (see ``flops_per_token``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

from .errors import PonderError


@dataclass(frozen=True)
class Compute:
    """What a piece of work cost.

    tokens_generated: tokens sampled by the policy.
    tokens_read: prompt tokens processed (prefill); a prefix shared by k samples counts once.
    forward_calls: model forward passes (prefill + one per decoded token position), or requests for a server.
    seconds: wall-clock seconds.
    flops: forward floating-point operations, ``flops_per_token(model)`` for every token a model
      processed (generated or read), summed over the models; 0 for a server, whose model is not known.

    When one batched call serves many problems, tokens are attributed exactly and forward calls and
    seconds in proportion to each problem's tokens, so per-problem costs add up to the batch's cost.
    """

    tokens_generated: int = 0
    tokens_read: int = 0
    forward_calls: float = 0.0
    seconds: float = 0.0
    flops: float = 0.0

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


def split_compute(tokens_generated: list[int], tokens_read: list[int], forward_calls: float, seconds: float,
                  flops_per_token: float = 0.0) -> list[Compute]:
    """Share one batched call's forward calls and seconds among its rows in proportion to their tokens;
    each row's FLOPs are ``flops_per_token`` times its own tokens."""
    weights = [g + r for g, r in zip(tokens_generated, tokens_read)]
    total = sum(weights) or 1
    return [
        Compute(g, r, forward_calls * w / total, seconds * w / total, flops_per_token * w)
        for g, r, w in zip(tokens_generated, tokens_read, weights)
    ]


def flops_per_token(*modules) -> float:
    """Forward FLOPs per token of a torch model (or of several, read together): 2 x the parameters a
    token is multiplied by (Kaplan et al. 2020's C_forward = 2N), that is every weight but the input
    embedding, which is a table lookup; the output layer counts, even when it shares the embedding's
    weights. Left out: attention's score and value products (2 x layers x context x width per token,
    under 10% of the total for these models' contexts of a few hundred tokens), norms, softmax and
    sampling; and the backward pass, which training adds (about twice the forward)."""
    total = 0
    for m in modules:
        emb = m.get_input_embeddings().weight if hasattr(m, "get_input_embeddings") else None
        total += sum(p.numel() for p in m.parameters())
        if emb is not None:
            out = m.get_output_embeddings() if hasattr(m, "get_output_embeddings") else None
            tied = out is not None and out.weight is emb
            total -= 0 if tied else emb.numel()
    return 2.0 * total


BudgetUnit = Literal["tokens", "flops"]
BUDGET_UNITS: tuple[str, ...] = ("tokens", "flops")


def check_unit(unit: str) -> None:
    """A one-line error for a budget unit that is not one of ``BUDGET_UNITS``."""
    if unit not in BUDGET_UNITS:
        raise PonderError(f"--budget-unit: unknown unit {unit!r}; choose one of: {', '.join(BUDGET_UNITS)}")


@dataclass(frozen=True)
class Budget:
    """A problem's compute budget: ``amount`` generated tokens (``unit="tokens"``) or forward FLOPs
    (``"flops"``, which charges the critics' reading too). A search stops expanding a problem before
    the next piece of work would overspend it, at that problem's mean cost per piece so far
    (``SearchEnv.affordable``)."""

    amount: float
    unit: BudgetUnit = "tokens"

    def __post_init__(self):
        check_unit(self.unit)
        if not self.amount > 0:
            raise PonderError(f"--budget must be > 0, got {self.amount:g}")

    def spent(self, c: Compute) -> float:
        """How much of the budget ``c`` uses."""
        return c.tokens_generated if self.unit == "tokens" else c.flops
