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


def value_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Squared error of the value head's prediction against MCTS Q-values (AlphaLLM's value function).

    L = sum_i m_i (sigmoid(z_i) - Q_i)^2 / sum_i m_i

    logits, targets, mask: (N,) one per labelled state; targets in [0, 1].
    """
    m = mask.float()
    return ((torch.sigmoid(logits.float()) - targets) ** 2 * m).sum() / m.sum().clamp(min=1)


def soft_bce_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with soft labels (Math-Shepherd's PRM; an ORM with hard 0/1 labels).

    L = - sum_i m_i [y_i log sigmoid(z_i) + (1 - y_i) log(1 - sigmoid(z_i))] / sum_i m_i

    y_i = the share of rollouts from step i that reach a correct answer (or the step's Q), in [0, 1].
    logits, targets, mask: (N,).
    """
    m = mask.float()
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    return (bce * m).sum() / m.sum().clamp(min=1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Direct preference optimisation (Rafailov et al. 2023), here on sibling *steps* under one prefix.

    L = - log sigmoid( beta * [ (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x)) ] )

    Each argument is (B,): the summed log-probability of the chosen (w) or rejected (l) step's tokens
    given the problem and the steps before it. Returns the mean loss and the per-pair implicit reward
    margins beta * (...) (B,), whose sign says whether the policy already prefers the chosen step.
    """
    margin = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))  # (B,)
    return -F.logsigmoid(margin).mean(), margin.detach()


def improved_policy(logits: torch.Tensor, q: torch.Tensor, visits: torch.Tensor, value: float,
                    c_visit: float = 50.0, c_scale: float = 0.1) -> torch.Tensor:
    """Gumbel MuZero's improved policy at one state (Danihelka et al. 2022, eq. 11; mctx's
    ``qtransform_completed_by_mix_value``), the target the policy learns from the search:

        pi'(a) = softmax_a( logits(a) + sigma(completedQ(a)) )
        completedQ(a) = Q(a) if N(a) > 0 else v       sigma(q) = (c_visit + max_b N(b)) * c_scale * q

    logits, q, visits: (A,) over every legal action (the search policy's log-probs, the children's Q
    and visit counts; Q and N are 0 for actions the search never tried); ``value``: the state's own
    value estimate, which stands in for the actions never tried. Q is already in [0, 1] (a verifier
    reward), so it is not rescaled. Returns (A,) summing to one.
    """
    completed = torch.where(visits > 0, q, torch.full_like(q, value))
    sigma = (c_visit + visits.max()) * c_scale * completed
    return torch.softmax(logits + sigma, -1)


def policy_target_loss(logprobs: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy from the policy over each state's legal actions to the search's improved policy
    (AlphaZero's policy loss; expert iteration):

        L = - (1 / |S|) sum_s sum_a pi'(a | s) log softmax_a( log pi(a | s) )

    logprobs[s], targets[s]: (A_s,) per state s, the policy's summed log-probability of each action's
    tokens and the target distribution. Renormalising over the legal actions makes the loss about the
    choice between them, not about the text around them.
    """
    losses = [-(t * torch.log_softmax(lp, -1)).sum() for lp, t in zip(logprobs, targets)]
    return torch.stack(losses).mean()
