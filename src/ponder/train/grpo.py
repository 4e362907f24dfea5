"""GRPO: reinforcement learning from the verifier's reward on groups of sampled traces, no search.

Group relative policy optimisation (DeepSeekMath, Shao et al. 2024; DeepSeek-R1) is what a researcher
reaches for first to make a model improve itself on a task with a checkable answer, usually through
TRL's ``GRPOTrainer``. This is the same update inside ponder, so that it can be compared with the
search-based loop on the same task, model and compute. Each step:

1. takes ``problems_per_step`` training problems and samples a group of ``group_size`` whole traces of
   each through ponder's own batched sampler (``SearchEnv.rollout``): the model writes each action and,
   where the task observes (Game of 24: ``4 + 8 =`` -> `` 12 (left: 1 6 12)``), the task writes the
   observation, exactly as in search;
2. rewards each trace by the task's verifier (or, given ``critic``, a learned outcome reward model's
   score of the finished trace) and turns the rewards into group-relative advantages
   (``losses.group_advantages``);
3. scores the traces under the policy, the policy that sampled (``pi_old``) and the frozen reference
   (the policy as training began), and takes ``updates`` AdamW steps on ``losses.grpo_loss``. Only the
   model's own choices carry loss: the prompt and the task's observations are read, never trained on
   (``Task.segments``, as in supervised fine-tuning).

GRPO needs independent samples from the distribution whose ratio it clips (search, by contrast, draws k
*distinct* actions by Gumbel-top-k). Which distribution that is, is ``actions``:

- ``listed`` (where the task lists its legal actions and the policy scores them, as search and evaluation
  do): each step is an independent draw from the policy renormalised over the legal actions,
  pi(a | s) = softmax_a(log pi(a tokens | s) / T), every step legal; the ratio and the KL are per action
  over that distribution (a trace's "tokens" in the loss are its actions), scored in one tree-attention
  row per state (``models.branches``), as expert iteration scores them.
- ``written``: the sampler writes every action token by token (an illegal one ends its trace with
  reward 0); the ratio and the KL are per token. On the demo's bootstrap policy, which writes an illegal
  action about 4 steps in 10, none of 2,560 written traces was verified and GRPO never updated.

``tests/test_grpo.py`` checks the per-token loss against TRL's on the same batch.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch

from ..compute import Compute
from ..config import check_literals, check_positive, option
from ..critics import scored
from ..errors import PonderError
from ..models.branches import branch_logprobs
from ..tasks import Problem, Task
from .losses import group_advantages, grpo_loss
from .sft import batch_tensors, fp32_master_weights, lr_at


@dataclass
class GRPOConfig:
    """GRPO on the verifier's reward (DeepSeekMath): groups of sampled traces, clipped ratio, KL to the reference."""

    steps: int = option(20, "sampling steps: each samples a fresh batch of groups, then takes ``updates`` optimizer steps on it")
    problems_per_step: int = option(8, "training problems per step (each gets a group of ``group_size`` traces)")
    group_size: int = option(8, "traces sampled per problem (G): a trace's advantage is its reward against its group's")
    updates: int = option(1, "optimizer steps on each sampled batch (mu in DeepSeekMath, TRL's num_iterations); above 1 "
                             "the policy moves away from the one that sampled and the clip acts")
    epsilon: float = option(0.2, "clip range: the ratio pi / pi_old is clipped to [1 - epsilon, 1 + epsilon]")
    beta: float = option(0.04, "weight of the KL penalty to the reference policy (the policy training started from; "
                               "DeepSeekMath's 0.04); 0 = no penalty and no reference kept")
    lr: float = option(1e-4, "peak learning rate (AdamW)")
    warmup: int = option(2, "linear warm-up optimizer steps (then cosine decay to 10% of the peak)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    grad_clip: float = option(1.0, "gradient norm clip")
    temperature: float = option(1.0, "sampling temperature; the log-probs in the ratio and the KL are taken at the same "
                                     "temperature, as TRL does")
    top_p: float = option(1.0, "nucleus sampling mass (1 = off)")
    max_step_tokens: int | None = option(None, "most tokens the model writes for one step (default: the task's own)")
    micro_batch: int = option(64, "traces per forward pass; gradients accumulate over the whole batch")
    adv_eps: float = option(1e-4, "eps in A = (r - mean) / (std + eps), TRL's 1e-4")
    actions: Literal["auto", "listed", "written"] = option(
        "auto", "how each action is drawn and scored: listed = from the policy renormalised over the task's legal "
        "actions, the ratio per action (as search and evaluation draw them); written = the model writes it token by "
        "token, an illegal one ending the trace, the ratio per token; auto = listed where the task lists its actions "
        "and the policy can score them, else written")
    seed: int = option(0, "seed of problem order and sampling")

    def __post_init__(self):
        check_literals(self)
        if self.group_size is None or self.group_size < 2:
            raise PonderError(f"--group-size must be >= 2 (a trace's advantage compares it with its group), got {self.group_size}")
        if self.beta is None or not self.beta >= 0:
            raise PonderError(f"--beta (the KL weight) must be >= 0, got {self.beta}")
        check_positive(self, "steps", "problems_per_step", "updates", "epsilon", "lr", "temperature", "top_p",
                       "micro_batch", "adv_eps")
        if self.top_p > 1:
            raise PonderError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_step_tokens is not None and self.max_step_tokens <= 0:
            raise PonderError(f"--max-step-tokens must be > 0, got {self.max_step_tokens}")
        if self.warmup < 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise PonderError("--warmup and --weight-decay must be >= 0 and --grad-clip > 0")


def token_logps(model, inputs: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log pi(targets_t | inputs_<=t) at ``temperature`` (logits / T, the distribution the sampler draws from):
    (B, T) for inputs, targets (B, T) from ``sft.batch_tensors``."""
    logits = model(input_ids=inputs).logits  # (B, T, V)
    return torch.log_softmax(logits.float() / temperature, -1).gather(-1, targets[..., None]).squeeze(-1)  # (B, T)


def under_reference(model) -> Callable[[Callable], torch.Tensor]:
    """A function ``f -> f(model as it is now, frozen)``: a PEFT model's base with its adapters switched off
    (the adapters start at zero, as TRL does), else a copy of the weights."""
    if hasattr(model, "disable_adapter"):
        def ref(f):
            with model.disable_adapter():
                return f(model)
        return ref
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    return lambda f: f(frozen)


@dataclass
class ListedSteps:
    """Traces as listed actions: each distinct state once (its token ids and every legal action's), and for
    each trace step the state it was taken in and the action's index among that state's legal ones."""

    heads: list[list[int]]  # (states,) prompt + steps so far, token ids
    conts: list[list[list[int]]]  # (states, legal actions) token ids of each action
    state: torch.Tensor  # (B, S) the state of trace b's step j (0 past its end)
    action: torch.Tensor  # (B, S) the index of its action among that state's legal actions
    mask: torch.Tensor  # (B, S) 1 on the trace's steps

    @classmethod
    def build(cls, policy, task: Task, problems: Sequence[Problem], traces: Sequence[Sequence[str]]) -> "ListedSteps":
        index: dict[tuple[Problem, tuple[str, ...]], int] = {}
        prefixes, legal = [], []
        width = max(1, max(map(len, traces)))
        state, action, mask = (torch.zeros(len(traces), width, dtype=torch.long) for _ in range(3))
        for b, (p, t) in enumerate(zip(problems, traces)):
            for j, step in enumerate(t):
                key = (p, tuple(t[:j]))
                if key not in index:
                    index[key] = len(prefixes)
                    prefixes.append(policy.render(task, p) + "".join(t[:j]))
                    legal.append(task.legal_actions(p, t[:j]))
                acts, a = legal[index[key]], task.action_of(step)
                if a not in acts:
                    raise PonderError(f"GRPO: step {step!r} of a trace of {p.id} is not one of its state's legal actions")
                state[b, j], action[b, j], mask[b, j] = index[key], acts.index(a), 1
        tok = policy.tokenizer
        conts = [[tok(a, add_special_tokens=False)["input_ids"] for a in acts] for acts in legal]
        return cls(policy.encode(prefixes), conts, state, action, mask)

    def part(self, rows: slice) -> "ListedSteps":
        """The traces ``rows``, with only the states they pass through."""
        used = sorted(set(self.state[rows][self.mask[rows].bool()].tolist()))
        renum = torch.zeros(len(self.heads), dtype=torch.long)
        renum[used] = torch.arange(len(used))
        return ListedSteps([self.heads[i] for i in used], [self.conts[i] for i in used], renum[self.state[rows]],
                           self.action[rows], self.mask[rows])

    def logps(self, model, pad: int, temperature: float = 1.0) -> torch.Tensor:
        """log pi(a_bj | s_bj) under ``model`` renormalised over each state's legal actions at ``temperature``,
        differentiable: (B, S), 0 past each trace's end."""
        per_state = [torch.log_softmax(x / temperature, -1) for x in branch_logprobs(model, self.heads, self.conts, pad)]
        flat = torch.cat(per_state)  # every legal action of every state, state by state
        offsets = torch.tensor([0] + [len(x) for x in per_state[:-1]]).cumsum(0).to(flat.device)
        idx = offsets[self.state.to(flat.device)] + self.action.to(flat.device)  # (B, S)
        return flat[idx] * self.mask.to(flat.device)


def grpo_batch(tokenizer, task: Task, prompts: Sequence[str], traces: Sequence[Sequence[str]], max_len: int, device):
    """(inputs, targets, mask), each (B, T), of prompt + steps for each trace: mask is 1 on the model's own
    tokens only (``Task.segments``: not the prompt, not the task's observations). The ``<eos>`` that
    ``batch_tensors`` appends is not scored: the task ends a trace (an answer, an illegal step, the step
    limit), so it was never sampled."""
    texts = [task.segments(p, steps) for p, steps in zip(prompts, traces)]
    inputs, targets, mask = batch_tensors(tokenizer, texts, max_len, device)
    return inputs, targets, mask * (targets != tokenizer.eos_token_id)


def _batches(problems: Sequence[Problem], size: int, rng: random.Random):
    """Endless batches of ``size`` problems: each pass over the problems in a fresh random order."""
    order: list[Problem] = []
    while True:
        while len(order) < size:
            extra = list(problems)
            rng.shuffle(extra)
            order += extra
        yield order[:size]
        order = order[size:]


def train_grpo(policy, task: Task, problems: Sequence[Problem], cfg: GRPOConfig, log_path: Path | None = None,
               progress: bool = True, tracker=None, critic=None) -> dict:
    """Train ``policy`` (an ``HFPolicy``, in place) by GRPO on ``problems`` for ``cfg.steps`` steps.

    ``critic`` (a ``Critic``, e.g. a learned ORM) replaces the task's verifier as the reward, scored on
    each finished trace. Each step's row (loss, reward, KL, clip share, tokens generated so far, seconds)
    is appended to ``log_path`` (JSONL) and given to ``tracker`` (a ``tracking.Tracker``). Returns the
    first and last rewards and losses and the compute spent: tokens generated and read by the sampler,
    seconds sampling, training and in all. A non-finite reward or loss stops with a ``PonderError``
    (nothing is saved here; the caller keeps its last checkpoint).
    """
    from tqdm import tqdm

    from ..search.env import SearchEnv, State

    if not problems:
        raise PonderError("GRPO: no training problems")
    t0 = time.time()
    rng = random.Random(cfg.seed)
    if cfg.max_step_tokens is not None:
        task = copy.copy(task)
        task.max_step_tokens = cfg.max_step_tokens
    env = SearchEnv(policy, task)
    listed = cfg.actions == "listed" or (cfg.actions == "auto" and env.lists_actions)
    if listed and not env.lists_actions:
        raise PonderError(f"GRPO --actions listed: task {task.name!r} with this policy cannot list and score its legal "
                          "actions (free text, or a model that cannot score continuations); use --actions written")
    env.lists_actions = listed  # written: the model writes each action (see the module docstring)
    env.seed(cfg.seed)
    model, tok = policy.model, policy.tokenizer
    max_len = model.config.max_position_embeddings
    fp32_master_weights(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    sched = replace(cfg, steps=cfg.steps * cfg.updates)  # lr_at counts optimizer steps
    ref = under_reference(model) if cfg.beta else None
    log = log_path.open("a") if log_path else None
    spent, sample_s, train_s, rows, moved = Compute(), 0.0, 0.0, [], False
    batches = _batches(problems, cfg.problems_per_step, rng)
    bar = tqdm(range(cfg.steps), desc="grpo", disable=not progress, dynamic_ncols=True)
    try:
        for step in bar:
            batch = next(batches)
            ts = time.time()
            model.eval()
            with torch.no_grad():
                # independent draws either way: listed ones from the policy over the legal actions, written ones
                # by the sampler token by token
                traces = [t for group in env.rollout([State(p) for p in batch], cfg.group_size, cfg.temperature,
                                                     cfg.top_p, fast=not listed, distinct=False) for t in group]
            owners = [p for p in batch for _ in range(cfg.group_size)]
            rewards, cost = _rewards(env, critic, owners, traces)
            spent = spent + Compute.total(env.take_compute(p) for p in batch) + cost
            sample_s += time.time() - ts

            ts = time.time()
            adv = group_advantages(torch.tensor(rewards), cfg.group_size, cfg.adv_eps).to(model.device)  # (B,)
            if not adv.any() and not moved:
                # every group's rewards are equal and the policy is still the reference: the loss and its gradient
                # are 0 and AdamW's moments too, so the update would change nothing; its forward and backward
                # passes are skipped (a hard task's first steps often are all zero)
                rows.append(_log_row(step, [0.0], [0.0], [0.0], rewards, cfg, opt, spent, t0, log, tracker, skipped=True))
                train_s += time.time() - ts
                continue
            parts = [slice(i, i + cfg.micro_batch) for i in range(0, len(traces), cfg.micro_batch)]
            if listed:  # (b, S) log pi(a | s) over each state's legal actions, one tree-attention row per state
                listed_steps = ListedSteps.build(policy, task, owners, traces)
                chunks = [listed_steps.part(s) for s in parts]
                mask = listed_steps.mask.to(model.device)
                def logps(mdl, i):
                    return chunks[i].logps(mdl, tok.pad_token_id, cfg.temperature)
            else:  # (b, T) log pi(token) of the model's own tokens
                inputs, targets, mask = grpo_batch(tok, task, [env.prompt(p) for p in owners], traces, max_len, model.device)
                def logps(mdl, i):
                    return token_logps(mdl, inputs[parts[i]], targets[parts[i]], cfg.temperature)
            with torch.no_grad():
                ref_lp = [ref(lambda m: logps(m, i)) for i in range(len(parts))] if ref else [None] * len(parts)
                # pi_old: the policy that sampled; with one update it is the policy itself (detached below)
                old_lp = [logps(model, i) for i in range(len(parts))] if cfg.updates > 1 else [None] * len(parts)
            model.train()
            losses, kls, clips = [], [], []
            for u in range(cfg.updates):
                for g in opt.param_groups:
                    g["lr"] = lr_at(step * cfg.updates + u, sched)
                opt.zero_grad(set_to_none=True)
                total, kl, clip, scored = 0.0, 0.0, 0.0, 0.0
                for i, (s, rl, ol) in enumerate(zip(parts, ref_lp, old_lp)):
                    lp = logps(model, i)
                    loss, k, c = grpo_loss(lp, lp.detach() if ol is None else ol, rl, adv[s], mask[s], cfg.epsilon, cfg.beta)
                    share = lp.shape[0] / len(traces)
                    (loss * share).backward()  # the loss is a mean over traces, so shares add up to the batch's
                    n = float(mask[s].sum())
                    total, kl, clip, scored = total + loss.item() * share, kl + k.item() * n, clip + c.item() * n, scored + n
                if not math.isfinite(total):
                    raise PonderError(f"GRPO stopped: loss is {total} at step {step}")
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                moved = True
                losses.append(total)
                kls.append(kl / max(scored, 1.0))
                clips.append(clip / max(scored, 1.0))
            model.eval()
            train_s += time.time() - ts
            rows.append(_log_row(step, losses, kls, clips, rewards, cfg, opt, spent, t0, log, tracker))
            bar.set_postfix(reward=f"{rows[-1]['reward']:.3f}", kl=f"{rows[-1]['kl']:.4f}")
    finally:
        bar.close()
        model.eval()
        if log:
            log.close()
    tail = rows[-max(1, len(rows) // 4):]
    return {"steps": cfg.steps, "actions": "listed" if listed else "written", "traces": cfg.steps * cfg.problems_per_step * cfg.group_size,
            "reward_first": rows[0]["reward"], "reward_last": sum(r["reward"] for r in tail) / len(tail),
            "loss_first": rows[0]["loss"], "loss_last": rows[-1]["loss"], "kl_last": rows[-1]["kl"],
            "tokens_generated": spent.tokens_generated, "tokens_read": spent.tokens_read,
            "forward_calls": round(spent.forward_calls, 1), "skipped_steps": sum(r["skipped"] for r in rows),
            "sample_seconds": round(sample_s, 1), "train_seconds": round(train_s, 1), "seconds": round(time.time() - t0, 1)}


def _log_row(step: int, losses, kls, clips, rewards, cfg: GRPOConfig, opt, spent: Compute, t0: float, log, tracker,
             skipped: bool = False) -> dict:
    """One step's row of the log (mean loss over its updates; KL and clip share after the last), written to
    ``log`` and ``tracker``."""
    r = torch.tensor(rewards).view(-1, cfg.group_size)  # (problems, G)
    row = {"step": step, "loss": round(sum(losses) / len(losses), 6), "reward": round(r.mean().item(), 5),
           "solved_any": round((r.max(-1).values > 0).float().mean().item(), 4),
           "equal_groups": round((r.std(-1) == 0).float().mean().item(), 4),
           "kl": round(kls[-1], 6), "clipped": round(clips[-1], 5), "lr": opt.param_groups[0]["lr"], "skipped": skipped,
           "tokens_generated": spent.tokens_generated, "seconds": round(time.time() - t0, 2)}
    if log:
        log.write(json.dumps(row) + "\n")
        log.flush()
    if tracker is not None:
        tracker.log({k: v for k, v in row.items() if k not in ("step", "skipped")}, step)
    return row


def _rewards(env, critic, problems: Sequence[Problem], traces: Sequence[Sequence[str]]) -> tuple[list[float], Compute]:
    """One finite reward per trace: the task's verifier, or ``critic``'s score of the finished trace; and
    what the critic's reading cost."""
    if critic is not None:
        rewards, cost = scored(critic, list(problems), [list(t) for t in traces])
        return rewards, Compute.total(cost)
    rewards = [float(env.reward(p, t)) for p, t in zip(problems, traces)]
    bad = next((r for r in rewards if not math.isfinite(r)), None)
    if bad is not None:
        raise PonderError(f"task {env.task.name!r}: the verifier returned a non-finite reward ({bad})")
    return rewards, Compute()
