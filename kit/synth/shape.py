"""Per-face shape: a linear model of identity and expression displacement fields over the canonical head.

Every field is a smooth function of the canonical position (the mouth-opening step is sharp only across the gap
between the lips), so landmarks and the rendered surface move together: a face is ``p0 + sum_k c_k F_k(p0)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kit.synth import geometry as g

# (name, coefficient scale) of the identity fields: coefficients are N(0, scale^2).
IDENTITY_SCALES = {
    "width": 0.05,
    "height": 0.05,
    "depth": 0.07,
    "jaw_width": 0.08,
    "forehead_width": 0.05,
    "chin_length": 0.12,
    "midface_length": 0.06,
    "eye_spacing": 0.012,
    "eye_size": 0.1,
    "eye_height": 0.012,
    "eye_tilt": 0.12,
    "brow_height": 0.015,
    "nose_length": 0.015,
    "nose_width": 0.15,
    "nose_depth": 0.02,
    "mouth_width": 0.08,
    "mouth_height": 0.012,
    "lip_thickness": 0.2,
    "chin_depth": 0.02,
    "cheeks": 0.015,
    "shear_xy": 0.06,
    "bend_x2": 0.05,
    "bend_y2": 0.04,
    "round_z": 0.1,
    "slope_z": 0.05,
    # small asymmetries
    "tilt_y": 0.02,
    "eye_height_asym": 0.006,
    "nose_shift": 0.008,
    "mouth_shift": 0.008,
    "jaw_shift": 0.02,
    "depth_asym": 0.02,
}
EXPRESSIONS = (
    "mouth_open",
    "smile",
    "smile_asym",
    "brow_raise",
    "brow_raise_asym",
    "frown",
    "blink_left",
    "blink_right",
    "pucker",
)
FIELD_NAMES = tuple(IDENTITY_SCALES) + EXPRESSIONS
MOUTH_OPEN_MAX = 0.13


def _gauss(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _relu(t: np.ndarray) -> np.ndarray:
    return np.maximum(t, 0.0)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def mouth_open_weight(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """How far a point moves (0..1) when the mouth opens: a sharp step across the lip gap, soft beyond the corners."""
    eps = 0.004 + 0.5 * np.maximum(np.abs(x) - 0.13, 0.0)
    fade = np.clip(1.0 - (np.maximum(np.abs(x) - 0.1, 0.0) / 0.42) ** 2, 0.0, 1.0)
    return _sigmoid((g.MOUTH_Y - y) / eps) * fade


def _blink(x: np.ndarray, y: np.ndarray, side: float) -> np.ndarray:
    """Vertical field closing one eye: the opening collapses onto the lower lid, the lid skin follows."""
    low, up = g.lower_lid(x), g.upper_lid(x)
    gap = np.where(np.abs(g.eye_u(x)) < 1, up - low, 0.0)
    inside = np.clip(y - low, 0.0, None)
    dy = -np.where(y <= up, inside, gap * np.exp(-(((y - up) / 0.035) ** 2)))
    return dy * (np.sign(x) == side)


def fields(points: np.ndarray) -> np.ndarray:
    """All displacement fields at canonical points (N, 3): an array (K, N, 3) in FIELD_NAMES order."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    xl, sgn, zero = -np.abs(x), np.sign(x), np.zeros(len(x))
    eyes = _gauss(xl, y, -g.EYE_X, g.EYE_Y, 0.09, 0.07)
    brows = _gauss(xl, y, -0.23, 0.2, 0.14, 0.05)
    nose_tip = _gauss(x, y, 0.0, -0.15, 0.08, 0.06)
    nose_low = _gauss(x, y, 0.0, -0.15, 0.12, 0.07)
    nose = _gauss(x, y, 0.0, -0.05, 0.06, 0.13)
    mouth = _gauss(x, y, 0.0, g.MOUTH_Y, 0.2, 0.06)
    lips = _gauss(x, y, 0.0, g.MOUTH_Y, 0.15, 0.06)
    chin = _gauss(x, y, 0.0, -0.53, 0.15, 0.08)
    cheek = _gauss(xl, y, -0.3, -0.15, 0.1, 0.12)
    corner = _gauss(xl, y, -g.MOUTH_X, g.MOUTH_Y, 0.06, 0.05)
    brow_zone = _gauss(xl, y, -0.22, 0.24, 0.16, 0.09)
    inner_brow = _gauss(xl, y, -0.1, 0.19, 0.05, 0.04)
    open_w = mouth_open_weight(x, y)
    smile = (sgn * 0.02 * corner, 0.035 * corner + 0.012 * cheek, zero)
    f = {
        "width": (x, zero, zero),
        "height": (zero, y, zero),
        "depth": (zero, zero, z),
        "jaw_width": (x * _relu(-0.1 - y) / 0.5, zero, zero),
        "forehead_width": (x * _relu(y - 0.1) / 0.4, zero, zero),
        "chin_length": (zero, np.minimum(y + 0.35, 0.0), zero),
        "midface_length": (zero, np.clip(y, -0.35, 0.1), zero),
        "eye_spacing": (sgn * eyes, zero, zero),
        "eye_size": ((x - sgn * g.EYE_X) * eyes, (y - g.EYE_Y) * eyes, zero),
        "eye_height": (zero, eyes, zero),
        "eye_tilt": (zero, (np.abs(x) - g.EYE_X) * eyes, zero),
        "brow_height": (zero, brows, zero),
        "nose_length": (zero, nose_tip, zero),
        "nose_width": (x * nose_low, zero, zero),
        "nose_depth": (zero, zero, nose),
        "mouth_width": (x * mouth, zero, zero),
        "mouth_height": (zero, mouth, zero),
        "lip_thickness": (zero, (y - g.MOUTH_Y) * lips, zero),
        "chin_depth": (zero, zero, chin),
        "cheeks": (sgn * cheek, zero, 0.5 * cheek),
        "shear_xy": (x * y, zero, zero),
        "bend_x2": (zero, x**2, zero),
        "bend_y2": (zero, y**2, zero),
        "round_z": (zero, zero, x**2),
        "slope_z": (zero, zero, y),
        "tilt_y": (zero, x, zero),
        "eye_height_asym": (zero, sgn * eyes, zero),
        "nose_shift": (nose + nose_low, zero, zero),
        "mouth_shift": (mouth, zero, zero),
        "jaw_shift": (_relu(-0.1 - y), zero, zero),
        "depth_asym": (zero, zero, x),
        "mouth_open": (zero, -open_w, -0.3 * open_w),
        "smile": smile,
        "smile_asym": tuple(sgn * c for c in smile),
        "brow_raise": (zero, brow_zone, zero),
        "brow_raise_asym": (zero, sgn * brow_zone, zero),
        "frown": (-sgn * 0.5 * inner_brow, -inner_brow, zero),
        "blink_left": (zero, _blink(x, y, -1.0), zero),
        "blink_right": (zero, _blink(x, y, 1.0), zero),
        "pucker": (-x * lips, zero, 0.03 * lips),
    }
    return np.stack([np.stack(f[name], axis=1) for name in FIELD_NAMES])


@dataclass(frozen=True)
class ShapeBasis:
    """The fields evaluated at a fixed point set, split by axis and stored planar (no BLAS: it oversubscribes)."""

    base: np.ndarray  # (3, N) float32 canonical points
    axes: tuple[tuple[np.ndarray, np.ndarray], ...]  # per axis: (field indices, (k, N) float32 matrix)

    @classmethod
    def at(cls, points: np.ndarray) -> ShapeBasis:
        """Evaluate the fields at canonical points (N, 3)."""
        f = fields(np.asarray(points, dtype=np.float64))
        axes = []
        for a in range(3):
            idx = np.flatnonzero(np.abs(f[:, :, a]).max(axis=1) > 0)
            axes.append((idx, np.ascontiguousarray(f[idx, :, a], dtype=np.float32)))
        return cls(base=np.ascontiguousarray(np.asarray(points, dtype=np.float32).T), axes=tuple(axes))

    def apply(self, coefficients: np.ndarray) -> np.ndarray:
        """Deformed points (3, N) float32 for a coefficient vector in FIELD_NAMES order."""
        c = np.asarray(coefficients, dtype=np.float32)
        out = self.base.copy()
        for a, (idx, mat) in enumerate(self.axes):
            out[a] += np.einsum("kn,k->n", mat, c[idx])
        return out


def sample_coefficients(rng: np.random.Generator) -> np.ndarray:
    """Random identity and expression coefficients in FIELD_NAMES order."""
    scales = np.array(list(IDENTITY_SCALES.values()))
    identity = np.clip(rng.standard_normal(len(scales)), -2.5, 2.5) * scales
    e = dict.fromkeys(EXPRESSIONS, 0.0)
    if rng.random() < 0.75:
        u = rng.random(6)
        e["mouth_open"] = MOUTH_OPEN_MAX * rng.random() ** 1.5 if u[0] < 0.4 else rng.uniform(-0.016, 0.004)
        e["smile"] = rng.uniform(0.2, 1.0) if u[1] < 0.45 else 0.0
        e["smile_asym"] = rng.normal(0.0, 0.15) * e["smile"]
        e["brow_raise"] = rng.uniform(0.0, 0.03) if u[2] < 0.25 else rng.normal(0.0, 0.006)
        e["brow_raise_asym"] = rng.normal(0.0, 0.005)
        e["frown"] = rng.uniform(0.0, 0.015) if u[3] < 0.15 else 0.0
        e["pucker"] = rng.uniform(0.0, 0.5) if u[4] < 0.06 else 0.0
        if u[5] < 0.12:
            k = rng.uniform(0.3, 0.92)
            other = 0.0 if rng.random() < 0.2 else float(np.clip(k + rng.normal(0, 0.05), 0, 0.92))
            e["blink_left"], e["blink_right"] = (k, other) if rng.random() < 0.5 else (other, k)
        else:
            e["blink_left"], e["blink_right"] = rng.uniform(0.0, 0.25, size=2)
    return np.concatenate([identity, np.array([e[name] for name in EXPRESSIONS])])
