"""Learned critics that read a state and give one number: the value head, the PRM and the ORM.

All three are the same small model: a language-model backbone (a copy of the policy's, so it starts
from what the policy knows) and a two-layer MLP head on its last hidden state at the end of each
step. They differ in what they are trained on and how a trace's per-step outputs become one score:

- ``value``: V(s) regressed on MCTS Q-values (AlphaLLM's value function); a state's score is the
  head's output after its last step.
- ``prm``: a process reward model trained on per-step soft labels (the share of rollouts from a
  step that reach a correct answer, as in Math-Shepherd, or the step's MCTS Q); a trace's score
  aggregates its steps' outputs by ``min``, ``product`` or ``last``.
- ``orm``: an outcome reward model, a classifier of whole traces (correct or not) scored after the
  last step.

The head's output is a logit z; scores are sigmoid(z - shift) in [0, 1], the range of the task's reward, where
``shift`` undoes the offset that training on balanced batches teaches (see ``train.critic.prior_shift``).
One forward pass over a trace gives the head's output after every step, so a PRM costs no more
than a value head, and training reads each root-to-leaf path once for all its nodes.

A critic is saved as a folder: the backbone as an ordinary Hugging Face model folder, plus
``head.safetensors`` and ``critic.json`` (kind, aggregation, hidden size).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import nn

from ..compute import Compute, flops_per_token, split_compute
from ..errors import PonderError
from ..models.base import default_device
from ..tasks import Problem, Task

Kind = Literal["value", "prm", "orm"]
Aggregate = Literal["last", "min", "product"]
KINDS: tuple[str, ...] = ("value", "prm", "orm")


class Head(nn.Module):
    """hidden (..., H) -> logit (...): Linear(H, H) -> GELU -> Linear(H, 1)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h).squeeze(-1)


def aggregate(probs: torch.Tensor, how: Aggregate) -> float:
    """One score for a trace from its per-step probabilities (S,)."""
    if how == "last":
        return float(probs[-1])
    if how == "min":
        return float(probs.min())
    return float(probs.prod())


class ScalarCritic:
    """A backbone + head that scores (problem, steps) states; see the module docstring."""

    def __init__(self, backbone, tokenizer, task: Task, kind: Kind, agg: Aggregate | None = None,
                 head: Head | None = None, max_batch: int = 64, shift: float = 0.0):
        if kind not in KINDS:
            raise PonderError(f"unknown critic kind {kind!r}; choose one of: {', '.join(KINDS)}")
        self.backbone, self.tokenizer, self.task, self.kind = backbone, tokenizer, task, kind
        self.agg: Aggregate = agg or ("min" if kind == "prm" else "last")
        if self.agg not in ("last", "min", "product"):
            raise PonderError(f"unknown aggregation {self.agg!r}; choose one of: last, min, product")
        hidden = backbone.config.hidden_size
        self.head = (head or Head(hidden)).to(self.device)
        self.name = kind
        self.max_batch = max_batch
        self.shift = shift  # taken off the head's logit when scoring (the prior shift of balanced training)
        from ..models.hf import TraceEncoder

        self.encode = TraceEncoder(tokenizer, task, getattr(backbone.config, "max_position_embeddings", None))
        self.last_compute: list[Compute] = []  # what the last call read, one per state (see critics.base)
        self.flops_per_token = flops_per_token(self.backbone, self.head)  # training changes weights, not their number

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def from_policy(cls, policy, task: Task, kind: Kind, agg: Aggregate | None = None, seed: int = 0) -> "ScalarCritic":
        """A fresh critic whose backbone is a copy of the policy's model (the head starts random)."""
        import copy

        torch.manual_seed(seed)
        backbone = _base(copy.deepcopy(policy.model))
        return cls(backbone, policy.tokenizer, task, kind, agg)

    def save(self, out: str | Path) -> None:
        """Write the critic folder atomically (a crash never leaves a half-written critic at ``out``)."""
        from safetensors.torch import save_file

        from ..io import atomic_dir

        with atomic_dir(out) as tmp:
            self.backbone.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(tmp / "head.safetensors"))
            meta = {"kind": self.kind, "aggregate": self.agg, "hidden_size": self.backbone.config.hidden_size,
                    "prior_shift": self.shift}
            (tmp / "critic.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, path: str | Path, task: Task, device: str | None = None, agg: Aggregate | None = None) -> "ScalarCritic":
        """Load a critic folder; a missing or corrupt one is a one-line ``PonderError`` naming it."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        meta_path = path / "critic.json"
        if not meta_path.is_file():
            raise PonderError(f"{path}: not a critic folder (no critic.json)")
        try:
            meta = json.loads(meta_path.read_text())
            kind, shift = meta["kind"], float(meta.get("prior_shift", 0.0))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise PonderError(f"{meta_path}: corrupt critic metadata") from None
        device = default_device(device)
        try:
            backbone = AutoModel.from_pretrained(path).to(device)
            tok = AutoTokenizer.from_pretrained(path)
            head = Head(backbone.config.hidden_size)
            head.load_state_dict(load_file(str(path / "head.safetensors")))
        except (OSError, ValueError, RuntimeError, SafetensorError) as e:
            raise PonderError(f"{path}: corrupt critic checkpoint ({str(e).splitlines()[0][:160]})") from None
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        return cls(backbone.eval(), tok, task, kind, agg or meta.get("aggregate"), head, shift=shift)

    # --- reading states ---------------------------------------------------------------------------
    def step_features(self, problems: Sequence[Problem], steps: Sequence[Sequence[str]]) -> list[torch.Tensor]:
        """The backbone's last hidden state after each step of each state, (S_i, H) float32 per state.
        Each state is read whole (prompt and steps), and ``last_compute`` says so."""
        from ..models.hf import right_pad

        t0 = time.perf_counter()
        out: list[torch.Tensor] = []
        read: list[int] = []
        for i in range(0, len(problems), self.max_batch):
            enc = [self.encode(p, s) for p, s in zip(problems[i : i + self.max_batch], steps[i : i + self.max_batch])]
            ids, mask = right_pad([x for x, _ in enc], self.tokenizer.pad_token_id)
            h = self.backbone(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state  # (B, T, H)
            out.extend(h[j, ends].float() for j, (_, ends) in enumerate(enc))
            read += [len(x) for x, _ in enc]
        calls = -(-len(problems) // self.max_batch)
        self.last_compute = split_compute([0] * len(read), read, calls, time.perf_counter() - t0, self.flops_per_token)
        return out

    def step_logits(self, problems: Sequence[Problem], steps: Sequence[Sequence[str]]) -> list[torch.Tensor]:
        """The head's logit after each step of each state, (S_i,) per state (with gradients if enabled)."""
        return [self.head(h) for h in self.step_features(problems, steps)]

    @torch.no_grad()
    def step_probs(self, problems: Sequence[Problem], steps: Sequence[Sequence[str]]) -> list[torch.Tensor]:
        """The critic's score after each step of each state: sigmoid(logit - shift), (S_i,) per state."""
        self.backbone.eval()
        return [torch.sigmoid(z - self.shift) for z in self.step_logits(problems, steps)]

    def score(self, problems: Sequence[Problem], steps: Sequence[Sequence[str]]) -> list[float]:
        return [aggregate(p, self.agg) for p in self.step_probs(problems, steps)]


def _base(model):
    """The bare transformer of a causal LM (hidden states, no LM head); ``model`` itself if already bare."""
    base = getattr(model, "base_model", model)
    if not hasattr(base, "config") or base is None:
        raise PonderError(f"cannot find the backbone of {type(model).__name__}")
    return base
