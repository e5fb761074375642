"""What every landmark model offers the training loop, whatever its outputs are."""

from __future__ import annotations

import torch
from torch import nn


class LandmarkModel(nn.Module):
    """Base class: ``forward`` gives raw outputs; ``decode`` and ``loss`` give coordinates in input pixels.

    Subclasses set ``self.backbone`` (the pretrained part, trained at a lower learning rate and optionally frozen)
    and ``self.head``.
    """

    n_points: int
    input_size: int
    # Normalisation of the pretrained backbone, applied on the device to uint8 input.
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def decode(self, outputs: torch.Tensor) -> torch.Tensor:
        """Raw outputs -> (B, P, 2) coordinates in input-crop pixels."""
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, target: torch.Tensor, progress: float) -> torch.Tensor:
        """Training loss against (B, P, 2) target coordinates; ``progress`` in [0, 1] is the training fraction."""
        raise NotImplementedError

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        backbone = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if id(p) not in backbone]

    def set_mean_shape(self, mean_points: torch.Tensor) -> None:
        """Initialise the output at the mean training shape (input pixels, (P, 2)); optional per family."""
