"""Supervised training: the loss goes down, parameters move, NaN stops cleanly, and the loss is what it says."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import ponder.train.sft as sft
from conftest import small_tiny_model
from ponder.errors import PonderError
from ponder.tasks import get_task
from ponder.train import SFTConfig, lm_loss, train_sft
from ponder.train.sft import batch_tensors, lr_at

TASK = get_task("game24")


def texts(n: int, step: int) -> list[str]:
    return TASK.bootstrap_texts(n, seed=1000 + step)


def test_train_sft_lowers_the_loss_and_moves_parameters(tmp_path):
    model, tok = small_tiny_model(num_layers=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = SFTConfig(steps=30, batch_size=8, lr=3e-3, warmup=3, checkpoint_every=100)
    losses = train_sft(model, tok, texts, cfg, tmp_path / "m", progress=False)
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 3.5  # about ln(vocab) at initialisation
    assert last < 0.75 * first, losses
    moved = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(moved) == len(before)  # every tensor was trained (the tied embedding included)
    assert not model.training
    log = [json.loads(line) for line in (tmp_path / "m.losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(30))
    assert [r["loss"] for r in log] == pytest.approx(losses, abs=1e-4)
    saved = json.loads((tmp_path / "m" / "train_config.json").read_text())
    assert saved["steps"] == 30 and saved["lr"] == 3e-3


def test_a_bfloat16_model_trains_in_float32_master_weights(tmp_path):
    """On a GPU models load in bfloat16; a small-lr update applied to bfloat16 weights rounds to no change."""
    model, tok = small_tiny_model(num_layers=1)
    model.to(torch.bfloat16)
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    cfg = SFTConfig(steps=3, batch_size=4, lr=1e-5, warmup=1, checkpoint_every=100)
    train_sft(model, tok, texts, cfg, tmp_path / "m", progress=False)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    moved = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(moved) == len(before)


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from ponder.models import load_policy

    model, tok = small_tiny_model()
    out = tmp_path / "m"
    calls = {"n": 0}
    real = sft.lm_loss

    def flaky(logits, targets, mask):
        calls["n"] += 1
        loss = real(logits, targets, mask)
        return loss * float("nan") if calls["n"] == 4 else loss  # step 3 goes wrong

    monkeypatch.setattr(sft, "lm_loss", flaky)
    cfg = SFTConfig(steps=6, batch_size=4, warmup=1, checkpoint_every=2)
    with pytest.raises(PonderError, match="loss is nan at step 3"):
        train_sft(model, tok, texts, cfg, out, progress=False)
    assert calls["n"] == 4
    # the checkpoint of step 2 is intact and loads; nothing half-written is left around it
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert not (tmp_path / "m.tmp").exists() and not (tmp_path / "m.old").exists()
    log = (tmp_path / "m.losses.jsonl").read_text().splitlines()
    assert len(log) == 3
    policy = load_policy(str(out), device="cpu")
    assert all(torch.isfinite(p).all() for p in policy.model.parameters())


def test_lm_loss_is_the_mean_cross_entropy_over_masked_positions():
    g = torch.Generator().manual_seed(0)
    B, T, V = 3, 5, 11
    logits = torch.randn(B, T, V, generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 0, 1, 0]])
    logp = torch.log_softmax(logits, -1)
    terms = [-logp[b, t, targets[b, t]] for b in range(B) for t in range(T) if mask[b, t]]
    manual = torch.stack(terms).mean()
    assert torch.allclose(lm_loss(logits, targets, mask), manual, atol=1e-6)
    # masked positions do not matter at all
    scrambled = torch.where(mask.bool()[..., None], logits, torch.randn(B, T, V, generator=g) * 100)
    assert torch.allclose(lm_loss(scrambled, targets, mask), manual, atol=1e-6)
    # the whole-batch case is plain cross-entropy; an empty mask is 0, not NaN
    full = torch.ones(B, T, dtype=torch.long)
    assert torch.allclose(lm_loss(logits, targets, full), F.cross_entropy(logits.flatten(0, 1), targets.flatten()), atol=1e-6)
    assert lm_loss(logits, targets, torch.zeros(B, T, dtype=torch.long)).item() == 0.0


def test_lm_loss_backpropagates_only_through_masked_positions():
    logits = torch.randn(2, 3, 7, requires_grad=True)
    targets = torch.zeros(2, 3, dtype=torch.long)
    mask = torch.tensor([[1, 0, 0], [0, 0, 1]])
    lm_loss(logits, targets, mask).backward()
    scored = logits.grad.abs().sum(-1)  # (B, T)
    assert torch.equal(scored > 0, mask.bool())


def test_batch_tensors_shift_pad_and_mask():
    _, tok = small_tiny_model()
    inputs, targets, mask = batch_tensors(tok, ["ab", "abcd"], max_len=256, device="cpu")
    assert inputs.shape == targets.shape == mask.shape == (2, 5)  # <bos> a b c d -> targets a b c d <eos>
    ids = tok("abcd")["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert inputs[1].tolist() == ids and targets[1].tolist() == ids[1:] + [tok.eos_token_id]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert inputs[0, 3:].tolist() == [tok.pad_token_id] * 2
    assert targets[0, :3].tolist() == tok("ab")["input_ids"][1:] + [tok.eos_token_id]


def test_lr_schedule():
    cfg = SFTConfig(steps=100, lr=1.0, warmup=10)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


@pytest.mark.parametrize("steps, warmup", [(100, 10), (5, 1)])
def test_lr_schedule_is_transformers_cosine_with_min_lr_after_warmup(steps, warmup):
    """What ``lr_at``'s docstring claims: the library's schedule, except a warm-up that starts above 0."""
    from transformers import get_scheduler

    cfg = SFTConfig(steps=steps, lr=1.0, warmup=warmup)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    lib = get_scheduler("cosine_with_min_lr", opt, num_warmup_steps=warmup, num_training_steps=steps,
                        scheduler_specific_kwargs={"min_lr_rate": 0.1})
    theirs = [lib.lr_lambdas[0](s) for s in range(steps)]  # lr of step s / peak
    assert [lr_at(s, cfg) for s in range(warmup, steps)] == pytest.approx(theirs[warmup:], abs=1e-12)
    assert theirs[0] == 0.0 < lr_at(0, cfg)


@pytest.mark.parametrize("field, value", [("steps", 0), ("batch_size", 0), ("lr", 0.0), ("checkpoint_every", 0), ("precision", "fp16")])
def test_sft_config_validates(field, value):
    with pytest.raises(PonderError, match=field.replace("_", "-")):
        SFTConfig(**{field: value})
