"""The training augmentation of X-rays held in memory as uint8 tensors, and seeded acquisition changes of them."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from fracture.ml.preprocess import PreprocessSpec, fit_input, to_uint8_tensor
from fracture.recipe import draws_acquisition
from trainer.acquisition import random_acquisition_geometry


class TrainAugment:
    """Augmentation for X-rays: any orientation (the data holds rotated and mirrored views), a
    random crop-and-zoom and exposure/contrast changes; never colour.

    `strong` adds small rotations and wider zoom and exposure ranges; measured on the grouped split
    it under-fits this data in a CPU budget of epochs. `acquisition` draws, per image, from the changes another
    department's machines make (trainer.acquisition: margins, rotations with black corners, gamma, contrast and
    windows, resolution, JPEG, burned-in markers), the family the robustness audit measures; `acquisition-lossy`
    draws its clipping look-up tables and coarse resolutions twice as often.
    """

    def __init__(self, size: int, strength: str = "light", spec: PreprocessSpec | None = None) -> None:
        self.spec = spec  # what makes an input of a decoded source (AcquisitionChange), when sources are given
        strong = strength == "strong"
        self.acquisition = draws_acquisition(strength)
        self.lossy = strength == "acquisition-lossy"
        scale = (0.7, 1.0) if self.acquisition else (0.6, 1.0) if strong else (0.85, 1.0)
        steps: list[object] = [
            v2.RandomResizedCrop(size, scale=scale, ratio=(0.8, 1.25) if strong or self.acquisition
                                 else (0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
        ]
        if strong:
            steps.append(v2.RandomApply([v2.RandomRotation(15)], p=0.5))
        if not self.acquisition:  # acquisition's look-up tables cover exposure and contrast
            steps.append(v2.ColorJitter(brightness=0.3, contrast=0.3) if strong else v2.ColorJitter(0.1, 0.1))
        self.t = v2.Compose(steps)

    def __call__(self, batch_u8: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        return self.with_masks(batch_u8, masks)[0]

    def with_masks(self, batch_u8: torch.Tensor, masks: torch.Tensor | None = None,
                   sources: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The augmented batch and, when given, the fracture-box masks (N,1,S,S) moved exactly as their images
        (crop, flips, turns, the acquisition draw's rotation and margins). With `sources` (the batch's decoded
        images, Prepared.sources), the acquisition draw acts on those and the spec makes the inputs of them."""
        if self.acquisition:
            # numpy draws seeded from torch's generator: a seeded (and resumed) run augments the same way.
            change = AcquisitionChange(int(torch.randint(0, 2**31 - 1, ()).item()), self.spec, self.lossy)
            batch_u8, masks = change.with_masks(batch_u8, masks, sources)
        if masks is None:
            out = torch.stack([self.t(img) for img in batch_u8])
        else:
            pairs = [self.t(img, tv_tensors.Mask(m)) for img, m in zip(batch_u8, masks, strict=True)]
            out = torch.stack([p[0] for p in pairs])
            masks = torch.stack([p[1].as_subclass(torch.Tensor) for p in pairs])
        k = int(torch.randint(0, 4, ()).item())  # quarter turns, shared by the batch (cheap)
        return torch.rot90(out, k, dims=(2, 3)), None if masks is None else torch.rot90(masks, k, dims=(2, 3))


class AcquisitionChange:
    """Each image of a uint8 batch changed by one random draw of trainer.acquisition (no crop, no turn), from its
    own seeded generator: the same copies every time for the same seed and order.

    Given the batch's `sources` (its images as decoded, before the spec's "equalize-full" equalisation: Prepared
    .sources) and the spec, a draw changes the source and fit_input makes the network's input of the result, as a
    department's look-up table, window or JPEG export acts before serving equalises and resizes; else it changes
    the input itself (which is what serving sees for any other spec: its inputs are the decoded image resized)."""

    def __init__(self, seed: int = 0, spec: PreprocessSpec | None = None, lossy: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        self.spec = spec
        self.lossy = lossy

    def __call__(self, batch_u8: torch.Tensor, sources: torch.Tensor | None = None) -> torch.Tensor:
        return self.with_masks(batch_u8, None, sources)[0]

    def with_masks(self, batch_u8: torch.Tensor, masks: torch.Tensor | None = None,
                   sources: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The changed batch and the masks moved by each draw's rotation and margins (not its exposure)."""
        drawn_on, to_input = batch_u8, (lambda im: im)
        if sources is not None:
            spec = self.spec
            if spec is None:
                raise ValueError("changing decoded sources needs the spec that makes inputs of them")
            drawn_on, to_input = sources, (lambda im: fit_input(im, spec))
        images, moved = [], []
        for i, img in enumerate(drawn_on):
            change, geometry = random_acquisition_geometry(self.rng, self.lossy)
            images.append(to_uint8_tensor(to_input(change(Image.fromarray(img[0].numpy())))))
            if masks is not None:
                m = masks[i, 0]
                moved.append(to_uint8_tensor(geometry(Image.fromarray(m.numpy()))) if bool(m.any()) else m[None])
        return torch.stack(images), None if masks is None else torch.stack(moved)
