"""Losses as small standalone functions, each with its equation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over the masked positions (supervised fine-tuning).

    L = - sum_t m_t log pi(x_{t+1} | x_{<=t}) / sum_t m_t

    logits: (B, T, V) for positions 0..T-1; targets: (B, T) the token at t+1; mask: (B, T) 1 where scored.
    """
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")  # (B*T,)
    m = mask.flatten().float()
    return (nll * m).sum() / m.sum().clamp(min=1)
