"""LoRA through PEFT, for policies too large to fine-tune whole on the machine at hand."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from ..errors import PonderError


@contextmanager
def lora_adapters(policy, r: int, alpha: int | None = None) -> Iterator[None]:
    """Within the block, ``policy.model`` trains low-rank adapters (W + B A, rank ``r``) on every linear
    layer of the transformer instead of its full weights; on leaving, the adapters are merged into the
    weights, so the policy is again an ordinary model that samples fast and saves as a model folder.
    ``r = 0`` leaves the model as it is (full fine-tuning)."""
    if r <= 0:
        yield
        return
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise PonderError("--lora-r needs PEFT: pip install peft") from None
    wrapped = get_peft_model(policy.model, LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=0.0,
                                                      target_modules="all-linear"))
    policy.model = wrapped
    try:
        yield
    finally:
        policy.model = wrapped.merge_and_unload().eval()
