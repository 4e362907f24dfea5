"""Supervised training of a causal LM on texts: the bootstrap of a from-scratch model (random legal
traces) and, later, rejection-sampling fine-tuning on the best verified traces.

Progress bar, a checkpoint folder written atomically every ``checkpoint_every`` steps (an ordinary
Hugging Face folder), ``losses.jsonl`` appended as it goes, and ``loss.png`` at the end.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch

from ..config import check_literals, check_positive, option
from ..errors import PonderError
from ..io import atomic_dir
from .losses import lm_loss
from .parallel import Parallel


@dataclass
class SFTConfig:
    """Supervised training (bootstrap or rejection-sampling fine-tuning)."""

    steps: int = option(1100, "optimizer steps")
    batch_size: int = option(32, "texts per step (32 learned faster per second than 64 for the tiny model)")
    lr: float = option(2e-3, "peak learning rate (AdamW)")
    warmup: int = option(30, "linear warm-up steps")
    weight_decay: float = option(0.01, "AdamW weight decay")
    grad_clip: float = option(1.0, "gradient norm clip")
    precision: Literal["bf16", "fp32"] = option(
        "fp32", "forward precision; bf16 autocast measured slower than fp32 for the tiny model on a 2-core CPU"
    )
    checkpoint_every: int = option(300, "write a checkpoint every this many steps")
    seed: int = option(0, "seed for data and initialisation")

    def __post_init__(self):
        check_positive(self, "steps", "batch_size", "lr", "checkpoint_every")
        check_literals(self)


#: a training text: a string (every token trained on) or (text, trained on) segments, e.g. from
#: ``Task.segments``, where the prompt and the task's observations are read but carry no loss
Text = str | Sequence[tuple[str, bool]]


def encode_text(tokenizer, text: Text) -> tuple[list[int], list[int]]:
    """(ids, trained-on flags) of ``<bos> text <eos>``; segments are tokenized one by one, as steps are."""
    if isinstance(text, str):
        ids = tokenizer(text)["input_ids"]
        return ids, [1] * len(ids)
    ids = tokenizer("")["input_ids"]  # the tokenizer's own leading special tokens, if any
    flags = [1] * len(ids)
    for piece, trained in text:
        t = tokenizer(piece, add_special_tokens=False)["input_ids"]
        ids, flags = ids + t, flags + [int(trained)] * len(t)
    return ids, flags


def batch_tensors(tokenizer, texts: Sequence[Text], max_len: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (inputs, targets, mask), each (B, T): every text is ``<bos> text <eos>``; a token is
    scored where its text is trained on (a plain string: all of it), and ``<eos>`` always."""
    enc = [encode_text(tokenizer, t) for t in texts]
    ids = [x[: max_len] + [tokenizer.eos_token_id] for x, _ in enc]
    flags = [f[: max_len] + [1] for _, f in enc]
    T = max(len(x) for x in ids) - 1
    inputs = torch.full((len(ids), T), tokenizer.pad_token_id, dtype=torch.long)
    targets = torch.zeros((len(ids), T), dtype=torch.long)
    mask = torch.zeros((len(ids), T), dtype=torch.long)
    for i, (x, f) in enumerate(zip(ids, flags)):
        n = len(x) - 1
        inputs[i, :n] = torch.tensor(x[:-1])
        targets[i, :n] = torch.tensor(x[1:])
        mask[i, :n] = torch.tensor(f[1:])  # the flag of the token predicted
    return inputs.to(device), targets.to(device), mask.to(device)


def save_checkpoint(model, tokenizer, out: Path) -> None:
    """Write a model folder atomically: a crash mid-write never leaves a half checkpoint at ``out``."""
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def lr_at(step: int, cfg: SFTConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak.

    From step ``warmup`` on this is exactly ``transformers.get_scheduler("cosine_with_min_lr",
    scheduler_specific_kwargs={"min_lr_rate": 0.1})`` (a test checks it). It is not that scheduler
    because its warm-up starts at lr 0: step 0 updates nothing. In the loop's short fine-tunes
    (5 steps with a warm-up of 1) that would be a fifth of the updates gone; here warm-up step s
    already trains at (s + 1) / warmup of the peak.
    """
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def fp32_master_weights(model) -> None:
    """Keep every trainable weight in float32, in place.

    On a GPU, models load in bfloat16 for search. An AdamW update of lr ~ 1e-5 is far below bfloat16's
    resolution (8 mantissa bits: a weight of 0.02 moves in steps of ~1e-4), so training those weights
    directly changes nothing at all. The forward pass still runs in bfloat16 under autocast where the
    trainer asks for it.

    Neither torch's autocast nor accelerate's ``mixed_precision="bf16"`` (which is autocast around the
    forward) does this: both assume float32 weights and only cast inside the forward, so on a
    bfloat16-loaded model they leave the weights, and hence the optimizer's updates, in bfloat16
    (checked: an AdamW step of lr 1e-5 through an ``Accelerator(mixed_precision="bf16")`` changed 0 of
    a bfloat16 layer's weights). ``model.float()`` would do it but also upcasts frozen weights (the
    base model under LoRA, a critic's backbone without ``tune_backbone``), doubling their memory for
    nothing; so only the trainable ones are upcast here.
    """
    for p in model.parameters():
        if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16):
            p.data = p.data.float()


def train_sft(
    model,
    tokenizer,
    texts: Callable[[int, int], Sequence[Text]],
    cfg: SFTConfig,
    out: Path,
    progress: bool = True,
    tracker=None,
) -> list[float]:
    """Train on ``texts(batch_size, step)`` (a fresh batch per step) and save to ``out``; returns losses.
    ``tracker`` (a ``tracking.Tracker``) gets each step's ``loss`` and ``lr``.

    A NaN or infinite loss stops training with a ``PonderError``; the last checkpoint stays intact.
    """
    from tqdm import tqdm

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    par = Parallel()  # one process, or this one's share of an `accelerate launch` run
    fp32_master_weights(model)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )
    net, opt = par.prepare(model, opt)
    device = net.device
    max_len = model.config.max_position_embeddings
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    log_path = out.with_name(out.name + ".losses.jsonl")
    if par.main:
        log_path.write_text("")
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="train", disable=not progress or not par.main, dynamic_ncols=True)
    t0 = time.time()
    with (log_path.open("a") if par.main else open(os.devnull, "w")) as log:
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            inputs, targets, mask = batch_tensors(tokenizer, par.share(texts(cfg.batch_size, step)), max_len, device)
            with autocast:
                logits = net(input_ids=inputs).logits  # (B, T, V)
            loss = lm_loss(logits, targets, mask)
            value = par.mean(loss.item())  # every process sees the same value, so all stop together on a NaN
            if not math.isfinite(value):
                raise PonderError(f"training stopped: loss is {value} at step {step}; last good checkpoint kept at {out}")
            opt.zero_grad(set_to_none=True)
            par.backward(loss)
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(value)
            log.write(json.dumps({"step": step, "loss": round(value, 5), "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 2)}) + "\n")
            log.flush()
            if tracker is not None and par.main:
                tracker.log({"loss": value, "lr": opt.param_groups[0]["lr"]}, step)
            bar.set_postfix(loss=f"{value:.3f}")
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                model.eval()
                if par.main:
                    save_checkpoint(model, tokenizer, out)
                par.wait()
                model.train()
    model.eval()
    if par.main:
        (out / "train_config.json").write_text(json.dumps({**asdict(cfg), "processes": par.world}, indent=2))
        plot_losses(losses, out / "loss.png")
    return losses


def plot_losses(losses: Sequence[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(range(1, len(losses) + 1), losses, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
