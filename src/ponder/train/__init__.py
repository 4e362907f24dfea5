"""Training: supervised (bootstrap and rejection-sampling fine-tuning), step-level DPO, and the learned
critics (value head, PRM, ORM); losses as small functions; trees -> training data."""

from .losses import dpo_loss, lm_loss, soft_bce_loss, value_loss
from .sft import SFTConfig, fp32_master_weights, save_checkpoint, train_sft

__all__ = ["SFTConfig", "dpo_loss", "fp32_master_weights", "lm_loss", "save_checkpoint", "soft_bce_loss", "train_sft", "value_loss"]
