"""The training batches of an epoch, augmented in this process or in parallel worker processes.

Augmentation (crops, flips, the acquisition changes: PIL per image) runs on the CPU. In this process it runs between
the optimiser's steps, so a GPU waits for it: a 15-minute H200 lease spent most of each epoch on one CPU core of
augmentation (fracture/release/robustness.md). With `workers` > 0 a torch DataLoader augments the coming batches in
that many processes while the network trains on the current one. Each batch then draws its augmentation from a seed
of its own, taken from the run's generator at the epoch's start, so a run is the same whatever the number of workers
(and resumes the same); it differs from a run with no workers, whose batches draw from one stream in turn.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fracture.ml.preprocess import PreprocessSpec
from trainer.augmentation import TrainAugment
from trainer.prepared_data import Prepared

# (the batch's row numbers, its augmented uint8 images, their augmented box masks or None)
Batch = tuple[np.ndarray, torch.Tensor, torch.Tensor | None]


def _masks(data: Prepared, spec: PreprocessSpec, batch: np.ndarray, box_weight: float) -> torch.Tensor | None:
    """The fracture-box masks of a batch's images (zeros where an image has none), when boxes teach the network."""
    if data.box_index is None or data.box_masks is None or box_weight <= 0:
        return None
    which = data.box_index[batch]
    masks = torch.zeros((len(batch), 1, spec.image_size, spec.image_size), dtype=torch.uint8)
    masks[which >= 0] = data.box_masks[which[which >= 0]]
    return masks


def _augment(data: Prepared, spec: PreprocessSpec, augment: TrainAugment, batch: np.ndarray,
             box_weight: float) -> Batch:
    sources = None if data.sources is None else data.sources[batch]
    images, masks = augment.with_masks(data.images[batch], _masks(data, spec, batch, box_weight), sources)
    return batch, images, masks


class _SeededBatches(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Batch i of the epoch, augmented from seed i (in whichever worker process gets it)."""

    def __init__(self, data: Prepared, spec: PreprocessSpec, augment: TrainAugment, steps: list[np.ndarray],
                 seeds: list[int], box_weight: float) -> None:
        self.data, self.spec, self.augment, self.steps, self.seeds = data, spec, augment, steps, seeds
        self.box_weight = box_weight

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        torch.manual_seed(self.seeds[i])  # this worker's own generator: the draw depends on the batch alone
        batch, images, masks = _augment(self.data, self.spec, self.augment, self.steps[i], self.box_weight)
        # A DataLoader passes tensors between processes; no masks travel as an empty tensor.
        return torch.from_numpy(batch), images, torch.empty(0) if masks is None else masks


def augmented_batches(data: Prepared, spec: PreprocessSpec, augment: TrainAugment, rows: np.ndarray,
                      steps: list[np.ndarray], gen: torch.Generator, box_weight: float, workers: int,
                      pin_memory: bool = False) -> Iterator[Batch]:
    """The epoch's batches (`steps`: positions in `rows`; a batch of one is skipped, as batch norm needs two), in
    order, each augmented with its box masks: in this process when `workers` is 0, else in `workers` processes."""
    steps = [rows[idx] for idx in steps if len(idx) >= 2]
    if workers <= 0:
        for batch in steps:
            yield _augment(data, spec, augment, batch, box_weight)
        return
    seeds = torch.randint(0, 2**62, (len(steps),), generator=gen).tolist()
    loader = DataLoader(_SeededBatches(data, spec, augment, steps, seeds, box_weight), batch_size=None,
                        shuffle=False, num_workers=workers, prefetch_factor=4, pin_memory=pin_memory)
    for batch, images, masks in loader:
        yield batch.numpy(), images, masks if masks.numel() else None
