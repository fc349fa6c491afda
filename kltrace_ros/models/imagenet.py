"""ImageNet normalisation, the input space of both tokenizers (the published LPQ and our CellCode)."""
from __future__ import annotations

import torch

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalise(images: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) RGB in [0,1] -> ImageNet-normalised."""
    mean = images.new_tensor(MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(STD).view(1, 3, 1, 1)
    return (images - mean) / std


def denormalise(images: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalise` (not clamped)."""
    mean = images.new_tensor(MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(STD).view(1, 3, 1, 1)
    return images * std + mean
