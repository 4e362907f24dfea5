"""Expert iteration: the policy learns the search's improved policy at every expanded state.

AlphaZero and ExIt train the policy toward what the search concluded at each state it expanded, not
only on the few traces that finished well. Each record is one searched state with its children's
visit counts and Q-values; the target over every legal action (where the task lists them; else over
the state's children) is Gumbel MuZero's completed-Q improved policy (``losses.improved_policy``) from
the log-probs of the policy that searched, and the loss is ``losses.policy_target_loss``. Supervised
fine-tuning on verified traces (observation tokens carry no loss) stays as a second term.

Every state's actions are scored in one row under tree attention (``models.branches``), so a state's
prefix is read once for all its actions, in training as in search.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from ..config import check_positive, option
from ..errors import PonderError
from ..models.branches import branch_logprobs
from ..tasks import Problem, Task
from .losses import improved_policy, lm_loss, policy_target_loss
from .sft import Text, batch_tensors, fp32_master_weights, lr_at


@dataclass
class ExpertConfig:
    """Training the policy on the search's improved policy at every searched state (expert iteration)."""

    steps: int = option(60, "most optimizer steps (fewer when ``epochs`` passes over the states come first)")
    epochs: float = option(3.0, "most passes over the searched states")
    batch_size: int = option(64, "searched states per step")
    sft_batch: int = option(16, "verified traces per step for the SFT term (0 = none)")
    sft_weight: float = option(0.5, "weight of the SFT term next to the policy-target term")
    lr: float = option(1e-3, "peak learning rate (AdamW)")
    warmup: int = option(10, "linear warm-up steps")
    weight_decay: float = option(0.01, "AdamW weight decay")
    grad_clip: float = option(1.0, "gradient norm clip")
    c_visit: float = option(50.0, "c_visit of the completed-Q transform (Gumbel MuZero)")
    c_scale: float = option(0.1, "c_scale of the completed-Q transform: how far the search's Q moves the target from the prior")
    rescale: bool = option(
        True, "stretch each state's completed Q-values to [0, 1] before the transform (mctx's rescale_values): on the "
        "demo's first search the target's top action keeps 24 reachable at 100% / 97% of solvable states at depth 0 / 1 "
        "with it, 54% / 72% without (bench/targets.py)")
    seed: int = option(0, "seed of batch sampling")

    def __post_init__(self):
        check_positive(self, "steps", "epochs", "batch_size", "lr", "c_visit", "c_scale")
        if self.sft_batch < 0 or self.sft_weight < 0:
            raise PonderError("expert.sft_batch and expert.sft_weight must be >= 0")


@dataclass
class SearchedState:
    prefix: str  # the rendered prompt + the steps so far
    actions: list[str]  # what the model writes for each action (every legal one where the task lists them)
    target: torch.Tensor  # (A,) the improved policy


def searched_states(policy, task: Task, records: Sequence[dict], cfg: ExpertConfig) -> list[SearchedState]:
    """Records (``data.policy_targets``) -> states with their improved-policy targets, the search policy's
    log-probs over every action coming from one batched scoring call."""
    states, prefixes, actions, stats = [], [], [], []
    for r in records:
        problem = Problem.from_dict(r["problem"])
        tried = dict(zip(r["actions"], zip(r["visits"], r["q"])))
        legal = task.legal_actions(problem, r["prefix"]) if not task.free_text else None
        acts = list(legal) if legal else list(r["actions"])
        acts += [a for a in r["actions"] if a not in acts]  # a tried action is always a candidate
        prefixes.append(policy.render(task, problem) + "".join(r["prefix"]))
        actions.append(acts)
        stats.append((tried, r["value"]))
    scores = policy.score(prefixes, actions) if prefixes else None
    for i, (prefix, acts, (tried, value)) in enumerate(zip(prefixes, actions, stats)):
        visits = torch.tensor([float(tried.get(a, (0, 0.0))[0]) for a in acts])
        q = torch.tensor([float(tried.get(a, (0, 0.0))[1]) for a in acts])
        logits = torch.tensor(scores.logprobs[i])
        states.append(SearchedState(prefix, acts, improved_policy(logits, q, visits, value, cfg.c_visit, cfg.c_scale, cfg.rescale)))
    return states


def train_expert(policy, task: Task, records: Sequence[dict], sft_texts: Sequence[Text], cfg: ExpertConfig,
                 log_path: Path | None = None, progress: bool = True, tracker=None) -> dict:
    """Train ``policy`` (an ``HFPolicy``, in place) on the improved policy of every searched state, plus
    SFT on ``sft_texts``; returns the losses and how far the policy moved toward the targets. ``tracker``
    (a ``tracking.Tracker``) gets each step's row of ``log_path``."""
    from tqdm import tqdm

    t0 = time.time()
    rng = random.Random(cfg.seed)
    # only the states the steps can use about ``epochs`` times each are scored for their targets: scoring
    # every legal action of every searched state costs about one training epoch's forward passes
    cap, searched = math.ceil(cfg.steps * cfg.batch_size / cfg.epochs), len(records)
    if len(records) > cap:
        records = rng.sample(list(records), cap)
    states = searched_states(policy, task, records, cfg)
    if not states:
        raise PonderError("expert iteration: no searched state to learn from")
    model, tok = policy.model, policy.tokenizer
    steps = max(1, min(cfg.steps, math.ceil(cfg.epochs * len(states) / cfg.batch_size)))
    sched = replace(cfg, steps=steps, warmup=min(cfg.warmup, max(1, steps // 5)))  # what lr_at reads
    fp32_master_weights(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    heads = {s.prefix: h for s, h in zip(states, policy.encode([s.prefix for s in states]))}
    conts = {a: tok(a, add_special_tokens=False)["input_ids"] for s in states for a in s.actions}
    log = log_path.open("a") if log_path else None
    first = last = None
    bar = tqdm(range(steps), desc="expert", disable=not progress, dynamic_ncols=True)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, sched)
        batch = rng.sample(states, min(cfg.batch_size, len(states)))
        lps = branch_logprobs(model, [heads[s.prefix] for s in batch], [[conts[a] for a in s.actions] for s in batch],
                              tok.pad_token_id)
        pol = policy_target_loss(lps, [s.target.to(model.device) for s in batch])
        loss, sft = pol, None
        if cfg.sft_batch and sft_texts and cfg.sft_weight:
            inputs, targets, mask = batch_tensors(tok, [rng.choice(sft_texts) for _ in range(cfg.sft_batch)],
                                                  model.config.max_position_embeddings, model.device)
            sft = lm_loss(model(input_ids=inputs).logits, targets, mask)
            loss = pol + cfg.sft_weight * sft
        value = loss.item()
        if not math.isfinite(value):
            raise PonderError(f"expert iteration stopped: loss is {value} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        # the cross-entropy less the targets' own entropy: KL(target || policy), 0 once the policy is the target
        kl = pol.item() - float(torch.stack([-(s.target * s.target.clamp(min=1e-12).log()).sum() for s in batch]).mean())
        row = {"step": step, "policy_loss": round(pol.item(), 5), "policy_kl": round(kl, 5),
               "sft_loss": None if sft is None else round(sft.item(), 5)}
        first, last = first or row, row
        if log:
            log.write(json.dumps(row) + "\n")
            log.flush()
        if tracker is not None:
            tracker.log({k: v for k, v in row.items() if k != "step"}, step)
        bar.set_postfix(policy=f"{pol.item():.3f}")
    if log:
        log.close()
    model.eval()
    return {"searched_states": searched, "states": len(states), "steps": steps, "policy_loss_first": first["policy_loss"],
            "policy_loss_last": last["policy_loss"], "policy_kl_first": first["policy_kl"],
            "policy_kl_last": last["policy_kl"], "sft_loss_last": last["sft_loss"],
            "seconds": round(time.time() - t0, 1)}
