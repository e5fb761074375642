"""Backgrounds: smooth gradients, colour blobs or textures, with clutter shapes on top."""

from __future__ import annotations

import cv2
import numpy as np

NOISE_SIZE = 512


def noise_bank(seed: int) -> np.ndarray:
    """A (NOISE_SIZE, NOISE_SIZE, 3) uint8 image of Gaussian noise around 128 (std 32), cropped from per image."""
    rng = np.random.default_rng([seed, 0x5EED])
    return np.clip(rng.normal(128.0, 32.0, (NOISE_SIZE, NOISE_SIZE, 3)), 0, 255).astype(np.uint8)


def noise_crop(rng: np.random.Generator, noise: np.ndarray, h: int, w: int) -> np.ndarray:
    """A random (h, w, 3) window of the noise bank (h, w <= NOISE_SIZE)."""
    y = rng.integers(0, NOISE_SIZE - h + 1)
    x = rng.integers(0, NOISE_SIZE - w + 1)
    return noise[y : y + h, x : x + w]


def random_colour(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """A BGR colour (3,) in 0..255, or n of them (n, 3), often desaturated like indoor and outdoor scenes."""
    c = rng.uniform(0, 255, (1 if n is None else n, 3))
    grey = c.mean(axis=1, keepdims=True)
    c = grey + (c - grey) * rng.uniform(0.0, 1.0, (len(c), 1)) ** 2
    return c[0] if n is None else c


def draw_background(rng: np.random.Generator, h: int, w: int, noise: np.ndarray) -> np.ndarray:
    """A random (h, w, 3) uint8 background."""
    kind = rng.random()
    if kind < 0.35:
        small = random_colour(rng, 4).reshape(2, 2, 3)
        img = cv2.resize(small.astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    elif kind < 0.75:
        k = int(rng.integers(3, 8))
        small = random_colour(rng, k * k).reshape(k, k, 3)
        img = cv2.resize(small.astype(np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    else:
        k = int(rng.integers(6, 48))
        patch = noise_crop(rng, noise, k, k).astype(np.float32) - 128.0
        base = random_colour(rng).astype(np.float32)
        tex = base + patch * rng.uniform(0.3, 1.5) * rng.uniform(0.5, 1.0, 3).astype(np.float32)
        img = cv2.resize(np.clip(tex, 0, 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.3:
        grain = noise_crop(rng, noise, h, w)
        gain = rng.uniform(0.05, 0.3)
        img = cv2.addWeighted(img, 1.0, grain, gain, -128.0 * gain)
    for _ in range(int(rng.integers(0, 8))):
        _clutter(rng, img)
    return img


def _clutter(rng: np.random.Generator, img: np.ndarray) -> None:
    h, w = img.shape[:2]
    colour = [float(c) for c in random_colour(rng)]
    x, y = int(rng.integers(-w // 4, w + w // 4)), int(rng.integers(-h // 4, h + h // 4))
    size = int(rng.uniform(0.05, 0.6) * max(h, w)) + 1
    thick = -1 if rng.random() < 0.6 else int(rng.integers(1, 6))
    shape = rng.random()
    if shape < 0.35:
        cv2.rectangle(img, (x, y), (x + size, y + int(size * rng.uniform(0.2, 3.0))), colour, thick, cv2.LINE_AA)
    elif shape < 0.6:
        cv2.circle(img, (x, y), size // 2, colour, thick, cv2.LINE_AA)
    elif shape < 0.8:
        x2, y2 = int(rng.integers(0, w)), int(rng.integers(0, h))
        cv2.line(img, (x, y), (x2, y2), colour, max(1, thick), cv2.LINE_AA)
    else:
        pts = np.array([x, y]) + rng.integers(-size, size + 1, size=(int(rng.integers(3, 7)), 2))
        cv2.fillPoly(img, [pts.astype(np.int32)], colour, cv2.LINE_AA)
