"""Language-model backends behind one protocol: local transformers (tiny, folders, GGUF, smollm2) and
OpenAI-compatible servers (``openai:http://HOST:PORT/v1``: vLLM, SGLang, llama.cpp)."""

from __future__ import annotations

from .base import Policy, SamplingParams, Samples, Step
from .hf import HFPolicy, load_hf


def load_policy(spec: str, device: str | None = None, dtype: str = "auto", seed: int = 0) -> Policy:
    """A model by spec: a model folder, a ``.gguf`` file, ``smollm2``, or a server ``openai:http://HOST:PORT/v1``
    (``device`` and ``dtype`` are the server's business then)."""
    from .server import ServerPolicy, is_server_spec

    if is_server_spec(spec):
        return ServerPolicy(spec, seed=seed)
    return load_hf(spec, device=device, dtype=dtype, seed=seed)


__all__ = ["HFPolicy", "Policy", "SamplingParams", "Samples", "Step", "load_policy"]
