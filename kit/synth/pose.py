"""Head pose, camera projection and face-detector-like placement in the image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_YAW, MAX_PITCH, MAX_ROLL = 45.0, 25.0, 30.0


@dataclass(frozen=True)
class Pose:
    """Head rotation (degrees) and camera distance (face units; smaller = stronger perspective)."""

    yaw: float
    pitch: float
    roll: float
    distance: float

    @property
    def rotation(self) -> np.ndarray:
        return rotation_matrix(self.yaw, self.pitch, self.roll)


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation (3, 3) applied as ``R @ p``: yaw about y (positive turns the face to the viewer's right), pitch
    about x (positive looks up), roll about the view axis (positive tilts counter-clockwise on screen)."""
    a, b, c = np.radians([yaw, pitch, roll])
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), np.sin(b)], [0, -np.sin(b), np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ rx @ ry


def sample_pose(rng: np.random.Generator) -> Pose:
    """A random head pose: mostly near-frontal, symmetric in yaw, pitch and roll, tails to the limits."""
    u = rng.random(3)
    yaw = rng.uniform(-MAX_YAW, MAX_YAW) if u[0] < 0.35 else rng.normal(0.0, 14.0)
    pitch = rng.uniform(-MAX_PITCH, MAX_PITCH) if u[1] < 0.15 else rng.normal(0.0, 9.0)
    roll = rng.uniform(-MAX_ROLL, MAX_ROLL) if u[2] < 0.15 else rng.normal(0.0, 8.0)
    return Pose(
        yaw=float(np.clip(yaw, -MAX_YAW, MAX_YAW)),
        pitch=float(np.clip(pitch, -MAX_PITCH, MAX_PITCH)),
        roll=float(np.clip(roll, -MAX_ROLL, MAX_ROLL)),
        distance=float(np.exp(rng.uniform(np.log(3.0), np.log(20.0)))),
    )


def rotate(points: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """``rotation @ points`` for planar points (3, N), without BLAS."""
    return np.einsum("ij,jn->in", rotation.astype(points.dtype), points)


def project(points: np.ndarray, rotation: np.ndarray, distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate head points (3, N) and project them with a pinhole camera ``distance`` away on the z axis.

    Returns:
        Image-plane points (2, N) (x right, y up, face units at the head centre's depth) and depths (N,) in camera
        space (larger is nearer).
    """
    cam = rotate(points, rotation)
    scale = distance / (distance - cam[2])
    return cam[:2] * scale, cam[2]


@dataclass(frozen=True)
class Placement:
    """Maps image-plane face units to output pixels: ``u = cx + s * x``, ``v = cy - s * y``."""

    width: int
    height: int
    scale: float
    cx: float
    cy: float

    def to_pixels(self, xy: np.ndarray) -> np.ndarray:
        """Output pixel coordinates (2, N) of image-plane points (2, N)."""
        return np.stack([self.cx + self.scale * xy[0], self.cy - self.scale * xy[1]])


def sample_placement(rng: np.random.Generator, box_points: np.ndarray) -> Placement:
    """Image size and face placement like a face-detector crop.

    Args:
        rng: random generator.
        box_points: image-plane points (2, N) whose bounding box plays the detector box (brows to chin).
    """
    side = np.exp(rng.uniform(np.log(160), np.log(400)))
    aspect = np.exp(np.clip(rng.normal(0.0, 0.1), -0.22, 0.22))
    width, height = int(round(side * np.sqrt(aspect))), int(round(side / np.sqrt(aspect)))
    lo, hi = box_points.min(axis=1), box_points.max(axis=1)
    box = max(hi[0] - lo[0], hi[1] - lo[1])
    span = rng.uniform(0.5, 0.8)
    scale = span * min(width, height) / box
    centre = (lo + hi) / 2
    jitter = rng.normal(0.0, 0.045, size=2) * np.array([width, height])
    cx = (width - 1) / 2 + jitter[0] - scale * centre[0]
    cy = (height - 1) / 2 + jitter[1] + scale * centre[1] + 0.04 * height
    return Placement(width=width, height=height, scale=float(scale), cx=float(cx), cy=float(cy))
