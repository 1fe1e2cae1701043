"""What the epochs move on and last.pt saves: made before the first epoch, resumed from last.pt, saved after each.

The one-cycle schedule is rebuilt here too, when --max-minutes shortens a run after its first epoch.
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from trainer.prepared_data import Prepared

LogCallback = Callable[[str], None]


@dataclass
class TrainingState:
    """What the epochs move on and last.pt saves: the network, its weights' moving average, the optimiser and its
    schedule, the batches' generator, the history, the best epoch so far, and the epochs done out of how many."""

    model: nn.Module
    ema: AveragedModel | None
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    gen: torch.Generator
    steps_per_epoch: int
    epochs: int
    history: dict[str, list[float]]
    best: dict[str, Any]
    epoch: int = 0

    @property
    def served(self) -> nn.Module:
        """The network that is evaluated and shipped: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.model


def start_training(args: argparse.Namespace, model: nn.Module, data: Prepared, gen: torch.Generator) -> TrainingState:
    """Set up the optimiser, its one-cycle schedule and the weights' moving average, before the first epoch."""
    epochs = 1 if args.dry_run else args.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(data.split_index["train"]) / args.batch_size))
    sched = rescheduled(opt, args.lr, epochs, steps_per_epoch, done=0)
    history: dict[str, list[float]] = {k: [] for k in
                                       ("train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "epoch_s")}
    best: dict[str, Any] = {"auc": -1.0, "loss": math.inf, "epoch": 0, "state": None}
    # An exponential moving average of the weights (batch-norm statistics included) is steadier
    # than the raw weights on this small, noisy data; it is what gets evaluated and shipped.
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True) if args.ema else None
    return TrainingState(model, ema, opt, sched, gen, steps_per_epoch, epochs, history, best)


def resume(state: TrainingState, last: Path, say: LogCallback) -> None:
    """Continue from last.pt: weights, their average, optimiser, schedule, history, best epoch, generators."""
    saved = torch.load(last, weights_only=True)
    state.model.load_state_dict(saved["model"])
    if state.ema is not None and saved.get("ema"):
        state.ema.load_state_dict(saved["ema"])
    state.opt.load_state_dict(saved["opt"])
    state.sched.load_state_dict(saved["sched"])
    state.history, state.best, state.epoch = saved["history"], saved["best"], saved["epoch"]
    state.epochs = saved.get("epochs", state.epochs)
    state.gen.set_state(saved["gen"])
    torch.set_rng_state(saved["torch_rng"])
    say(f"resumed after epoch {state.epoch}")


def save_last(state: TrainingState, last: Path) -> None:
    """Save to last.pt what --resume needs to continue after this epoch."""
    torch.save({"model": state.model.state_dict(), "ema": state.ema.state_dict() if state.ema is not None else None,
                "opt": state.opt.state_dict(), "sched": state.sched.state_dict(),
                "history": state.history, "best": state.best, "epoch": state.epoch, "epochs": state.epochs,
                "gen": state.gen.get_state(), "torch_rng": torch.get_rng_state()}, last)


def weights_of(module: nn.Module) -> dict[str, torch.Tensor]:
    """Copy a module's weights and buffers, detached (an epoch kept while training goes on)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def rescheduled(opt: torch.optim.Optimizer, lr: float, epochs: int, steps_per_epoch: int,
                done: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The one-cycle schedule of `epochs` epochs, advanced past the `done` epochs already trained (--max-minutes
    shortens a run's schedule after its first epoch)."""
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    with warnings.catch_warnings():  # the optimizer's steps were taken already: only the schedule moves on
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(done * steps_per_epoch):
            sched.step()
    return sched
