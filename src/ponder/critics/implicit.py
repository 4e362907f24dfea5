"""The implicit reward of a DPO-trained policy ("From r to Q*", Rafailov et al. 2024), as credit and as a critic.

A policy pi trained by DPO against a reference pi_ref is the optimal soft Q-function of the
token-level decision process whose reward DPO learned; each token's implicit reward is

    r_t = beta * (log pi(a_t | s_t) - log pi_ref(a_t | s_t))

and it telescopes: r_t = r(s_t, a_t) + V*(s_{t+1}) - V*(s_t), so over a partial response

    sum_{t < T} r_t = V*(s_T) - V*(s_0)   (+ the true rewards collected, 0 before the end)

The per-token values say which tokens the preference data made likelier (credit), and their sum
over the steps written so far is the state's value up to a per-problem constant: a critic that
ranks the partial traces of one problem with no reward model at all (their Section 5 uses it to
guide beam search). ``ImplicitReward`` gives both from one forward pass of each model per batch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..compute import Compute, flops_per_token, split_compute
from ..errors import PonderError
from ..tasks import Problem, Task


@dataclass(frozen=True)
class Credit:
    """The per-token implicit rewards of one trace's steps (the prompt gets none).

    tokens: each token's text; a step's tokens join to the step's text.
    rewards: r_t = beta * (log pi - log pi_ref) of each token, in nats times beta.
    step_of: the step each token belongs to.
    """

    tokens: tuple[str, ...]
    rewards: tuple[float, ...]
    step_of: tuple[int, ...]
    num_steps: int
    beta: float

    @property
    def step_sums(self) -> list[float]:
        """Each step's implicit reward: the sum over its tokens."""
        out = [0.0] * self.num_steps
        for r, s in zip(self.rewards, self.step_of):
            out[s] += r
        return out

    @property
    def total(self) -> float:
        return float(sum(self.rewards))

    def step_tokens(self, step: int) -> list[tuple[str, float]]:
        return [(t, r) for t, r, s in zip(self.tokens, self.rewards, self.step_of) if s == step]


def piece_texts(tokenizer, ids: Sequence[int]) -> list[str]:
    """The text each token adds when the sequence is decoded left to right (so the pieces join to the
    decoded text even where a character spans several byte tokens: such a token adds ``""`` and the
    token that completes the character adds all of it)."""
    out, before = [], ""
    for n in range(1, len(ids) + 1):
        now = tokenizer.decode(list(ids[:n]), skip_special_tokens=False)
        if now.endswith("\ufffd"):  # an unfinished multi-byte character: wait for the rest
            out.append("")
            continue
        out.append(now[len(before):])
        before = now
    return out


class ImplicitReward:
    """Per-token implicit rewards of ``policy`` against ``reference`` (two causal LMs sharing a tokenizer).

    As a critic (``score``), a state's score is the sum of the implicit rewards of all its steps'
    tokens, beta * log(pi(steps) / pi_ref(steps)): 0 for the empty trace.
    """

    def __init__(self, policy_model, reference_model, tokenizer, task: Task, beta: float = 0.1, max_batch: int = 32,
                 name: str = "implicit"):
        if beta <= 0:
            raise PonderError(f"implicit reward: beta must be > 0, got {beta}")
        from ..models.hf import TraceEncoder

        self.policy, self.reference = policy_model.eval(), reference_model.eval()
        self.tokenizer, self.task, self.beta, self.max_batch, self.name = tokenizer, task, float(beta), max_batch, name
        if policy_model.get_output_embeddings().weight.shape[0] != reference_model.get_output_embeddings().weight.shape[0]:
            raise PonderError("implicit reward: the policy and its reference have different vocabularies")
        self.limit = getattr(policy_model.config, "max_position_embeddings", None)
        self.encode = TraceEncoder(tokenizer, task)  # uncut: a trace longer than the model is an error here
        self.flops_per_token = flops_per_token(policy_model) + flops_per_token(reference_model)  # both read each token
        self.last_compute: list[Compute] = []  # what the last call read, one per state (see critics.base)
        self._read: list[int] = []  # tokens of each state the last ``_rewards`` read

    @classmethod
    def load(cls, policy: str | Path, reference: str | Path, task: Task, beta: float = 0.1, device: str | None = None,
             loaded=None) -> "ImplicitReward":
        """Both models by spec (folder, ``.gguf``, ``smollm2``). ``loaded``: an already loaded ``HFPolicy``
        whose source is ``policy`` is shared rather than loaded twice."""
        from ..models.hf import load_hf

        def get(spec):
            if loaded is not None and getattr(loaded, "source", None) and _same(loaded.source, spec):
                return loaded
            return load_hf(str(spec), device=device)

        pol, ref = get(policy), get(reference)
        if _same(policy, reference):
            raise PonderError(f"implicit reward: the policy and the reference are the same model ({policy}); "
                              "every reward would be 0")
        return cls(pol.model, ref.model, pol.tokenizer, task, beta)

    @classmethod
    def from_iteration(cls, it_dir: str | Path, task: Task, device: str | None = None, loaded=None) -> "ImplicitReward":
        """The policy of a ``ponder improve`` iteration folder against the model its step-DPO started from,
        with the run's DPO beta."""
        import yaml

        it_dir = Path(it_dir)
        info_path = it_dir / "policy-train.json"
        try:
            ref = json.loads(info_path.read_text())["reference"]
        except FileNotFoundError:
            raise PonderError(f"{it_dir}: not an iteration folder of ponder improve (no policy-train.json)") from None
        except (json.JSONDecodeError, KeyError, TypeError):
            raise PonderError(f"{info_path}: records no DPO reference (this iteration ran no step-DPO, or an "
                              "older ponder); give both models: implicit:POLICY:REFERENCE") from None
        beta = 0.1
        cfg = it_dir.parent / "config.yaml"
        if cfg.is_file():
            beta = float(((yaml.safe_load(cfg.read_text()) or {}).get("dpo") or {}).get("beta", beta))
        return cls.load(it_dir / "policy", ref, task, beta, device, loaded)

    # --- reading traces ---------------------------------------------------------------------------
    @torch.no_grad()
    def _rewards(self, problems: Sequence[Problem], steps: Sequence[Sequence[str]]):
        """For each trace: (rewards (N,) over its step tokens, step ids per step), batched by ``max_batch``."""
        from ..models.hf import token_logprobs

        pad = self.tokenizer.pad_token_id
        self._read = []
        for i in range(0, len(problems), self.max_batch):
            ps, ss = problems[i : i + self.max_batch], steps[i : i + self.max_batch]
            enc = [self.encode(p, s) for p, s in zip(ps, ss)]
            for p, (ids, _) in zip(ps, enc):
                if self.limit and len(ids) > self.limit:
                    raise PonderError(f"implicit reward: the trace of {p.id} is longer than the model's {self.limit} positions")
            seqs = [ids for ids, _ in enc]
            self._read += [len(x) for x in seqs]
            r = self.beta * (token_logprobs(self.policy, seqs, pad) - token_logprobs(self.reference, seqs, pad))  # (B, T-1)
            r = r.cpu()
            for j, ((ids, ends), st) in enumerate(zip(enc, ss)):
                if not st:
                    yield torch.zeros(0), []
                    continue
                # step i is ids[bounds[i] + 1 : bounds[i + 1] + 1]; bounds[0] is the prompt's last position
                bounds = [self.encode(ps[j], [])[1][0], *ends]
                step_ids = [ids[a + 1 : b + 1] for a, b in zip(bounds, bounds[1:])]
                yield r[j, bounds[0] : ends[-1]], step_ids  # column q - 1 scores the token at position q

    def credit(self, problems: Sequence[Problem], steps: Sequence[Sequence[str]]) -> list[Credit]:
        """Each trace's per-token implicit rewards, with each token's text and step."""
        out = []
        for rewards, step_ids in self._rewards(problems, steps):
            tokens, step_of = [], []
            for s, ids in enumerate(step_ids):
                tokens += piece_texts(self.tokenizer, ids)
                step_of += [s] * len(ids)
            out.append(Credit(tuple(tokens), tuple(rewards.tolist()), tuple(step_of), len(step_ids), self.beta))
        return out

    def step_rewards(self, problems: Sequence[Problem], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        """Each trace's per-step implicit rewards (token sums)."""
        out = []
        for rewards, step_ids in self._rewards(problems, steps):
            bounds = torch.tensor([0] + [len(x) for x in step_ids]).cumsum(0).tolist()
            out.append([float(rewards[a:b].sum()) for a, b in zip(bounds, bounds[1:])])
        return out

    def score(self, problems: Sequence[Problem], steps: Sequence[Sequence[str]]) -> list[float]:
        t0 = time.perf_counter()
        out = [float(r.sum()) for r, _ in self._rewards(problems, steps)]
        # each model reads every state whole: twice the tokens and the calls, each token at both models' price
        read = [2 * n for n in self._read]
        calls = 2 * -(-len(problems) // self.max_batch)
        self.last_compute = split_compute([0] * len(read), read, calls, time.perf_counter() - t0, self.flops_per_token / 2)
        return out


def _same(a: str | Path, b: str | Path) -> bool:
    pa, pb = Path(a), Path(b)
    return str(a) == str(b) or (pa.exists() and pb.exists() and pa.resolve() == pb.resolve())
