"""Data-parallel training under ``accelerate launch`` (or ``torchrun``): one training loop for 1 or N processes.

One process (no ``WORLD_SIZE`` above 1): nothing changes and accelerate is not touched. N processes: an
``accelerate.Accelerator`` wraps the model in DistributedDataParallel; every process takes its share of
each global batch (``share``), the gradients are averaged across processes before every optimizer step,
losses are logged as their mean over processes, and only the main process writes files. The global
batch size and the data order are those of a single process, so ``--set sft.batch_size=64`` means 64
sequences per step however many processes share them.

    accelerate launch --multi_gpu --num_processes 8 -m ponder.cli train --task game24 --out m --steps 900
"""

from __future__ import annotations

import os
from typing import Sequence, TypeVar

import torch

T = TypeVar("T")


def is_main_process() -> bool:
    """True outside a launched run and on its rank 0: the process that writes files."""
    return int(os.environ.get("RANK", "0")) == 0


def use_local_gpu() -> None:
    """Under a launcher, put this process on its own GPU (``LOCAL_RANK``) before any model loads."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


class Parallel:
    """The current process's place in a data-parallel run (rank 0 of 1 outside one)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.acc = None
        self.rank = 0
        if self.world > 1:
            from accelerate import Accelerator

            # cpu=True is what makes accelerate use gloo across processes on a machine without GPUs
            self.acc = Accelerator(cpu=not torch.cuda.is_available())
            self.rank = self.acc.process_index
            if self.acc.num_processes != self.world:
                raise RuntimeError(f"accelerate sees {self.acc.num_processes} processes, WORLD_SIZE says {self.world}")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def prepare(self, model, optimizer):
        """``(model to call, optimizer)``: DDP-wrapped under N processes (the wrapped model still has
        ``config`` and ``device``); the caller's model object shares the trained parameters either way."""
        if self.acc is None:
            return model, optimizer
        net, optimizer = self.acc.prepare(model, optimizer)
        if not hasattr(net, "config"):
            net.config = model.config
        return net, optimizer

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's part of a global batch (every process gets at least one item: a batch smaller
        than the number of processes repeats its first item, to be weighted 0 with ``counts``)."""
        mine = list(items[self.rank :: self.world])
        return mine or list(items[:1])

    def counts(self, items: Sequence) -> bool:
        """Whether this process's share of ``items`` is real data (False for a stand-in item)."""
        return self.rank < len(items)

    def backward(self, loss: torch.Tensor) -> None:
        if self.acc is None:
            loss.backward()
        else:
            self.acc.backward(loss)

    def mean(self, value: float) -> float:
        """The mean of a number over the processes (every process gets the same result)."""
        if self.acc is None:
            return value
        t = torch.tensor([float(value)], device=self.acc.device)
        return self.acc.reduce(t, "mean").item()

    def wait(self) -> None:
        if self.acc is not None:
            self.acc.wait_for_everyone()
