"""The canonical head: surface, relief and facial feature curves.

Coordinates: x to the viewer's right, y up, z toward the camera; the jaw is about 0.92 wide. The frontal
layout of a surface point is its (x, y); the surface is parametrised by azimuth ``phi`` and height ``y``. Every
feature is defined on the left half (x <= 0) and mirrored, so the geometry is exactly symmetric.
"""

from __future__ import annotations

import numpy as np

SUPER_E = 2.0 / 2.4  # cross-section superellipse exponent: a flatter front than an ellipse
EAR_Y = 0.04
JAW_A, JAW_B, JAW_N = 0.46, 0.66, 2.6
CHIN_Y = EAR_Y - JAW_B
EYE_X, EYE_Y, EYE_W = 0.225, 0.10, 0.105
IRIS_R, PUPIL_R = 0.036, 0.014
BROW_X0, BROW_X1 = 0.385, 0.085  # outer and inner ends (|x|)
MOUTH_Y = -0.333  # the slit between the inner lips
MOUTH_X, INNER_X = 0.17, 0.15  # outer and inner mouth corners (|x|)
NASION_Y, NOSE_TIP_Y, SUBNASALE_Y = 0.12, -0.13, -0.20
FOREHEAD_TOP = 0.46  # highest landmarks
GRID_TOP = 0.80


def _catmull_rom(ctrl: np.ndarray, per_segment: int = 24) -> np.ndarray:
    """Dense smooth polyline through control points (Catmull-Rom, end points repeated)."""
    p = np.concatenate([ctrl[:1], ctrl, ctrl[-1:]])
    t = np.linspace(0.0, 1.0, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        a, b = 2 * p0 - 5 * p1 + 4 * p2 - p3, -p0 + 3 * p1 - 3 * p2 + p3
        out.append(0.5 * (2 * p1 + (p2 - p0) * t + a * t**2 + b * t**3))
    out.append(ctrl[-1:])
    return np.concatenate(out)


def arc_lengths(poly: np.ndarray) -> np.ndarray:
    """Cumulative arc length along a polyline, starting at 0."""
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(poly, axis=0), axis=1))])


def at_arc(poly: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Points at arc lengths ``s`` along a polyline."""
    cum = arc_lengths(poly)
    return np.stack([np.interp(s, cum, poly[:, 0]), np.interp(s, cum, poly[:, 1])], axis=1)


# ---- head shape -------------------------------------------------------------------------------------------------


def half_width(y: np.ndarray) -> np.ndarray:
    """Half width A(y) of the head cross-section at height y."""
    y = np.asarray(y, dtype=np.float64)
    a = np.where(y < -0.1, 0.5 - 0.18 * ((-0.1 - y) / 0.52) ** 2, 0.5)
    return np.where(y > 0.3, 0.5 * _dome(y), a)


def half_depth(y: np.ndarray) -> np.ndarray:
    """Half depth C(y) of the head cross-section at height y."""
    y = np.asarray(y, dtype=np.float64)
    c = np.where(y < -0.1, 0.5 - 0.1 * ((-0.1 - y) / 0.52) ** 2, 0.5)
    return np.where(y > 0.3, 0.5 * _dome(y), c)


def _dome(y: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(1.0 - ((y - 0.3) / 0.55) ** 2, 1e-4, 1.0))


def _gauss(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def relief(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Depth offset of the facial features (nose, sockets, brows, cheeks, lips, chin) at frontal (x, y)."""
    xl = -np.abs(x)
    # Nose: a ridge growing from the nasion to the tip, then a steep underside down to the subnasale.
    ridge = np.where(
        y > NOSE_TIP_Y,
        0.04 + 0.13 * np.clip((NASION_Y + 0.06 - y) / (NASION_Y + 0.06 - NOSE_TIP_Y), 0, 1) ** 1.3,
        0.17 * np.exp(-(((y - NOSE_TIP_Y) / 0.042) ** 2)),
    )
    ridge = ridge * np.clip((0.22 - y) / 0.1, 0, 1)
    width = 0.028 + 0.03 * np.clip((NASION_Y - y) / (NASION_Y - NOSE_TIP_Y), 0, 1.2)
    z = ridge * np.exp(-0.5 * (x / width) ** 2)
    z += 0.055 * _gauss(xl, y, -0.072, -0.152, 0.03, 0.028)  # alae
    z += -0.05 * _gauss(xl, y, -EYE_X, EYE_Y + 0.01, 0.09, 0.055)  # eye sockets
    z += 0.025 * _gauss(xl, y, -EYE_X, EYE_Y, 0.06, 0.03)  # eyeballs
    z += 0.03 * _gauss(xl, y, -0.2, 0.2, 0.13, 0.04)  # brow ridges
    z += 0.035 * _gauss(xl, y, -0.28, -0.07, 0.09, 0.07)  # cheekbones
    z += -0.02 * _gauss(xl, y, -0.42, 0.16, 0.05, 0.08)  # temples
    z += 0.045 * _gauss(x, y, 0.0, -0.30, 0.12, 0.032)  # upper lip
    z += 0.04 * _gauss(x, y, 0.0, -0.37, 0.11, 0.03)  # lower lip
    z += -0.012 * _gauss(xl, y, -0.18, MOUTH_Y, 0.03, 0.03)  # mouth corners
    z += -0.015 * _gauss(x, y, 0.0, -0.445, 0.1, 0.022)  # groove under the lower lip
    z += 0.04 * _gauss(x, y, 0.0, -0.53, 0.09, 0.05)  # chin
    return z


def surface(phi: np.ndarray, y: np.ndarray) -> np.ndarray:
    """3D points (..., 3) of the head surface at azimuth ``phi`` (0 = front) and height ``y``."""
    phi, y = np.broadcast_arrays(np.asarray(phi, dtype=np.float64), np.asarray(y, dtype=np.float64))
    s, c = np.sin(phi), np.cos(phi)
    x = half_width(y) * np.sign(s) * np.abs(s) ** SUPER_E
    z = half_depth(y) * np.sign(c) * np.abs(c) ** SUPER_E
    z = z + relief(x, y) * np.clip(4.0 * c, 0.0, 1.0)  # no features behind the ears
    return np.stack([x, y, z], axis=-1)


def frontal_to_phi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Azimuth of the front-facing surface point whose frontal layout is (x, y)."""
    r = np.clip(np.abs(x) / half_width(y), 0.0, 1.0)
    return np.sign(x) * np.arcsin(r ** (1.0 / SUPER_E))


def lift(xy: np.ndarray) -> np.ndarray:
    """3D surface points (N, 3) of frontal layout points (N, 2); exactly mirror-symmetric in x."""
    xy = np.asarray(xy, dtype=np.float64)
    left = surface(frontal_to_phi(-np.abs(xy[:, 0]), xy[:, 1]), xy[:, 1])
    left[:, 0] = np.where(xy[:, 0] > 0, -left[:, 0], left[:, 0])
    left[xy[:, 0] == 0, 0] = 0.0
    return left


# ---- feature curves (left half, frontal layout) -----------------------------------------------------------------


def jaw_half(n: int = 400) -> np.ndarray:
    """Left jaw from the ear (x < 0) down to the chin (x = 0), a superellipse quarter."""
    theta = np.linspace(np.pi / 2, 0.0, n)
    e = 2.0 / JAW_N
    return np.stack([-JAW_A * np.sin(theta) ** e, EAR_Y - JAW_B * np.cos(theta) ** e], axis=1)


def jaw_y(x: np.ndarray) -> np.ndarray:
    """Height of the jaw line under frontal x (|x| <= JAW_A); EAR_Y beyond."""
    r = np.clip(np.abs(x) / JAW_A, 0.0, 1.0)
    sin_t = r ** (JAW_N / 2.0)
    cos_t = np.sqrt(np.clip(1.0 - sin_t**2, 0.0, 1.0))
    return EAR_Y - JAW_B * cos_t ** (2.0 / JAW_N)


def eye_u(x: np.ndarray) -> np.ndarray:
    """Eye coordinate: -1 at the outer corner, +1 at the inner corner (either eye)."""
    return (EYE_X - np.abs(x)) / EYE_W


def upper_lid(x: np.ndarray) -> np.ndarray:
    u = np.clip(eye_u(x), -1, 1)
    return EYE_Y + 0.042 * (1 - u**2) ** 0.65 * (1 - 0.12 * u) - 0.006 * u


def lower_lid(x: np.ndarray) -> np.ndarray:
    u = np.clip(eye_u(x), -1, 1)
    return EYE_Y - 0.024 * (1 - u**2) ** 0.85 - 0.006 * u


def eye_arcs(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Left eye: upper lid from the outer to the inner corner, lower lid from the inner back to the outer corner."""
    x = -EYE_X - EYE_W * np.cos(np.linspace(0, np.pi, n))  # denser near the corners
    upper = np.stack([x, upper_lid(x)], axis=1)
    return upper, np.stack([x[::-1], lower_lid(x[::-1])], axis=1)


def _brow_u(x: np.ndarray) -> np.ndarray:
    """Brow coordinate: -1 at the outer end, +1 at the inner end."""
    return 2 * (np.abs(x) - BROW_X0) / (BROW_X1 - BROW_X0) - 1


def brow_centre(x: np.ndarray) -> np.ndarray:
    u = np.clip(_brow_u(x), -1, 1)
    return 0.19 + 0.035 * (1 - ((u + 0.25) / 1.25) ** 2) - 0.01 * (u > 0.6) * (u - 0.6)


def brow_half_thickness(x: np.ndarray) -> np.ndarray:
    u = np.clip(_brow_u(x), -1, 1)
    return 0.013 + 0.006 * u


def brow_arcs(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Left brow: upper edge from the outer to the inner end, lower edge back."""
    x = -BROW_X0 + (BROW_X0 - BROW_X1) * (1 - np.cos(np.linspace(0, np.pi, n))) / 2
    upper = np.stack([x, brow_centre(x) + brow_half_thickness(x)], axis=1)
    lower = np.stack([x, brow_centre(x) - brow_half_thickness(x)], axis=1)[::-1]
    lower[0], lower[-1] = upper[-1], upper[0]  # the ends are single points
    return upper, lower


def nose_base_half() -> np.ndarray:
    """Left half of the nose base: alar crease, around the ala, under the nostril to the subnasale."""
    ctrl = np.array(
        [
            [-0.082, -0.095],
            [-0.098, -0.125],
            [-0.096, -0.158],
            [-0.07, -0.178],
            [-0.04, -0.19],
            [-0.015, -0.197],
            [0.0, SUBNASALE_Y],
        ]
    )
    return _catmull_rom(ctrl)


def _lip_curve(ctrl: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    dense = _catmull_rom(np.array(ctrl))
    return dense[:, 0], dense[:, 1]


_OUTER_UPPER = _lip_curve([(-MOUTH_X, -0.335), (-0.12, -0.305), (-0.055, -0.283), (-0.02, -0.29), (0.0, -0.292)])
_OUTER_LOWER = _lip_curve([(-MOUTH_X, -0.335), (-0.12, -0.37), (-0.06, -0.397), (0.0, -0.403)])
_INNER_UPPER = _lip_curve([(-INNER_X, -0.3335), (-0.125, -0.3255), (-0.07, -0.3215), (0.0, -0.321)])
_INNER_LOWER = _lip_curve([(-INNER_X, -0.3335), (-0.125, -0.3415), (-0.07, -0.3445), (0.0, -0.345)])


def _lip(curve: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    return np.interp(-np.abs(x), curve[0], curve[1])


def outer_upper_lip(x: np.ndarray) -> np.ndarray:
    return _lip(_OUTER_UPPER, x)


def outer_lower_lip(x: np.ndarray) -> np.ndarray:
    return _lip(_OUTER_LOWER, x)


def inner_upper_lip(x: np.ndarray) -> np.ndarray:
    return _lip(_INNER_UPPER, x)


def inner_lower_lip(x: np.ndarray) -> np.ndarray:
    return _lip(_INNER_LOWER, x)


def lip_arcs(inner: bool) -> tuple[np.ndarray, np.ndarray]:
    """Left half of a lip contour: upper lip from the top midline to the corner, lower lip on to the bottom midline."""
    up, low = (_INNER_UPPER, _INNER_LOWER) if inner else (_OUTER_UPPER, _OUTER_LOWER)
    return np.stack(up, axis=1)[::-1], np.stack(low, axis=1)


# ---- regions ----------------------------------------------------------------------------------------------------


def inside_eye(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed vertical margin inside the eye opening (> 0 inside)."""
    u = eye_u(x)
    margin = np.minimum(upper_lid(x) - y, y - lower_lid(x))
    return np.where(np.abs(u) < 1, margin, -1.0)


def inside_brow(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed vertical margin inside the brow (> 0 inside)."""
    u = _brow_u(x)
    margin = brow_half_thickness(x) - np.abs(y - brow_centre(x))
    return np.where(np.abs(u) < 1, margin, -1.0)


def inside_mouth(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed vertical margin inside the opening between the inner lips (> 0 inside)."""
    margin = np.minimum(inner_upper_lip(x) - y, y - inner_lower_lip(x))
    return np.where(np.abs(x) < INNER_X, margin, -1.0)


def inside_lips(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed vertical margin inside the outer lip contour (> 0 inside)."""
    margin = np.minimum(outer_upper_lip(x) - y, y - outer_lower_lip(x))
    return np.where(np.abs(x) < MOUTH_X, margin, -1.0)


def inside_face(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether frontal (x, y) lies on the face: above the jaw, below the forehead top, inside the temples."""
    top = FOREHEAD_TOP - 0.3 * x**2
    return (np.abs(x) <= JAW_A - 0.01) & (y > jaw_y(x)) & (y < top)
