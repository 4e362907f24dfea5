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
                    c_visit: float = 50.0, c_scale: float = 0.1, rescale: bool = True) -> torch.Tensor:
    """Gumbel MuZero's improved policy at one state (Danihelka et al. 2022, eq. 11; mctx's
    ``qtransform_completed_by_mix_value``), the target the policy learns from the search:

        pi'(a) = softmax_a( logits(a) + sigma(completedQ(a)) )
        completedQ(a) = Q(a) if N(a) > 0 else v       sigma(q) = (c_visit + max_b N(b)) * c_scale * q
        with rescale:  completedQ(a) <- (completedQ(a) - min_b completedQ(b)) / (max_b completedQ(b) - min_b completedQ(b))

    logits, q, visits: (A,) over every legal action (the search policy's log-probs, the children's Q
    and visit counts; Q and N are 0 for actions the search never tried); ``value``: the state's own
    value estimate, which stands in for the actions never tried. ``rescale`` (mctx's default,
    ``rescale_values=True``) stretches the state's completed Q-values to [0, 1] before sigma: a mean
    backed-up Q is small where one move of many wins (1/6 for a two-number state with one way to 24),
    and unscaled it moves the target by less than a logit. Returns (A,) summing to one.
    """
    completed = torch.where(visits > 0, q, torch.full_like(q, value))
    if rescale:
        lo, hi = completed.min(), completed.max()
        completed = (completed - lo) / (hi - lo).clamp(min=1e-8)
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


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's group-relative advantage (DeepSeekMath, Shao et al. 2024, sec. 4.1.2, outcome supervision):

        A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)

    rewards: (B,) with the G = ``group_size`` traces of each problem next to each other, B = groups * G.
    std is the sample standard deviation (Bessel's correction) and eps = 1e-4, as in TRL's GRPOTrainer.
    A group whose rewards are all equal gets A = 0 for every trace: it teaches nothing. Returns (B,).
    """
    r = rewards.float().view(-1, group_size)  # (groups, G)
    return ((r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + eps)).flatten()


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon: float = 0.2,
    beta: float = 0.04,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group relative policy optimisation (DeepSeekMath, Shao et al. 2024, eq. 3), as a loss to minimise:

        L = - (1/G) sum_i (1/|o_i|) sum_t [ min( rho_it A_i, clip(rho_it, 1 - eps, 1 + eps) A_i ) - beta D_it ]

        rho_it = pi(o_it | q, o_i,<t) / pi_old(o_it | q, o_i,<t)
        D_it   = pi_ref(o_it | ...) / pi(o_it | ...) - log( pi_ref(o_it | ...) / pi(o_it | ...) ) - 1

    D is the per-token estimator of KL(pi || pi_ref) (unbiased, >= 0); pi_old is the policy that sampled
    the traces (one update per batch: pi itself, detached, so rho = 1 and only its gradient acts) and
    pi_ref the frozen policy training started from. Each trace's token terms are averaged over its
    scored tokens |o_i| (the model's own: the prompt and the task's observations have mask 0), then the
    traces are averaged (over several groups of equal G, the same as per group, then over groups).

    logps, old_logps, ref_logps, mask: (B, T), the log-probs of the sampled tokens and 1 where scored;
    ref_logps may be None where beta = 0. advantages: (B,) from ``group_advantages``.
    Returns (loss, kl, clipped), the last two detached: the mean D over scored tokens, and the share of
    scored tokens where the clip binds (rho past 1 -/+ eps in the direction A pushes it).
    """
    m = mask.float()
    adv = advantages[:, None]  # (B, 1)
    ratio = torch.exp(logps - old_logps)  # (B, T)
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * adv)  # (B, T)
    kl = torch.zeros_like(per_token)
    if beta:
        log_ref_ratio = ref_logps - logps  # log(pi_ref / pi)
        kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1
        per_token = per_token + beta * kl
    loss = ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
    clipped = ((ratio < 1 - epsilon) & (adv < 0)) | ((ratio > 1 + epsilon) & (adv > 0))
    n = m.sum().clamp(min=1)
    return loss, ((kl * m).sum() / n).detach(), ((clipped.float() * m).sum() / n).detach()
