"""Many continuations of one prefix scored in one row: tree attention.

Scoring every legal action of a state (or training on them) as separate rows re-reads the prefix once
per action: 36 actions of a Game-of-24 state are 36 copies of the same 40-token prefix. Here a row
holds the prefix once, then every continuation after it; a 4D attention mask lets each continuation
token see the prefix and the earlier tokens of its own continuation only, and position ids restart
after the prefix for every continuation, so each continuation is scored exactly as if it were alone
(checked against separate rows in the tests), at a fraction of the tokens. Works with any
transformers decoder that accepts a 4D float attention mask and position ids (Llama-architecture
models do, the tiny model included).

That mask is (T, T) over the whole row, and most of it is False: a continuation sees none of the others.
Where ``fast_llama`` runs the model, ``FastLlama.tree_logprobs`` computes only the scores the mask allows
(the prefix against itself, each continuation against the prefix and itself), in two blocks, with the same
values and gradients, and pads no state to the widest one; ``pack``'s rows remain the form for every other
model.
"""

from __future__ import annotations

from typing import Sequence

import torch

from . import fast_llama


def pack(prefixes: Sequence[Sequence[int]], conts: Sequence[Sequence[Sequence[int]]], pad: int):
    """Rows of prefix + all its continuations, right-padded.

    Returns ids (B, T), positions (B, T), allowed (B, 1, T, T) boolean (True where a query may attend to a
    key), prev (B, T) the position whose logits predict each token (0 where the token is not scored), and
    owner (B, T): the index of the continuation a token belongs to within its row, -1 for the prefix and
    padding.
    """
    T = max(len(p) + sum(len(c) for c in cs) for p, cs in zip(prefixes, conts))
    B = len(prefixes)
    ids = torch.full((B, T), pad, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    prev = torch.zeros((B, T), dtype=torch.long)
    group = torch.full((B, T), -2, dtype=torch.long)  # -1: prefix; j: continuation j; -2: padding
    for b, (p, cs) in enumerate(zip(prefixes, conts)):
        n = len(p)
        row_ids, row_pos, row_prev, row_group = list(p), list(range(n)), [0] * n, [-1] * n
        for j, c in enumerate(cs):
            at, m = len(row_ids), len(c)
            row_ids += c
            row_pos += range(n, n + m)
            row_prev += [n - 1, *range(at, at + m - 1)]
            row_group += [j] * m
        L = len(row_ids)
        ids[b, :L], pos[b, :L] = torch.tensor(row_ids), torch.tensor(row_pos)
        prev[b, :L], group[b, :L] = torch.tensor(row_prev), torch.tensor(row_group)
    causal = torch.ones((T, T), dtype=torch.bool).tril()
    g_q, g_k = group[:, :, None], group[:, None, :]  # (B, T, 1), (B, 1, T)
    allowed = causal & ((g_k == -1) | (g_k == g_q)) & (g_q != -2)
    allowed |= torch.eye(T, dtype=torch.bool)  # padding attends to itself, so no row of the mask is empty
    return ids, pos, allowed[:, None], prev, group.clamp(min=-1)


def fast_pass(model) -> bool:
    """Whether ``fast_llama`` can run ``model`` exactly here (not while dropout is on in training)."""
    return fast_llama.supports(model) and not (model.training and model.config.attention_dropout)


def branch_logprobs(model, prefixes: Sequence[Sequence[int]], conts: Sequence[Sequence[Sequence[int]]],
                    pad: int) -> list[torch.Tensor]:
    """log pi(c | prefix) summed over each continuation's tokens, differentiable: one tensor (n_i,) per
    prefix i, in the order of ``conts[i]``. Where ``fast_llama`` runs the model, attention is computed in two
    blocks over a flat batch of continuations (``FastLlama.tree_logprobs``: on Game-of-24 states 1.5x faster
    than the (T, T) mask to score actions, 1.3x to train on them, 2.3-3x for whole steps); otherwise the rows
    of ``pack`` under the mask, ``packed_logprobs``."""
    if fast_pass(model):
        return fast_llama.FastLlama(model).tree_logprobs(prefixes, conts)
    return packed_logprobs(model, prefixes, conts, pad)


def packed_logprobs(model, prefixes: Sequence[Sequence[int]], conts: Sequence[Sequence[Sequence[int]]],
                    pad: int) -> list[torch.Tensor]:
    """``branch_logprobs`` over ``pack``'s rows and (T, T) mask, in one forward pass: transformers' with the
    mask made additive, or ``fast_llama``'s where it runs the model exactly (the same arithmetic without
    transformers' per-call overhead; ``bench/tree_attention.py`` sets it against the two blocks)."""
    device = model.device
    ids, pos, allowed, prev, owner = (t.to(device) for t in pack(prefixes, conts, pad))
    if fast_pass(model):
        logits = fast_llama.FastLlama(model).logits(ids, pos, allowed)  # (B, T, V)
    else:
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    B, T, V = logits.shape
    rows = (torch.arange(B, device=device)[:, None] * T + prev).flatten()  # (B*T,) the predicting position
    flat = logits.flatten(0, 1).float()  # (B*T, V)
    tok = (flat[rows, ids.flatten()] - torch.logsumexp(flat, -1)[rows]).view(B, T)  # (B, T) log pi(token)
    out = []
    for b, cs in enumerate(conts):
        scored = owner[b] >= 0
        sums = torch.zeros(len(cs), device=device).index_add(0, owner[b][scored], tok[b][scored])
        out.append(sums)
    return out
