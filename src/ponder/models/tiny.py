"""The embedded default: a small Llama-architecture model with a character-level tokenizer.

Both are ordinary Hugging Face objects (``LlamaConfig`` + ``LlamaForCausalLM``, a ``tokenizers``
tokenizer wrapped in ``PreTrainedTokenizerFast``), so a trained tiny model is saved and loaded as a
normal model folder (config.json, model.safetensors, tokenizer.json) and every backend path that
works for it works for any local transformers model.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from ..config import option

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARS = "\n" + "".join(c for c in string.printable if c not in "\t\n\r\x0b\x0c")


def char_tokenizer():
    """A character-level tokenizer over printable ASCII; ``<bos>`` is prepended to every encoding."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(CHARS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


@dataclass
class TinyConfig:
    """Shape of the from-scratch model (about 0.85M parameters by default). At width 256 / MLP 768
    (3.4M) the demo's bootstrap learns no better (loss 0.23 at step 750 either way, the same iteration-0
    solve rates) at 3.5x the compute; see BENCHMARKS.md."""

    hidden_size: int = option(128, "width of the residual stream")
    num_layers: int = option(4, "transformer blocks")
    num_heads: int = option(4, "attention heads")
    intermediate_size: int = option(384, "MLP width")
    max_positions: int = option(256, "longest sequence (prompt + trace) in tokens")


def fast_tiny() -> TinyConfig:
    """The fast rollout model's shape (preset "fast"): 2 blocks of width 64 (about 0.11M parameters, 1/7.6 of the
    default's forward FLOPs per token), distilled from the policy by ``ponder improve --rollout-model distill``."""
    return TinyConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=192)


#: named shapes of the tiny model: the policy's default and the fast rollout model's
TINY_PRESETS = {"default": TinyConfig, "fast": fast_tiny}


def tiny_model(cfg: TinyConfig | None = None, seed: int = 0, device: str | None = None):
    """A freshly initialised ``(LlamaForCausalLM, tokenizer)`` pair on ``device`` (default: cuda if available)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = cfg or TinyConfig()
    tok = char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    from .base import default_device

    return LlamaForCausalLM(config).to(default_device(device)), tok
