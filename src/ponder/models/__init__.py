"""Language-model backends behind one protocol: local transformers (tiny, folders, GGUF, smollm2)."""

from __future__ import annotations

from .base import Policy, SamplingParams, Samples, Step
from .hf import HFPolicy, load_hf


def load_policy(spec: str, device: str | None = None, dtype: str = "auto", seed: int = 0) -> Policy:
    """A model by spec: a model folder, a ``.gguf`` file, or ``smollm2``."""
    return load_hf(spec, device=device, dtype=dtype, seed=seed)


__all__ = ["HFPolicy", "Policy", "SamplingParams", "Samples", "Step", "load_policy"]
