"""Full-resolution finishing: occluders over the face, photometric changes, blur, noise, greyscale, JPEG."""

from __future__ import annotations

import cv2
import numpy as np

from kit.synth.background import noise_crop, random_colour


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(p[0] * 16)), int(round(p[1] * 16))


def add_occluders(
    rng: np.random.Generator,
    img: np.ndarray,
    eyes: tuple[np.ndarray, np.ndarray],
    lower_face: np.ndarray,
    brows: np.ndarray,
    skin: np.ndarray,
    hair: np.ndarray,
) -> None:
    """Draw occluders on a fraction of images, in place: glasses, a hand-like blob, an object, a lock of hair, text.

    Args:
        rng: random generator.
        img: (H, W, 3) uint8 image.
        eyes: pixel centres (2,) of the left and right eye.
        lower_face: pixel points (2, n) on the lower face (jaw, lips), where hands and objects go.
        brows: pixel points (2, n) of both brows, where locks of hair fall to.
        skin: skin colour, BGR in [0, 1].
        hair: hair colour, BGR in [0, 1].
    """
    left, right = eyes
    span = max(float(np.hypot(*(right - left))), 4.0)
    angle = float(np.degrees(np.arctan2(right[1] - left[1], right[0] - left[0])))
    u = rng.random(5)
    if u[0] < 0.1:
        _glasses(rng, img, left, right, span, angle)
    if u[1] < 0.06:
        c = lower_face[:, rng.integers(lower_face.shape[1])] + rng.normal(0, 0.25 * span, 2)
        axes = (int(16 * span * rng.uniform(0.35, 0.6)), int(16 * span * rng.uniform(0.6, 1.1)))
        colour = [float(v) for v in 255 * skin * rng.uniform(0.6, 1.0)]
        cv2.ellipse(img, _pt(c), axes, rng.uniform(0, 180), 0, 360, colour, -1, cv2.LINE_AA, 4)
    if u[2] < 0.05:
        c = lower_face[:, rng.integers(lower_face.shape[1])] + rng.normal(0, 0.4 * span, 2)
        size = span * rng.uniform(0.4, 1.6, 2)
        box = cv2.boxPoints(((float(c[0]), float(c[1])), (float(size[0]), float(size[1])), rng.uniform(0, 180)))
        cv2.fillConvexPoly(
            img, np.round(box * 16).astype(np.int32), [float(v) for v in random_colour(rng)], cv2.LINE_AA, 4
        )
    if u[3] < 0.07:
        tip = brows[:, rng.integers(brows.shape[1])] + np.array([0.0, rng.uniform(-0.3, 0.2) * span])
        top = tip + np.array([rng.normal(0, 0.6), -2.0]) * span
        wide = rng.uniform(0.2, 0.8) * span
        poly = np.array([top - [wide * 1.5, 0], top + [wide * 1.5, 0], tip + [wide * 0.3, 0], tip - [wide * 0.3, 0]])
        colour = [float(v) for v in 255 * hair * rng.uniform(0.7, 1.1)]
        cv2.fillConvexPoly(img, np.round(poly * 16).astype(np.int32), colour, cv2.LINE_AA, 4)
    if u[4] < 0.03:
        h, w = img.shape[:2]
        text = "".join(rng.choice(list("ABCDEFGHJKLMNPRSTUVWXYZ0123456789"), size=int(rng.integers(3, 10))))
        org = (int(rng.integers(0, w // 2)), int(rng.integers(h // 8, h)))
        colour = (255.0, 255.0, 255.0) if rng.random() < 0.5 else (0.0, 0.0, 0.0)
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, rng.uniform(0.3, 0.9), colour, 1, cv2.LINE_AA)


def _glasses(
    rng: np.random.Generator, img: np.ndarray, left: np.ndarray, right: np.ndarray, span: float, angle: float
) -> None:
    axes = (int(16 * span * rng.uniform(0.36, 0.46)), int(16 * span * rng.uniform(0.24, 0.34)))
    frame = [float(v) for v in (rng.uniform(0, 60, 3) if rng.random() < 0.7 else rng.uniform(100, 200, 3))]
    thick = int(rng.integers(1, 3 + int(span > 60)))
    if rng.random() < 0.25:  # sunglasses: dark tinted lenses
        overlay = img.copy()
        for c in (left, right):
            cv2.ellipse(overlay, _pt(c), axes, angle, 0, 360, (20.0, 20.0, 25.0), -1, cv2.LINE_AA, 4)
        alpha = rng.uniform(0.6, 0.95)
        cv2.addWeighted(overlay, alpha, img, 1 - alpha, 0, dst=img)
    for c in (left, right):
        cv2.ellipse(img, _pt(c), axes, angle, 0, 360, frame, thick, cv2.LINE_AA, 4)
    d = (right - left) / span
    rx = axes[0] / 16.0
    cv2.line(img, _pt(left + d * rx), _pt(right - d * rx), frame, thick, cv2.LINE_AA, 4)
    for c, s in ((left, -1.0), (right, 1.0)):
        cv2.line(img, _pt(c + s * d * rx), _pt(c + s * d * (rx + 0.5 * span)), frame, thick, cv2.LINE_AA, 4)


def degrade(rng: np.random.Generator, img: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Camera and web-photo degradations: exposure, colour cast, resolution loss, blur, noise, greyscale."""
    h, w = img.shape[:2]
    if rng.random() < 0.7:
        img = cv2.convertScaleAbs(img, alpha=rng.uniform(0.75, 1.25), beta=rng.uniform(-30, 30))
    if rng.random() < 0.3:
        img = cv2.multiply(img, (*rng.uniform(0.85, 1.15, 3).tolist(), 0.0))
    if rng.random() < 0.15:
        f = rng.uniform(0.4, 0.8)
        small = cv2.resize(img, (max(8, int(w * f)), max(8, int(h * f))), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.35:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.5))
    if rng.random() < 0.6:
        gain = rng.uniform(0.05, 0.35)
        img = cv2.addWeighted(img, 1.0, noise_crop(rng, noise, h, w), gain, -128.0 * gain)
    if rng.random() < 0.04:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return img


def encode_jpeg(rng: np.random.Generator, img: np.ndarray) -> bytes:
    """JPEG bytes at a random quality in 50..95."""
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(50, 96))])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()
