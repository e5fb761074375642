"""Training geometry with albumentations in DataLoader workers, keeping every point in order, plus a flip that swaps
identities. The photometric step runs later, on the device, on the whole batch (``kit.data.photometric``).

albumentations drops points that leave the frame by default (``remove_invisible=True``), which would break the
fixed point order: it is turned off. Its ``HorizontalFlip`` mirrors coordinates but cannot swap left/right point
identities, so the flip is done here with the data's flip permutation. ``kit.data.gpu_augment`` samples the same
geometry on the device (``augment.gpu``).
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from kit.config import AugmentConfig  # noqa: E402
from kit.data.flip import flip_points  # noqa: E402


def build_geometry(cfg: AugmentConfig, size: int, side: int) -> A.Compose:
    """Random zoom, rotation and shift of the padded ``side`` crop, then an exact centre crop to ``size``.

    albumentations' Affine turns and zooms about the crop centre ``(side - 1) / 2``; ``translate_percent`` is a
    fraction of the side it sees (the padded one, hence the ``size / side``) and is truncated to whole pixels; x and
    y zoom are drawn apart unless ``keep_ratio``.
    """
    geometric = []
    if cfg.scale or cfg.rotate or cfg.shift:
        geometric.append(
            A.Affine(
                scale=(1 - cfg.scale, 1 + cfg.scale),
                keep_ratio=True,
                rotate=(-cfg.rotate, cfg.rotate),
                translate_percent=(-cfg.shift * size / side, cfg.shift * size / side),
                interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                p=1.0,
            )
        )
    return A.Compose(
        [*geometric, A.CenterCrop(size, size)],
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
