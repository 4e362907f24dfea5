"""Shared fixtures: offline Hugging Face, two torch threads, one small untrained tiny model per session."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

#: the shape every test model uses: big enough to be a real Llama, small enough to run in milliseconds
SMALL = dict(hidden_size=64, num_layers=1, num_heads=4, intermediate_size=128, max_positions=256)


def small_tiny_model(seed: int = 0, **overrides):
    from ponder.models.tiny import TinyConfig, tiny_model

    return tiny_model(TinyConfig(**{**SMALL, **overrides}), seed=seed)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """An untrained small tiny model saved as an ordinary model folder (shared; do not write into it)."""
    from ponder.train import save_checkpoint

    model, tok = small_tiny_model()
    path = tmp_path_factory.mktemp("models") / "tiny"
    save_checkpoint(model, tok, path)
    return path
