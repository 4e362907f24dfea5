"""Training the learned critics (value head, PRM, ORM) on labelled paths from search trees.

Each record is a root-to-leaf path with a label (or ``None``) per step; one forward pass gives the
critic's logit after every step and the loss is taken over the labelled ones: squared error for the
value head (regression on Q), soft binary cross-entropy for the PRM and ORM. A held-out share of the
problems measures the critic against the trivial predictor (the training labels' mean), so a report
can say whether the critic learned anything.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..config import check_positive, option
from ..errors import PonderError
from ..tasks import Problem
from .losses import soft_bce_loss, value_loss
from .sft import fp32_master_weights


@dataclass
class CriticConfig:
    """Training a value head, PRM or ORM."""

    steps: int = option(150, "optimizer steps")
    batch_size: int = option(32, "paths per step")
    lr: float = option(5e-4, "learning rate (AdamW) of the head; the backbone gets lr / 5")
    tune_backbone: bool = option(True, "train the backbone copy too (False: the head alone, cheap for large models)")
    holdout: float = option(0.1, "share of problems held out to measure the critic")
    holdout_paths: int = option(
        2000, "most held-out paths measured (a seeded sample): wide searches leave ~10k held-out paths an "
        "iteration, whose forward pass would cost more than the training")
    balance: float = option(
        0.0, "share of each batch drawn from paths with a label above 0.5 (the rare successes: 2-3% of the loop's "
        "labels); 0 = sample paths uniformly"
    )
    seed: int = option(0, "seed for shuffling and the holdout split")

    def __post_init__(self):
        check_positive(self, "steps", "batch_size", "lr", "holdout_paths")
        if not 0 <= self.holdout < 1:
            raise PonderError(f"--holdout must be in [0, 1), got {self.holdout}")
        if not 0 <= self.balance < 1:
            raise PonderError(f"critic.balance must be in [0, 1), got {self.balance}")


class FrozenFeatures:
    """The backbone's step features of each path, computed once. With a frozen backbone only the head
    trains, so a path drawn again (balanced batches redraw the few successes every step) costs no
    forward pass: for a large backbone this is most of a critic's training time."""

    def __init__(self, critic):
        self.critic, self.cache = critic, {}

    @torch.no_grad()
    def __call__(self, problems: Sequence[Problem], records: Sequence[dict]) -> list[torch.Tensor]:
        new = {id(r): (p, r) for p, r in zip(problems, records) if id(r) not in self.cache}
        if new:
            ps, rs = zip(*new.values())
            self.cache.update(zip(new, self.critic.step_features(list(ps), [r["steps"] for r in rs])))
        return [self.cache[id(r)] for r in records]


def _flat(
    critic, records: Sequence[dict], features: FrozenFeatures | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, targets, mask), each (N,) over every step of every record; ``features`` reads cached
    backbone features instead of running the backbone."""
    problems = [Problem.from_dict(r["problem"]) for r in records]
    if features is None:
        hidden = critic.step_features(problems, [r["steps"] for r in records])
    else:
        hidden = features(problems, records)
    logits = torch.cat([critic.head(h) for h in hidden])
    labels = [y for r in records for y in r["labels"]]
    targets = torch.tensor([0.0 if y is None else float(y) for y in labels], device=logits.device)
    mask = torch.tensor([y is not None for y in labels], device=logits.device)
    return logits, targets, mask


def loss_for(kind: str):
    return value_loss if kind == "value" else soft_bce_loss


def draw(paths: Sequence[dict], positive: Sequence[dict], cfg: CriticConfig, rng: random.Random) -> list[dict]:
    """One batch: ``balance`` of it from the paths with a positive label (with replacement: they are
    few), the rest uniformly from all paths."""
    k = round(cfg.batch_size * cfg.balance) if positive else 0
    rest = rng.sample(list(paths), min(cfg.batch_size - k, len(paths)))
    return [rng.choice(positive) for _ in range(k)] + rest


def _logit(x: float) -> float:
    """log(x / (1 - x)), with x kept inside [1e-4, 1 - 1e-4]."""
    return float(torch.logit(torch.tensor(min(max(x, 1e-4), 1 - 1e-4))))


@torch.no_grad()
def measure(critic, records: Sequence[dict], baseline: float) -> dict:
    """Held-out loss of the critic and of always predicting ``baseline``; accuracy at 0.5 for the
    classifiers (PRM, ORM): how often sigmoid(z) > 0.5 agrees with label > 0.5."""
    if not records:
        return {}
    critic.backbone.eval()
    logits, targets, mask = _flat(critic, records)
    logits = logits - critic.shift  # what the critic scores with
    loss = loss_for(critic.kind)
    const = torch.full_like(targets, _logit(baseline))
    out = {"holdout_loss": loss(logits, targets, mask).item(), "holdout_baseline_loss": loss(const, targets, mask).item(),
           "holdout_labels": int(mask.sum())}
    if critic.kind != "value":
        agree = ((torch.sigmoid(logits) > 0.5) == (targets > 0.5)) & mask
        out["holdout_accuracy"] = agree.sum().item() / max(1, int(mask.sum()))
    out["holdout_auc"] = auc(logits[mask], targets[mask] > 0.5)
    return out


def auc(scores: torch.Tensor, positive: torch.Tensor) -> float | None:
    """P(score of a random positive > score of a random negative), ties counting half: how well the
    critic ranks states, which is what search uses it for (0.5 = no better than chance; None without
    both classes): scikit-learn's ``roc_auc_score``."""
    from sklearn.metrics import roc_auc_score

    if positive.all() or not positive.any():
        return None  # roc_auc_score raises on a single class
    return float(roc_auc_score(positive.cpu().numpy(), scores.float().cpu().numpy()))


def prior_shift(train: Sequence[dict], positive: Sequence[dict], balance: float) -> float:
    """The logit offset that balanced batches teach a critic, to be taken off again after training.

    ``draw`` shows successful paths more often than they occur, so the critic learns a label mean
    m_bal above the true one m. Subtracting ``logit(m_bal) - logit(m)`` from every logit (a prior-shift
    correction, as for class-rebalanced classifiers) restores m for a constant prediction and, being
    monotone, leaves the ranking (AUC) exactly as trained:

        m_bal = (b * L_pos * m_pos + (1 - b) * L * m) / (b * L_pos + (1 - b) * L)

    with b = ``balance``, L / L_pos the mean number of labels per path / per successful path, m_pos the
    successful paths' label mean.
    """

    def stats(paths: Sequence[dict]) -> tuple[float, float]:  # (labels per path, label mean)
        ys = [y for r in paths for y in r["labels"] if y is not None]
        return len(ys) / max(1, len(paths)), sum(ys) / max(1, len(ys))

    if not balance or not positive or not train:
        return 0.0
    (n, m), (n_pos, m_pos) = stats(train), stats(positive)
    m_bal = (balance * n_pos * m_pos + (1 - balance) * n * m) / max(1e-12, balance * n_pos + (1 - balance) * n)
    return _logit(m_bal) - _logit(m)


def train_critic(critic, records: Sequence[dict], cfg: CriticConfig, log: Path | None = None, progress: bool = True,
                 tracker=None) -> dict:
    """Fit ``critic`` (a ``ScalarCritic``) to ``records``; returns train and held-out metrics. ``tracker``
    (a ``tracking.Tracker``) gets each step's ``loss``.

    A NaN or infinite loss stops training with a ``PonderError`` before the critic is saved.
    """
    from tqdm import tqdm

    if not records:
        raise PonderError(f"no labelled paths to train the {critic.kind} critic on")
    rng = random.Random(cfg.seed)
    ids = sorted({r["problem"]["id"] for r in records})
    rng.shuffle(ids)
    held = set(ids[: int(len(ids) * cfg.holdout)]) if len(ids) >= 10 else set()
    train = [r for r in records if r["problem"]["id"] not in held]
    test = [r for r in records if r["problem"]["id"] in held]
    if len(test) > cfg.holdout_paths:
        test = random.Random(cfg.seed + 1).sample(test, cfg.holdout_paths)
    labels = [y for r in train for y in r["labels"] if y is not None]
    baseline = sum(labels) / max(1, len(labels))

    torch.manual_seed(cfg.seed)
    for p in critic.backbone.parameters():
        p.requires_grad_(cfg.tune_backbone)
    fp32_master_weights(critic.backbone)
    params = list(critic.head.parameters()) + (list(critic.backbone.parameters()) if cfg.tune_backbone else [])
    groups = [{"params": list(critic.head.parameters()), "lr": cfg.lr}]
    if cfg.tune_backbone:
        groups.append({"params": list(critic.backbone.parameters()), "lr": cfg.lr / 5})
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    loss_fn = loss_for(critic.kind)
    positive = [r for r in train if any(y is not None and y > 0.5 for y in r["labels"])]
    features = None if cfg.tune_backbone else FrozenFeatures(critic)
    losses = []
    fh = log.open("a") if log else None
    bar = tqdm(range(cfg.steps), desc=f"train {critic.kind}", disable=not progress, dynamic_ncols=True)
    try:
        for step in bar:
            critic.backbone.train(cfg.tune_backbone)
            batch = draw(train, positive, cfg, rng)
            loss = loss_fn(*_flat(critic, batch, features))
            if not torch.isfinite(loss):
                raise PonderError(f"{critic.kind} critic training stopped: loss is {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if fh:
                fh.write(json.dumps({"critic": critic.kind, "step": step, "loss": round(losses[-1], 6)}) + "\n")
            if tracker is not None:
                tracker.log({"loss": losses[-1]}, step)
    finally:
        bar.close()
        if fh:
            fh.close()
        for p in critic.backbone.parameters():
            p.requires_grad_(False)
        critic.backbone.eval()
    critic.shift = prior_shift(train, positive, cfg.balance)  # scores take it off; training sees raw logits
    tail = losses[-max(1, len(losses) // 10):]
    return {"kind": critic.kind, "paths": len(train), "labels": len(labels), "label_mean": baseline,
            "train_loss": sum(tail) / len(tail), "prior_shift": round(critic.shift, 4), **measure(critic, test, baseline)}
