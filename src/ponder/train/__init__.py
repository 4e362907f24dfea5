"""Training: supervised (bootstrap and rejection-sampling fine-tuning); losses as small functions."""

from .losses import lm_loss
from .sft import SFTConfig, save_checkpoint, train_sft

__all__ = ["SFTConfig", "lm_loss", "save_checkpoint", "train_sft"]
