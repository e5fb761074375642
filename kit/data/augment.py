"""Training augmentation with albumentations, keeping every point in order, plus a flip that swaps identities.

albumentations drops points that leave the frame by default (``remove_invisible=True``), which would break the
fixed point order: it is turned off. Its ``HorizontalFlip`` mirrors coordinates but cannot swap left/right point
identities, so the flip is done here with the data's flip permutation.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from kit.config import AugmentConfig  # noqa: E402
from kit.data.flip import flip_points  # noqa: E402


def build_augment(cfg: AugmentConfig, size: int, side: int) -> A.Compose:
    """Random geometry on the padded ``side`` crop, an exact centre crop to ``size``, then photometric noise."""
    geometric = []
    if cfg.scale or cfg.rotate or cfg.shift:
        geometric.append(
            A.Affine(
                scale=(1 - cfg.scale, 1 + cfg.scale),
                rotate=(-cfg.rotate, cfg.rotate),
                translate_percent=(-cfg.shift * size / side, cfg.shift * size / side),
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=1.0,
            )
        )
    photometric = [
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=cfg.color),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 7))], p=cfg.blur),
        A.GaussNoise(std_range=(0.02, 0.08), p=cfg.noise),
        A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.1, 0.3), hole_width_range=(0.1, 0.3),
                        fill="random", p=cfg.cutout),
    ]
    return A.Compose(
        [*geometric, A.CenterCrop(size, size), *photometric],
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
    )


def hflip(image: np.ndarray, points: np.ndarray, perm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror an (H, W, C) image and its (P, 2) points; point i of the result is the mirror of point perm[i]."""
    flipped = flip_points(points, image.shape[1], perm).astype(np.float32)
    return np.ascontiguousarray(image[:, ::-1]), flipped


def center_crop(image: np.ndarray, points: np.ndarray | None, size: int, pad: int):
    """The un-augmented model input from a padded cache crop (an exact integer shift)."""
    crop = image[pad : pad + size, pad : pad + size]
    return crop, (None if points is None else points - pad)
