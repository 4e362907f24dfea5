"""The step sampler: one batched, KV-cached decoding loop for many prefixes x k samples.

Each prefix is read once (left-padded prefill over the batch of distinct prefixes); its cache is then
repeated k times, so the k samples share the prefix's compute. Rows that finish their step are
dropped from the batch (and from the cache) at once, so a batch runs only as long as the rows still
writing. Works with any transformers causal LM that takes ``past_key_values``; Llama-architecture
models run through ``fast_llama``'s hand-written forward instead, which gives the same tokens with far
less overhead per decoded token.

The loop sees the model only through ``Decoder`` (prefill / repeat / select / step) and keeps every
per-sample result on the device until the end, so each decoded token costs one host sync.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from ..compute import split_compute
from .base import Finish, SamplingParams, Samples, Step

#: finish reasons by code: a row that never ends is cut at max_tokens (0); a stop adds 1, an eos 2
FINISH: tuple[Finish, ...] = ("length", "stop", "eos")


@dataclass
class StopRule:
    """Precomputed per-vocabulary masks that decide, per sampled token, whether a step ended.

    stop: (V,) tokens whose text contains a stop string. blank: (V,) tokens whose text is whitespace
    only (a stop inside leading blank lines does not end a step). eos: (V,) end-of-sequence tokens.
    text_check: stop strings longer than one character, which can straddle tokens and so are also
    checked on the decoded text.
    """

    stops: tuple[str, ...]
    stop: torch.Tensor
    blank: torch.Tensor
    eos: torch.Tensor
    text_check: bool

    @staticmethod
    def build(tokenizer, stops: Sequence[str], vocab_size: int, eos_ids: Sequence[int]) -> "StopRule":
        texts = [tokenizer.decode([i]) for i in range(len(tokenizer))]
        texts += [""] * (vocab_size - len(texts))  # the embedding matrix may be padded past the vocab
        stop = torch.tensor([any(s in t for s in stops) for t in texts], dtype=torch.bool)
        blank = torch.tensor([t.strip() == "" for t in texts], dtype=torch.bool)
        eos = torch.zeros(vocab_size, dtype=torch.bool)
        eos[list(eos_ids)] = True
        return StopRule(tuple(stops), stop, blank, eos, any(len(s) > 1 for s in stops))


def pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Next tokens (n,) from logits (n, V): argmax at temperature 0, else tempered nucleus sampling."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)  # (n, V)
    if top_p < 1:
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p * keep)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def cut_at_stop(text: str, stops: Sequence[str]) -> str | None:
    """``text`` up to and including the first stop string preceded by content, or None if none."""
    best = None
    for s in stops:
        i = text.find(s)
        while i >= 0 and not text[:i].strip():
            i = text.find(s, i + 1)
        if i >= 0 and (best is None or i + len(s) < best):
            best = i + len(s)
    return None if best is None else text[:best]


class Decoder(Protocol):
    """A batch of rows decoded together with a KV cache: the one thing the sampling loop asks of a model."""

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, reserve: int) -> torch.Tensor:
        """Read left-padded prompts ids (N, L) with mask (N, L), keeping room for ``reserve`` more
        tokens; returns the logits (N, V) of each row's next token."""
        ...

    def repeat(self, k: int) -> None:
        """Each row becomes k consecutive rows sharing its cache."""
        ...

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (M,), in that order."""
        ...

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """Feed one token per row, tok (N,); returns the next logits (N, V)."""
        ...


class HFDecoder:
    """``Decoder`` over any transformers causal LM that takes ``past_key_values`` (a ``DynamicCache``)."""

    def __init__(self, model):
        self.model = model

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, reserve: int) -> torch.Tensor:
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (N, L)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=self.cache, use_cache=True,
            logits_to_keep=1,
        )
        self.mask, self.pos = mask, pos[:, -1:] + 1  # (N, L), (N, 1)
        return out.logits[:, -1]

    def repeat(self, k: int) -> None:
        self.cache.batch_repeat_interleave(k)
        self.mask, self.pos = self.mask.repeat_interleave(k, 0), self.pos.repeat_interleave(k, 0)

    def select(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.mask, self.pos = self.mask[rows], self.pos[rows]

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(tok), 1))], -1)  # (N, S)
        out = self.model(
            input_ids=tok[:, None], attention_mask=self.mask, position_ids=self.pos, past_key_values=self.cache,
            use_cache=True,
        )
        self.pos = self.pos + 1
        return out.logits[:, -1]


def left_pad(prompts: Sequence[Sequence[int]], pad: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, L) and attention mask (B, L) of prompts padded on the left, so that every row's
    next token sits at the same column (as ``generate`` expects)."""
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad if pad is not None else 0, dtype=torch.long)
    mask = torch.zeros((len(prompts), L), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, L - len(p) :] = 1
    return ids, mask


def decoder_for(model, fast: bool = True) -> Decoder:
    """The hand-written Llama forward where it reproduces the model exactly (much less overhead per
    token), else transformers' own forward."""
    from . import fast_llama

    return fast_llama.FastLlama(model) if fast and fast_llama.supports(model) else HFDecoder(model)


@torch.inference_mode()
def sample_steps(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    k: int,
    params: SamplingParams,
    rule: StopRule,
    generator: torch.Generator | None = None,
    fast: bool = True,
    flops_per_token: float = 0.0,
) -> Samples:
    """k samples of one step for each tokenized prompt, in one batched cached loop.

    ``fast=False`` forces transformers' forward even where ``fast_llama`` supports the model;
    ``flops_per_token`` (``compute.flops_per_token(model)``) prices each row's tokens in FLOPs.
    """
    t0 = time.perf_counter()
    device = model.device
    B, T = len(prompts), params.max_tokens
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    decoder = decoder_for(model, fast)
    logits = decoder.prefill(ids.to(device), mask.to(device), reserve=T)  # (B, V)
    forward_calls = 1
    if k > 1:
        decoder.repeat(k)
        logits = logits.repeat_interleave(k, 0)
    n = B * k
    # per-sample results stay on the device until the end: one host sync per token, not one per row
    rows = torch.arange(n, device=device)  # sample index of each live row
    out_tok = torch.zeros((n, T), dtype=torch.long, device=device)
    out_lp = torch.zeros((n, T), dtype=torch.float32, device=device)
    length = torch.zeros(n, dtype=torch.long, device=device)
    finish = torch.zeros(n, dtype=torch.long, device=device)  # index into FINISH
    content = torch.zeros(n, dtype=torch.bool, device=device)
    stop_m, blank_m, eos_m = rule.stop.to(device), rule.blank.to(device), rule.eos.to(device)

    for t in range(T):
        tok = pick(logits, params.temperature, params.top_p, generator)  # (n,)
        out_tok[rows, t] = tok
        out_lp[rows, t] = torch.log_softmax(logits.float(), -1).gather(-1, tok[:, None]).squeeze(-1)
        length[rows] = t + 1
        content = content | ~blank_m[tok]
        is_eos = eos_m[tok]
        ended = is_eos | (stop_m[tok] & content)  # (n,)
        if rule.text_check:  # multi-character stop strings may span tokens
            recent = out_tok[rows, max(0, t - 15) : t + 1].tolist()
            hits = [cut_at_stop(tokenizer.decode(r), rule.stops) is not None for r in recent]
            ended |= torch.tensor(hits, device=device)
        finish[rows] = ended.long() + is_eos.long()  # live rows are all still "length"
        if t == T - 1:
            break
        live = (~ended).nonzero().squeeze(-1)  # (m,)
        if len(live) == 0:
            break
        if len(live) < len(rows):  # finished rows need no more compute
            decoder.select(live)
            rows, content, tok, logits = rows[live], content[live], tok[live], logits[live]
        logits = decoder.step(tok)
        forward_calls += 1

    steps = []
    for tk, lp, m, f in zip(out_tok.tolist(), out_lp.tolist(), length.tolist(), finish.tolist()):
        text = tokenizer.decode(tk[:m], skip_special_tokens=True)
        if FINISH[f] == "stop":
            text = cut_at_stop(text, rule.stops) or text
        steps.append(Step(text, tuple(tk[:m]), tuple(lp[:m]), FINISH[f]))
    grouped = [steps[i * k : (i + 1) * k] for i in range(B)]
    generated = [sum(s.num_tokens for s in g) for g in grouped]
    read = [len(p) for p in prompts]
    return Samples(grouped, split_compute(generated, read, forward_calls, time.perf_counter() - t0, flops_per_token))
