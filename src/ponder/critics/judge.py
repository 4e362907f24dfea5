"""An LLM-as-judge critic: Tree of Thoughts' value prompt, read off the next-token distribution.

The model is asked whether a partial solution can still reach a correct answer and to reply with one
word, ``sure``, ``likely`` or ``impossible`` (Yao et al. 2023, the Game of 24 value prompt). Instead
of sampling the reply, one forward pass reads the probability of each word's first token, and the
score is the expected value under those three, renormalised::

    score = sum_w p(w) v(w) / sum_w p(w),   v(sure) = 1, v(likely) = 0.5, v(impossible) = 0

which is what ToT estimates by sampling the value prompt several times, at the cost of one pass.
Meant for pretrained instruct models (SmolLM2, Gemma, your own); a model trained from scratch on
puzzle traces has never seen the prompt and gives noise.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch

from ..compute import Compute, flops_per_token, split_compute
from ..errors import PonderError
from ..tasks import Problem, Task

WORDS: dict[str, float] = {"sure": 1.0, "likely": 0.5, "impossible": 0.0}


class Judge:
    """Scores states with the policy model itself (or any HF causal LM) through the value prompt."""

    def __init__(self, policy, task: Task, max_batch: int = 16):
        self.model, self.tokenizer, self.task = policy.model, policy.tokenizer, task
        self.name = "judge"
        self.max_batch = max_batch
        self.flops_per_token = flops_per_token(self.model)
        self.last_compute: list[Compute] = []  # what the last call read, one per state (see critics.base)
        # the first token of every spelling (" sure", "sure", "Sure", ...), except a blank one (a
        # char-level tokenizer's " ") or one that two words share, which would say nothing
        firsts = {w: {self.tokenizer(v, add_special_tokens=False)["input_ids"][0]
                      for v in (w, " " + w, w.capitalize(), " " + w.capitalize())} for w in WORDS}
        self.word_ids: dict[str, list[int]] = {}
        for w, ids in firsts.items():
            others = set().union(*(v for u, v in firsts.items() if u != w))
            keep = sorted(i for i in ids - others if self.tokenizer.decode([i]).strip())
            if not keep:
                raise PonderError(f"the judge cannot tell {w!r} from the other answers in this tokenizer")
            self.word_ids[w] = keep

    def prompt(self, problem: Problem, steps: Sequence[str]) -> str:
        from ..models.hf import has_chat

        text = self.task.judge_prompt(problem, steps)
        if has_chat(self.tokenizer):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
        return text + "\nAnswer:"

    @torch.no_grad()
    def score(self, problems: Sequence[Problem], steps: Sequence[Sequence[str]]) -> list[float]:
        from ..models.hf import encode_prompts
        from ..models.sampler import left_pad

        t0 = time.perf_counter()
        values = torch.tensor(list(WORDS.values()))
        out: list[float] = []
        read: list[int] = []
        for i in range(0, len(problems), self.max_batch):
            texts = [self.prompt(p, s) for p, s in zip(problems[i : i + self.max_batch], steps[i : i + self.max_batch])]
            encoded = encode_prompts(self.tokenizer, texts)
            read += [len(x) for x in encoded]
            ids, mask = left_pad(encoded, self.tokenizer.pad_token_id)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = self.model(input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                                position_ids=pos.to(self.model.device), logits_to_keep=1).logits[:, -1]  # (B, V)
            probs = torch.softmax(logits.float(), -1).cpu()
            mass = torch.stack([probs[:, self.word_ids[w]].sum(-1) for w in WORDS], -1)  # (B, 3)
            out += ((mass * values).sum(-1) / mass.sum(-1).clamp(min=1e-12)).tolist()
        calls = -(-len(problems) // self.max_batch)
        self.last_compute = split_compute([0] * len(read), read, calls, time.perf_counter() - t0, self.flops_per_token)
        return out
