"""Flat-shaded parts drawn as OpenCV polygons behind the face: shoulders, back of the head (hair), neck, ears."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import cv2
import numpy as np

from kit.synth.appearance import FaceColours
from kit.synth.background import random_colour
from kit.synth.pose import Pose, rotation_matrix
from kit.synth.render import Light

# Hair volume styles: (centre, radii) of the ellipsoid drawn behind the face.
_HAIR_STYLES = (
    ((0.0, 0.26, -0.10), (0.55, 0.63, 0.62)),  # short
    ((0.0, 0.14, -0.13), (0.58, 0.74, 0.64)),  # medium
    ((0.0, -0.05, -0.16), (0.63, 0.92, 0.60)),  # long, down past the jaw
)
Project = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (points (3, N), rotation) -> canvas pixels (2, N)


@lru_cache(maxsize=1)
def _sphere(n: int = 96) -> np.ndarray:
    """Fibonacci points (3, n) on the unit sphere."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    r = np.sqrt(1 - z**2)
    a = np.pi * (1 + 5**0.5) * i
    return np.stack([r * np.cos(a), z, r * np.sin(a)])


def _fill_hull(canvas: np.ndarray, px: np.ndarray, colour: np.ndarray) -> None:
    pts = np.round(px.T * 16).astype(np.int32)
    hull = cv2.convexHull(pts)
    cv2.fillConvexPoly(canvas, hull, [float(c) for c in colour], lineType=cv2.LINE_AA, shift=4)


def draw_body(
    canvas: np.ndarray,
    rng: np.random.Generator,
    project: Project,
    pose: Pose,
    colours: FaceColours,
    light: Light,
) -> None:
    """Draw shoulders, the hair volume, the neck (in front of long hair) and the ears onto ``canvas``.

    Args:
        canvas: (H, W, 3) uint8 render canvas.
        rng: random generator (clothing colour, hair style).
        project: maps head-space points (3, N) under a rotation to canvas pixels (2, N).
        pose: the head pose (the neck and shoulders follow part of its roll and pitch).
        colours: the face's colours (skin, hair, baldness).
        light: the scene light.
    """
    level = light.ambient + 0.6 * light.diffuse  # roughly the brightness of the lit face
    skin, rotation, pitch, roll = colours.skin, pose.rotation, pose.pitch, pose.roll
    body_rot = rotation_matrix(0.0, 0.3 * pitch, 0.6 * roll)
    if rng.random() < 0.85:
        cloth = random_colour(rng) / 255.0 * rng.uniform(0.4, 1.0)
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        torso = np.stack([1.25 * np.cos(t), -1.4 + 0.5 * np.sin(t), -0.15 + 0.3 * np.sin(t)])
        _fill_hull(canvas, project(torso, body_rot), 255.0 * cloth)
    style = rng.integers(len(_HAIR_STYLES))
    centre, radii = (np.array(v)[:, None] for v in _HAIR_STYLES[style])
    scale = rng.uniform(0.97, 1.08, size=(3, 1))
    volume = centre + radii * scale * _sphere()
    volume_colour = skin if colours.bald else colours.hair
    _fill_hull(canvas, project(volume, rotation), 255.0 * volume_colour * level * rng.uniform(0.6, 0.9))
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    neck = np.concatenate(
        [np.stack([0.27 * np.cos(t), np.full_like(t, h), -0.12 + 0.25 * np.sin(t)]) for h in (-0.3, -1.3)],
        axis=1,
    )
    _fill_hull(canvas, project(neck, body_rot), 255.0 * skin * level * rng.uniform(0.5, 0.8))
    if style == 2 and not colours.bald and rng.random() < 0.7:
        return  # long hair covers the ears
    a = np.linspace(0, 2 * np.pi, 14, endpoint=False)
    for side in (-1.0, 1.0):
        normal = rotation @ np.array([side, 0.0, 0.25]) / np.hypot(1.0, 0.25)
        if normal[2] < -0.35:
            continue
        ear = np.stack([side * (0.505 + 0.025 * np.cos(a)), 0.12 * np.sin(a), -0.07 + 0.06 * np.cos(a)])
        lit = light.ambient + light.diffuse * max(0.0, float(normal @ light.direction))
        _fill_hull(canvas, project(ear, rotation), np.clip(255.0 * skin * 0.9 * lit, 0, 255))
