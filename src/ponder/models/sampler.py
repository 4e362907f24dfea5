"""The step sampler: one batched, KV-cached decoding loop for many prefixes x k samples.

Each prefix is read once (left-padded prefill over the batch of distinct prefixes); its cache is then
repeated k times, so the k samples share the prefix's compute. Rows that finish their step are
dropped from the batch (and from the cache) at once, so a batch runs only as long as the rows still
writing. Works with any transformers causal LM that takes ``past_key_values``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

from ..compute import split_compute
from .base import SamplingParams, Samples, Step


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


@torch.inference_mode()
def sample_steps(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    k: int,
    params: SamplingParams,
    rule: StopRule,
    generator: torch.Generator | None = None,
) -> Samples:
    """k samples of one step for each tokenized prompt, in one batched cached loop."""
    from transformers import DynamicCache

    t0 = time.perf_counter()
    device = model.device
    B, L = len(prompts), max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((B, L), pad, dtype=torch.long)
    mask = torch.zeros((B, L), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding, so every row's next token sits at the same column
        ids[i, L - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, L - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, L)

    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
        logits_to_keep=1, output_hidden_states=params.hidden,
    )
    forward_calls = 1
    logits = out.logits[:, -1]  # (B, V)
    if k > 1:
        cache.batch_repeat_interleave(k)
        logits, mask, pos = (x.repeat_interleave(k, 0) for x in (logits, mask, pos))
    n = B * k
    rows = torch.arange(n, device=device)  # sample index of each live row
    next_pos = pos[:, -1:] + 1  # (n, 1)
    tokens: list[list[int]] = [[] for _ in range(n)]
    logps: list[list[float]] = [[] for _ in range(n)]
    finish = ["length"] * n
    hidden: list[torch.Tensor | None] = [None] * n
    content = torch.zeros(n, dtype=torch.bool, device=device)
    stop_m, blank_m, eos_m = rule.stop.to(device), rule.blank.to(device), rule.eos.to(device)

    def advance(tok: torch.Tensor):
        """Feed one new token per live row; returns next logits (n, V) and last hidden states (n, H)."""
        nonlocal mask, next_pos, forward_calls
        mask = torch.cat([mask, mask.new_ones((len(tok), 1))], -1)
        o = model(
            input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos, past_key_values=cache,
            use_cache=True, output_hidden_states=params.hidden,
        )
        forward_calls += 1
        next_pos = next_pos + 1
        return o.logits[:, -1], (o.hidden_states[-1][:, -1] if params.hidden else None)

    for t in range(params.max_tokens):
        tok = pick(logits, params.temperature, params.top_p, generator)  # (n,)
        lp = torch.log_softmax(logits.float(), -1).gather(-1, tok[:, None]).squeeze(-1)  # (n,)
        content = content | ~blank_m[tok]
        ended_eos = eos_m[tok]
        ended = ended_eos | (stop_m[tok] & content)
        row_list, tok_list, lp_list = rows.tolist(), tok.tolist(), lp.tolist()
        for r, tk, l in zip(row_list, tok_list, lp_list):
            tokens[r].append(tk)
            logps[r].append(l)
        if rule.text_check:  # multi-character stop strings may span tokens
            extra = [
                i for i, r in enumerate(row_list)
                if not ended[i] and cut_at_stop(tokenizer.decode(tokens[r][-16:]), rule.stops) is not None
            ]
            if extra:
                ended[extra] = True
        last = t == params.max_tokens - 1
        ended_list, eos_list = ended.tolist(), ended_eos.tolist()
        for i, r in enumerate(row_list):
            if ended_list[i]:
                finish[r] = "eos" if eos_list[i] else "stop"
        live = (~ended).nonzero().squeeze(-1)
        stop_now = last or live.numel() == 0
        if params.hidden:
            # one more forward over the tokens just sampled gives every finished step the hidden state
            # of its last token; the rows still writing get their next logits from the same pass
            logits, h = advance(tok)  # h: (n, H)
            for i in range(len(row_list)) if last else ended.nonzero().squeeze(-1).tolist():
                hidden[row_list[i]] = h[i].float().cpu()
            if stop_now:
                break
            if live.numel() < len(row_list):
                cache.batch_select_indices(live)
                rows, mask, next_pos, content, logits = (x[live] for x in (rows, mask, next_pos, content, logits))
        else:
            if stop_now:
                break
            if live.numel() < len(row_list):  # finished rows need no more compute
                cache.batch_select_indices(live)
                rows, mask, next_pos, content, tok = (x[live] for x in (rows, mask, next_pos, content, tok))
            logits, _ = advance(tok)

    steps = []
    for r in range(n):
        text = tokenizer.decode(tokens[r], skip_special_tokens=True)
        if finish[r] == "stop":
            text = cut_at_stop(text, rule.stops) or text
        steps.append(Step(text, tuple(tokens[r]), tuple(logps[r]), finish[r], hidden[r]))
    grouped = [steps[i * k : (i + 1) * k] for i in range(B)]
    generated = [sum(s.num_tokens for s in g) for g in grouped]
    read = [len(p) for p in prompts]
    return Samples(grouped, split_compute(generated, read, forward_calls, time.perf_counter() - t0))
