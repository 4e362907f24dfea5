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


def load_rollout_policy(spec: str, device: str | None = None, dtype: str = "auto", seed: int = 0) -> Policy:
    """The model of ``--rollout-model SPEC`` (any ``load_policy`` spec), whose errors name the option. The env
    hands it text and renders its prompts with its own ``render``, so its tokenizer may differ from the
    policy's (``SearchEnv`` checks that it reads the text as written)."""
    from ..errors import PonderError

    if spec == "distill":
        raise PonderError("--rollout-model distill trains the rollout model inside ponder improve; here give a model "
                          "folder, a .gguf file, smollm2 or a server openai:http://HOST:PORT/v1")
    try:
        return load_policy(spec, device=device, dtype=dtype, seed=seed)
    except PonderError as e:
        raise PonderError(f"--rollout-model {spec}: {e}") from None


__all__ = ["HFPolicy", "Policy", "SamplingParams", "Samples", "Step", "load_policy", "load_rollout_policy"]
