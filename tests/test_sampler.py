"""The step sampler: same tokens as ``generate``, fast path == transformers path, stop rules, compute."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ponder.errors import PonderError
from ponder.models.base import SamplingParams
from ponder.models.fast_llama import FastLlama, supports, unsupported_reason
from ponder.models.sampler import HFDecoder, StopRule, cut_at_stop, decoder_for, left_pad, sample_steps
from ponder.models.tiny import TinyConfig, char_tokenizer, tiny_model

TEXTS = ["4 5 6 10\n", "1 1\n", "12 3 3 8\nabc", "7\n"]  # different lengths, so rows are left-padded


def noisy(model, std: float = 0.1, seed: int = 0):
    """Re-draw the matrices: a fresh model's greedy text is mostly its last input character repeated,
    which would make token comparisons trivially true."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, std, generator=g)
    return model.eval()


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_model(TinyConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128))
    return noisy(model), tok


@pytest.fixture(scope="module")
def gqa():
    """A Llama with grouped-query attention, an untied head and another RoPE base, like SmolLM2."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=96, intermediate_size=128, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    return noisy(LlamaForCausalLM(config)), tok


def encode(tok, texts=TEXTS) -> list[list[int]]:
    return tok(list(texts))["input_ids"]


def rule_for(model, tok, stops=(), eos=True) -> StopRule:
    vocab = model.get_output_embeddings().weight.shape[0]
    return StopRule.build(tok, stops, vocab, [tok.eos_token_id] if eos else [])


def greedy(max_tokens: int, stop=()) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, stop=stop)


def generate(model, tok, prompts, n: int) -> list[list[int]]:
    """transformers' greedy ``generate`` on the same left-padded ids, never stopping early."""
    from transformers import GenerationConfig

    ids, mask = left_pad(prompts, tok.pad_token_id)
    config = GenerationConfig(do_sample=False, max_new_tokens=n, eos_token_id=[], pad_token_id=tok.pad_token_id)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return out[:, ids.shape[1] :].tolist()


def tokens(samples) -> list[tuple[int, ...]]:
    return [s.token_ids for group in samples.steps for s in group]


@pytest.mark.parametrize("model_name", ["tiny", "gqa"])
@pytest.mark.parametrize("fast", [True, False])
def test_greedy_tokens_equal_generate(request, model_name, fast):
    model, tok = request.getfixturevalue(model_name)
    assert supports(model)
    assert isinstance(decoder_for(model, fast=fast), FastLlama if fast else HFDecoder)
    prompts = encode(tok)
    out = sample_steps(model, tok, prompts, 1, greedy(24), rule_for(model, tok, eos=False), fast=fast)
    ours = tokens(out)
    assert [list(t) for t in ours] == generate(model, tok, prompts, 24)
    assert len({t for t in ours}) == len(prompts)  # the rows really differ, so the check means something


@pytest.mark.parametrize("model_name", ["tiny", "gqa"])
def test_fast_path_equals_transformers_path(request, model_name):
    model, tok = request.getfixturevalue(model_name)
    rule = rule_for(model, tok, ("\n",))
    a, b = (
        sample_steps(model, tok, encode(tok), 2, greedy(16, ("\n",)), rule, fast=fast)
        for fast in (True, False)
    )
    assert tokens(a) == tokens(b)
    for sa, sb in zip((s for g in a.steps for s in g), (s for g in b.steps for s in g)):
        assert sa.finish == sb.finish
        assert torch.allclose(torch.tensor(sa.logprobs), torch.tensor(sb.logprobs), atol=1e-5)


def test_k_samples_share_the_prefix(tiny):
    model, tok = tiny
    prompts = encode(tok)
    out = sample_steps(model, tok, prompts, 3, greedy(5), rule_for(model, tok))
    for p, group, compute in zip(prompts, out.steps, out.compute):
        assert len(group) == 3 and len({s.token_ids for s in group}) == 1  # greedy: k equal samples
        assert compute.tokens_read == len(p)  # the prefix is read once, not k times
        assert compute.tokens_generated == sum(s.num_tokens for s in group)
    assert sum(c.forward_calls for c in out.compute) == pytest.approx(5)  # prefill + 4 decode steps


def test_sampling_is_reproducible_with_a_seeded_generator(tiny):
    model, tok = tiny
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=12, stop=())
    runs = [
        tokens(sample_steps(model, tok, encode(tok), 4, params, rule_for(model, tok), torch.Generator().manual_seed(s)))
        for s in (7, 7, 8)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert all(1 <= len(t) <= 12 for t in runs[0])


def test_cache_grows_past_its_reservation(gqa):
    model, tok = gqa
    ids, mask = left_pad(encode(tok), tok.pad_token_id)
    roomy, tight = FastLlama(model), FastLlama(model)
    with torch.inference_mode():
        a, b = roomy.prefill(ids, mask, reserve=32), tight.prefill(ids, mask, reserve=0)
        for _ in range(20):
            tok_ = a.argmax(-1)
            a, b = roomy.step(tok_), tight.step(tok_)
            assert torch.equal(a, b)
    assert tight.k.shape[3] > ids.shape[1] + 19


def test_select_and_repeat_match_transformers_and_reuse_the_cache_memory(gqa):
    """Rows repeated, reordered, duplicated and dropped keep their own cache; from the second compaction
    on, the cache is copied into memory it held before instead of fresh pages."""
    model, tok = gqa
    ids, mask = left_pad(encode(tok), tok.pad_token_id)
    fast, ref = FastLlama(model), HFDecoder(model)
    pointers = []
    with torch.inference_mode():
        a, b = fast.prefill(ids, mask, reserve=16), ref.prefill(ids, mask, reserve=16)
        fast.repeat(2), ref.repeat(2)
        a, b = a.repeat_interleave(2, 0), b.repeat_interleave(2, 0)
        for rows in ([7, 0, 3, 3, 5, 1], [5, 0, 2, 4], [3, 1, 0], [2]):
            for _ in range(2):
                tok_ = b.argmax(-1)
                a, b = fast.step(tok_), ref.step(tok_)
                assert torch.allclose(a, b, atol=1e-5)
            rows = torch.tensor(rows)
            fast.select(rows), ref.select(rows)
            a, b = a[rows], b[rows]
            pointers.append(fast.k.untyped_storage().data_ptr())
        a, b = fast.step(b.argmax(-1)), ref.step(b.argmax(-1))
        assert torch.allclose(a, b, atol=1e-5)
    assert pointers[2] == pointers[0] and pointers[3] == pointers[1]  # two buffers, taken in turn


def test_unsupported_models_fall_back_to_transformers():
    from transformers import LlamaConfig, LlamaForCausalLM

    class AdapterLinear(torch.nn.Linear):
        """Stands for a LoRA or quantized layer: its weight alone is not what it computes."""

    small = dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    adapted = LlamaForCausalLM(LlamaConfig(**small))
    adapted.model.layers[0].self_attn.q_proj = AdapterLinear(16, 16, bias=False)
    cases = {
        "biases": LlamaForCausalLM(LlamaConfig(**small, mlp_bias=True)),
        "rope_type": LlamaForCausalLM(
            LlamaConfig(**small, rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0})
        ),
        "hidden_act": LlamaForCausalLM(LlamaConfig(**small, hidden_act="gelu")),
        "AdapterLinear": adapted,
    }
    for reason, model in cases.items():
        assert reason in unsupported_reason(model)
        assert isinstance(decoder_for(model), HFDecoder)
        with pytest.raises(PonderError, match=reason):
            FastLlama(model)


# --- stop rules --------------------------------------------------------------------------------------


def test_stop_rule_masks(tiny):
    model, tok = tiny
    rule = rule_for(model, tok, ("\n",))
    nl, space, a = tok.convert_tokens_to_ids(["\n", " ", "a"])
    assert rule.stop[nl] and not rule.stop[a]
    assert rule.blank[nl] and rule.blank[space] and not rule.blank[a]
    assert rule.eos[tok.eos_token_id] and rule.eos.sum() == 1
    assert not rule.text_check and rule_for(model, tok, ("\n\n",)).text_check


def test_cut_at_stop_needs_content_before_the_stop():
    assert cut_at_stop("\n\n 3 + 4 = 7\nnext", ("\n",)) == "\n\n 3 + 4 = 7\n"
    assert cut_at_stop("\n \n", ("\n",)) is None
    assert cut_at_stop("a. b\nc", ("\n", ". ")) == "a. "  # the earliest stop wins
    assert cut_at_stop("no stop", ("\n",)) is None


class ScriptedDecoder:
    """A ``Decoder`` whose row i writes ``scripts[i]`` (then repeats its last token), recording batch sizes."""

    def __init__(self, scripts: list[list[int]], vocab: int):
        self.scripts, self.vocab, self.batches = scripts, vocab, []

    def _logits(self) -> torch.Tensor:
        self.batches.append(len(self.rows))
        logits = torch.zeros(len(self.rows), self.vocab)
        for i, r in enumerate(self.rows.tolist()):
            logits[i, self.scripts[r][min(self.t, len(self.scripts[r]) - 1)]] = 5.0
        return logits

    def prefill(self, ids, mask, reserve):
        self.rows, self.t = torch.arange(len(ids)), 0
        return self._logits()

    def repeat(self, k):
        self.rows = self.rows.repeat_interleave(k)

    def select(self, rows):
        self.rows = self.rows[rows]

    def step(self, tok):
        self.t += 1
        return self._logits()


def test_steps_end_at_stop_after_content_at_eos_or_at_max_tokens(tiny, monkeypatch):
    model, tok = tiny
    ids = lambda s: tok.convert_tokens_to_ids(list(s))  # noqa: E731
    eos = tok.eos_token_id
    scripts = [ids("\n x\nyz"), ids("ab") + [eos], ids("abcdefghij"), ids("\n\n")]
    decoder = ScriptedDecoder(scripts, len(tok))
    monkeypatch.setattr("ponder.models.sampler.decoder_for", lambda *a, **kw: decoder)
    fake = SimpleNamespace(device=torch.device("cpu"))
    out = sample_steps(fake, tok, [[1]] * 4, 1, greedy(6, ("\n",)), rule_for(model, tok, ("\n",)))
    steps = [g[0] for g in out.steps]
    assert [(s.text, s.finish) for s in steps] == [
        ("\n x\n", "stop"),  # the first newline is blank, the second ends the step
        ("ab", "eos"),
        ("abcdef", "length"),
        ("\n\n\n\n\n\n", "length"),  # blank lines never end a step
    ]
    assert [s.num_tokens for s in steps] == [4, 3, 6, 6]
    scripted = torch.log_softmax(torch.tensor([5.0] + [0.0] * (len(tok) - 1)), 0)[0].item()
    assert all(lp == pytest.approx(scripted) for s in steps for lp in s.logprobs)
    assert decoder.batches == [4, 4, 4, 3, 2, 2]  # finished rows are dropped at once
