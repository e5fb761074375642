"""Face crop and resize to the model input, and its exact inverse back to original pixels.

Convention: pixel centres sit at integer coordinates, as in landmarks.csv and ``cv2.warpAffine``. Images and
points are moved by the same 2x3 affine matrix, so a crop is consistent to the sub-pixel.
"""

from __future__ import annotations

import cv2
import numpy as np


def crop_transform(height: int, width: int, size: int, margin: float = 0.0) -> np.ndarray:
    """Affine (2, 3) matrix from original pixels to a ``size`` x ``size`` crop.

    The crop is the square centred on the image, with side = shorter side x (1 + 2 x margin): margin > 0 keeps
    a border around the image (points near the edge stay in view), margin < 0 zooms in. Faces in this
    competition are detector crops, roughly centred, so the image frame is the face box.
    """
    side = min(height, width) * (1.0 + 2.0 * margin)
    if side <= 0:
        raise ValueError(f"crop side must be positive, got margin={margin}")
    scale = size / side
    x0 = (width - side) / 2.0
    y0 = (height - side) / 2.0
    # Map pixel-edge coordinates: (x + 0.5 - x0) * scale = x' + 0.5.
    return np.array([[scale, 0.0, scale * (0.5 - x0) - 0.5], [0.0, scale, scale * (0.5 - y0) - 0.5]], dtype=np.float64)


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) or batched (B, 2, 3) affine matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    linear, shift = matrix[..., :2], matrix[..., 2:]
    inv_linear = np.linalg.inv(linear)
    return np.concatenate([inv_linear, -inv_linear @ shift], axis=-1)


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) matrix to points (..., P, 2), or (B, 2, 3) matrices to (B, P, 2) points."""
    points = np.asarray(points, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    linear, shift = matrix[..., :2], matrix[..., 2]
    return points @ np.swapaxes(linear, -1, -2) + shift[..., None, :]


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The matrix of ``outer(inner(x))``."""
    outer3 = np.vstack([outer, [0.0, 0.0, 1.0]])
    inner3 = np.vstack([inner, [0.0, 0.0, 1.0]])
    return (outer3 @ inner3)[:2]


def warp_image(image: np.ndarray, matrix: np.ndarray, size: int, border_value: int = 0) -> np.ndarray:
    """Warp an image with the (2, 3) matrix into a ``size`` x ``size`` crop (bilinear, area-aware when shrinking)."""
    scale = float(np.sqrt(abs(np.linalg.det(np.asarray(matrix)[:, :2]))))
    if scale < 0.5:
        # Downscale by an integer factor with area averaging first, to avoid aliasing from bilinear sampling.
        factor = int(1.0 / scale)
        h, w = image.shape[:2]
        small = cv2.resize(image, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
        fx, fy = small.shape[1] / w, small.shape[0] / h
        # The area resize maps pixel edges: x_small + 0.5 = (x + 0.5) * f.
        pre = np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5]])
        matrix = compose_affine(matrix, invert_affine(pre))
        image = small
    return cv2.warpAffine(
        image,
        np.asarray(matrix, dtype=np.float64),
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(border_value,) * 3,
    )
