"""A hand-written forward pass over a loaded ``LlamaForCausalLM``, for the step sampler's decode loop
and for tree attention's scoring and training pass (``FastLlama.tree_logprobs``; ``FastLlama.logits`` is its
(T, T) mask form).

Why: with small models (the tiny from-scratch model, SmolLM2-135M) a decode step through
transformers costs more in per-call overhead (mask building, module dispatch, ``DynamicCache``
bookkeeping) than in arithmetic. This module runs the same arithmetic as transformers' Llama, in the
same order (RMSNorm in float32 then cast back, ``rotate_half`` RoPE, SDPA with a boolean mask), on
the model's own parameters, with a preallocated KV cache. So greedy tokens match ``generate`` and a
model trained in place is always seen with its current weights.

Anything it cannot reproduce exactly (biases, other activations, dynamic RoPE, other architectures)
is refused by ``unsupported_reason`` and the sampler uses the transformers forward instead.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import PonderError

#: RoPE types whose frequencies do not depend on the sequence length, so ``inv_freq`` can be read once
STATIC_ROPE = ("default", "linear", "llama3", "yarn")


def unsupported_reason(model) -> str | None:
    """Why ``FastLlama`` cannot run ``model`` exactly like transformers does, or None if it can."""
    from transformers.activations import ACT2FN
    from transformers.models.llama import modeling_llama as llama

    if type(model) is not llama.LlamaForCausalLM:
        return f"{type(model).__name__} is not LlamaForCausalLM"
    c = model.config
    rope = (getattr(c, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope not in STATIC_ROPE:
        return f"rope_type {rope!r} is not one of {STATIC_ROPE}"
    if c.attention_bias or c.mlp_bias:
        return "attention or MLP biases"
    if c.hidden_act != "silu":
        return f"hidden_act {c.hidden_act!r} is not silu"
    known = {
        llama.LlamaForCausalLM, llama.LlamaModel, llama.LlamaDecoderLayer, llama.LlamaAttention, llama.LlamaMLP,
        llama.LlamaRMSNorm, llama.LlamaRotaryEmbedding, torch.nn.ModuleList, torch.nn.Embedding, torch.nn.Linear,
        type(ACT2FN["silu"]),
    }
    # FastLlama reads plain weights, so a swapped-in module (a LoRA or quantized linear) would be ignored
    odd = sorted({type(m).__name__ for m in model.modules() if type(m) not in known})
    if odd:
        return f"modules it does not know: {', '.join(odd)}"
    if len({p.device for p in model.parameters()}) != 1:
        return "parameters spread over several devices"
    return None


def supports(model) -> bool:
    """Whether the sampler can use ``FastLlama`` for ``model``."""
    return unsupported_reason(model) is None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm: normalised in float32, cast back, then scaled (the order matters for bf16)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """transformers' ``rotate_half`` op for op, so that RoPE rounds the same way."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class FastLlama:
    """A batch of rows decoded together: prefill, repeat, select rows, one-token steps.

    The cache is ``k``/``v`` of shape (layers, N, kv_heads, T_max, head_dim). All rows share the
    column of their next token (prompts are left-padded), ``valid`` (N, T_max) marks real tokens and
    ``pos`` (N,) is each row's next RoPE position. The cache doubles when a step would overflow it.
    """

    def __init__(self, model):
        reason = unsupported_reason(model)
        if reason is not None:
            raise PonderError(f"FastLlama cannot run this model: {reason}")
        c, m = model.config, model.model
        self.embed = m.embed_tokens.weight  # (V, H)
        self.lm_head = model.lm_head.weight  # (V, H), the same tensor as embed when tied
        self.norm = m.norm.weight
        self.eps = c.rms_norm_eps
        self.layers = [
            (
                layer.input_layernorm.weight,
                layer.self_attn.q_proj.weight,
                layer.self_attn.k_proj.weight,
                layer.self_attn.v_proj.weight,
                layer.self_attn.o_proj.weight,
                layer.post_attention_layernorm.weight,
                layer.mlp.gate_proj.weight,
                layer.mlp.up_proj.weight,
                layer.mlp.down_proj.weight,
            )
            for layer in m.layers[: c.num_hidden_layers]
        ]
        attn = m.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.scale = attn.scaling
        self.kv_heads = c.num_key_value_heads
        self.groups = c.num_attention_heads // c.num_key_value_heads
        self.inv_freq = m.rotary_emb.inv_freq.float()  # (head_dim / 2,)
        self.rope_scale = m.rotary_emb.attention_scaling
        self.dtype, self.device = self.embed.dtype, self.embed.device
        self.k = self.v = torch.empty(0)
        self.valid = self.pos = torch.empty(0)
        self.t = 0  # cache column of the next token
        # flat storage of the cache before the last select / repeat, reused for the next one: memory
        # fresh from the OS costs a page fault per 4 KiB on first write, which on a CPU took longer
        # than the copy itself (18 of 41 s of a best-of-16 run went to compacting the cache)
        self.spare: tuple[torch.Tensor, torch.Tensor] | None = None
        self.flat: tuple[torch.Tensor, torch.Tensor] | None = None  # the flat storage behind k and v

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, reserve: int) -> torch.Tensor:
        """Read left-padded prompts ids (N, L) with mask (N, L); room is kept for ``reserve`` more
        tokens. Returns the logits (N, V) for each row's next token."""
        N, L = ids.shape
        shape = torch.Size((len(self.layers), N, self.kv_heads, L + reserve, self.head_dim))
        # left uninitialised (zeroing a large cache costs milliseconds): a column is always written
        # before attention reads it
        self.flat = self._buffers(shape.numel())
        self.k, self.v = (f.view(shape) for f in self.flat)
        self.valid = torch.zeros((N, L + reserve), dtype=torch.bool, device=self.device)
        self.valid[:, :L] = mask.bool()
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (N, L)
        self.pos = pos[:, -1] + 1  # (N,)
        # a padding query attends to itself only, so no row of the mask is empty (SDPA kernels differ
        # on empty rows); real queries never see padding keys, so their outputs are unchanged
        causal = torch.ones((L, L), dtype=torch.bool, device=self.device).tril()  # (L, L)
        keys = self.valid[:, None, :L] | torch.eye(L, dtype=torch.bool, device=self.device)  # (N, L, L)
        self.t = 0
        h = self._forward(ids, pos, (causal & keys)[:, None])  # (N, L, H)
        self.t = L
        return F.linear(h[:, -1], self.lm_head)  # (N, V)

    def repeat(self, k: int) -> None:
        """Each row becomes k consecutive rows (the k samples of a prefix share its prefill)."""
        self.select(torch.arange(self.k.shape[1], device=self.device).repeat_interleave(k))

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (M,), in that order (a row may repeat); finished rows cost nothing afterwards."""
        shape = torch.Size((self.k.shape[0], len(rows), *self.k.shape[2:]))
        if self.spare is None or self.spare[0].numel() < shape.numel():
            self.spare = self._buffers(shape.numel())
        k, v = (f[: shape.numel()].view(shape) for f in self.spare)
        # only the filled columns are copied, as whole (kv_heads, t, head_dim) blocks per row
        torch.index_select(self.k[:, :, :, : self.t], 1, rows, out=k[:, :, :, : self.t])
        torch.index_select(self.v[:, :, :, : self.t], 1, rows, out=v[:, :, :, : self.t])
        self.flat, self.spare = self.spare, self.flat
        self.k, self.v, self.valid, self.pos = k, v, self.valid[rows], self.pos[rows]

    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """Feed one token per row, tok (N,). Returns the next logits (N, V)."""
        if self.t == self.k.shape[3]:
            self._grow()
        self.valid[:, self.t] = True
        mask = self.valid[:, None, None, : self.t + 1]  # (N, 1, 1, S)
        h = self._forward(tok[:, None], self.pos[:, None], mask)[:, 0]  # (N, H)
        self.t += 1
        self.pos = self.pos + 1
        return F.linear(h, self.lm_head)

    def _buffers(self, numel: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat, uninitialised storage for keys and values."""
        return (torch.empty(numel, dtype=self.dtype, device=self.device),
                torch.empty(numel, dtype=self.dtype, device=self.device))

    def _grow(self) -> None:
        """Double the cache's columns (the sampler reserves enough up front; this is the fallback)."""
        self.k = torch.cat([self.k, torch.empty_like(self.k)], dim=3)
        self.v = torch.cat([self.v, torch.empty_like(self.v)], dim=3)
        self.flat, self.spare = (self.k.view(-1), self.v.view(-1)), None
        self.valid = torch.cat([self.valid, torch.zeros_like(self.valid)], dim=1)

    def logits(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits (N, T, V) of whole rows read at once, each query attending where mask (N, 1, T, T) is
        True, with no cache, differentiable: tree attention's (T, T) mask form (``branches.packed_logprobs``),
        which ``bench/tree_attention.py`` times against ``tree_logprobs``."""
        self.t = 0
        return F.linear(self._forward(ids, pos, mask, cache=False), self.lm_head)

    def tree_logprobs(self, prefixes: Sequence[Sequence[int]], conts: Sequence[Sequence[Sequence[int]]]) -> list[torch.Tensor]:
        """log pi(c | prefix) summed over each continuation's tokens, differentiable: tree attention's
        scoring and training pass, with no cache.

        Each continuation sees its prefix and its own earlier tokens only, so attention is computed in two
        blocks instead of one (T, T) mask over prefix + every continuation: the prefix's queries against its
        own keys, and each continuation's queries against [the prefix's keys, its own keys], one softmax over
        both. The arithmetic of each score is the same, but the scores computed fall from (n + A m)^2 to
        n^2 + A m (n + m) for A continuations of m tokens after a prefix of n: for 36 actions of 6 tokens
        after 40, 5.7x fewer; for whole steps of 14 tokens, 10x fewer.

        The continuations of every prefix lie in one flat batch (C, m), each reading its prefix's keys and
        values by index, so a call that mixes states with 36 legal actions and states with 6 (as MCTS's do)
        pads no state to the widest one."""
        dev, N = self.device, len(prefixes)
        counts = [len(cs) for cs in conts]
        flat = [c for cs in conts for c in cs]
        if not flat:
            return [torch.zeros(0, device=dev) for _ in conts]
        C, n, m = len(flat), max(map(len, prefixes)), max(map(len, flat))
        pid = torch.tensor([list(p) + [0] * (n - len(p)) for p in prefixes], dtype=torch.long, device=dev)  # (N, n)
        cid = torch.tensor([list(c) + [0] * (m - len(c)) for c in flat], dtype=torch.long, device=dev)  # (C, m)
        plen = torch.tensor([len(p) for p in prefixes], device=dev)  # (N,)
        clen = torch.tensor([len(c) for c in flat], device=dev)  # (C,)
        owner = torch.repeat_interleave(torch.arange(N, device=dev), torch.tensor(counts, device=dev))  # (C,)
        ar_n, ar_m = torch.arange(n, device=dev), torch.arange(m, device=dev)
        pv, cv = ar_n < plen[:, None], ar_m < clen[:, None]  # (N, n), (C, m): real tokens
        rope_p = self._rope(ar_n.expand(N, n))
        rope_c = self._rope(plen[owner][:, None] + ar_m)  # (C, m): each continuation starts after its prefix
        eye = torch.eye(n, dtype=torch.bool, device=dev)
        # the prefix: causal over its real tokens (a padding query attends to itself, so no row is empty)
        mask_p = ((eye.cumsum(0).bool() & pv[:, None, :]) | eye)[:, None]  # (N, 1, n, n)
        # a continuation token: every real token of its prefix, then its own continuation causally
        tril_m = torch.ones((m, m), dtype=torch.bool, device=dev).tril()
        mask_c = torch.cat([pv[owner][:, None, :].expand(C, m, n), tril_m & cv[:, None, :]], -1)[:, None]  # (C, 1, m, n+m)
        xp, xc = F.embedding(pid, self.embed), F.embedding(cid, self.embed)
        for ln1, wq, wk, wv, wo, ln2, wg, wu, wd in self.layers:
            qp, kp, vp = self._qkv(rms_norm(xp, ln1, self.eps), wq, wk, wv, rope_p)  # (N, heads, n, D)
            qc, kc, vc = self._qkv(rms_norm(xc, ln1, self.eps), wq, wk, wv, rope_c)  # (C, heads, m, D)
            ap = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask_p, scale=self.scale)
            kpo, vpo = kp[owner], vp[owner]  # (C, heads, n, D): each continuation's prefix
            scores = torch.cat([qc @ kpo.transpose(-1, -2), qc @ kc.transpose(-1, -2)], -1)  # (C, heads, m, n+m)
            # the softmax in float32, as SDPA accumulates it, whatever the weights' dtype
            w = torch.softmax((scores.float() * self.scale).masked_fill(~mask_c, float("-inf")), -1).to(qc.dtype)
            ac = w[..., :n] @ vpo + w[..., n:] @ vc  # (C, heads, m, D)
            xp = self._block_out(xp, ap.transpose(1, 2).reshape(N, n, -1), wo, ln2, wg, wu, wd)
            xc = self._block_out(xc, ac.transpose(1, 2).reshape(C, m, -1), wo, ln2, wg, wu, wd)
        hp, hc = rms_norm(xp, self.norm, self.eps), rms_norm(xc, self.norm, self.eps)  # (N, n, H), (C, m, H)
        last = hp[torch.arange(N, device=dev), plen - 1][owner]  # (C, H): predicts each continuation's first token
        logits = F.linear(torch.cat([last[:, None], hc[:, :-1]], 1), self.lm_head).float()  # (C, m, V)
        lp = logits.gather(-1, cid[..., None])[..., 0] - torch.logsumexp(logits, -1)
        return list((lp * cv).sum(-1).split(counts))  # (C,) -> one tensor per prefix

    def _rope(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (N, 1, T, D) of positions pos (N, T), rounded as transformers' rotary embedding does."""
        freqs = pos[..., None].float() * self.inv_freq  # (N, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (N, T, D)
        return (emb.cos() * self.rope_scale).to(self.dtype)[:, None], (emb.sin() * self.rope_scale).to(self.dtype)[:, None]

    def _qkv(self, h: torch.Tensor, wq, wk, wv, rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values (N, heads, T, D) of normed h (N, T, H), RoPE applied; a kv head is
        repeated for the query heads that share it (``tree_logprobs``' blocks are small)."""
        N, T, _ = h.shape
        cos, sin = rope
        q = F.linear(h, wq).view(N, T, -1, self.head_dim).transpose(1, 2)
        k = F.linear(h, wk).view(N, T, -1, self.head_dim).transpose(1, 2)
        v = F.linear(h, wv).view(N, T, -1, self.head_dim).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        return q, k.repeat_interleave(self.groups, 1), v.repeat_interleave(self.groups, 1)

    def _block_out(self, x: torch.Tensor, a: torch.Tensor, wo, ln2, wg, wu, wd) -> torch.Tensor:
        """The rest of a decoder layer after attention: output projection, residual, MLP, residual."""
        x = x + F.linear(a, wo)
        h = rms_norm(x, ln2, self.eps)
        return x + F.linear(F.silu(F.linear(h, wg)) * F.linear(h, wu), wd)

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, cache: bool = True) -> torch.Tensor:
        """Run ids (N, T) at positions pos (N, T) whose keys go to cache columns t..t+T-1, attending
        to columns 0..t+T-1 where mask (N, 1, T, t+T) is True (``cache`` False: to the T new keys only,
        nothing stored). Returns the normed hidden (N, T, H)."""
        N, T = ids.shape
        S, G, D = self.t + T, self.groups, self.head_dim
        cos, sin = (t[:, :, None] for t in self._rope(pos))  # (N, 1, 1, T, D)
        # grouped-query attention without repeating keys: the G query heads that share a kv head
        # are stacked along the query axis, so the mask is repeated G times instead
        mask = mask[:, :, None].expand(N, 1, G, T, S).reshape(N, 1, G * T, S)  # (N, 1, G*T, S)
        x = F.embedding(ids, self.embed)  # (N, T, H)
        for i, (ln1, wq, wk, wv, wo, ln2, wg, wu, wd) in enumerate(self.layers):
            h = rms_norm(x, ln1, self.eps)
            q = F.linear(h, wq).view(N, T, -1, G, D).permute(0, 2, 3, 1, 4)  # (N, KV, G, T, D)
            k = F.linear(h, wk).view(N, T, -1, 1, D).permute(0, 2, 3, 1, 4)  # (N, KV, 1, T, D)
            v = F.linear(h, wv).view(N, T, -1, D).transpose(1, 2)  # (N, KV, T, D)
            q = (q * cos + rotate_half(q) * sin).reshape(N, -1, G * T, D)  # (N, KV, G*T, D)
            k = (k * cos + rotate_half(k) * sin)[:, :, 0]  # (N, KV, T, D)
            if cache:
                self.k[i, :, :, self.t : S] = k
                self.v[i, :, :, self.t : S] = v
                k, v = self.k[i, :, :, :S], self.v[i, :, :, :S]
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)  # (N, KV, G*T, D)
            a = a.view(N, -1, G, T, D).permute(0, 3, 1, 2, 4).reshape(N, T, -1)  # (N, T, KV*G*D)
            x = self._block_out(x, a, wo, ln2, wg, wu, wd)
        return rms_norm(x, self.norm, self.eps)
