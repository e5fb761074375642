"""The landmark template: a dense, exactly mirror-symmetric layout of P points on the canonical head.

Curves (jaw, brows, eyes, nose, outer and inner lips) take about 28% of the points; the rest fill the face surface
(forehead, cheeks, chin) by symmetric farthest-point sampling, so points stay well apart for any P.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from kit.synth import geometry as g

MIN_POINTS = 50
PART_NAMES = ("jaw", "brows", "nose_bridge", "nose_base", "eyes", "lips_outer", "lips_inner", "interior")


@dataclass(frozen=True, eq=False)
class FaceTemplate:
    """Landmark layout on the canonical head (x right, y up, z toward the camera; jaw about 0.92 wide).

    Compared and hashed by identity (``make_template`` returns one shared instance per point count).
    """

    points3d: np.ndarray  # (P, 3) float64 surface points
    flip_permutation: np.ndarray  # (P,) int: point i mirrors to point perm[i]; an involution
    parts: np.ndarray  # (P,) int index into part_names
    part_names: tuple[str, ...]  # names of the parts, in index order

    @property
    def n_points(self) -> int:
        return len(self.points3d)

    @property
    def points2d(self) -> np.ndarray:
        """Frontal layout (P, 2): x right, y up."""
        return self.points3d[:, :2]


def _symmetric_open(half: np.ndarray, n: int) -> np.ndarray:
    """n points at equal arc length along a curve symmetric about x = 0, given its left half ending on x = 0."""
    total = 2 * g.arc_lengths(half)[-1]
    s = np.arange(n) * total / (n - 1)
    k_left = (n - 1) // 2 + (n % 2 == 0)  # points strictly left of the midline
    left = g.at_arc(half, s[:k_left]) if k_left else np.zeros((0, 2))
    mid = np.array([[0.0, half[-1, 1]]]) if n % 2 else np.zeros((0, 2))
    return np.concatenate([left, mid, _mirror(left[::-1])])


def _two_arcs(a: np.ndarray, b: np.ndarray, intervals: int) -> np.ndarray:
    """Points along arc a then arc b (a ends where b starts), ``intervals`` gaps in all, the junction included.

    The junction (an eye or mouth corner) is always a point, so thin shapes never get two points straddling it.
    """
    la, lb = g.arc_lengths(a)[-1], g.arc_lengths(b)[-1]
    ka = min(max(1, round(intervals * la / (la + lb))), intervals - 1)
    pa = g.at_arc(a, np.linspace(0, la, ka + 1))
    pb = g.at_arc(b, np.linspace(0, lb, intervals - ka + 1))
    return np.concatenate([pa, pb[1:]])


def _symmetric_closed(upper: np.ndarray, lower: np.ndarray, n: int) -> np.ndarray:
    """n (even) points around a closed curve symmetric about x = 0, from the left halves of its two arcs."""
    left = _two_arcs(upper, lower, n // 2)
    left[[0, -1], 0] = 0.0
    return np.concatenate([left, _mirror(left[1:-1][::-1])])


def _closed(upper: np.ndarray, lower: np.ndarray, n: int) -> np.ndarray:
    """n points around a closed contour made of two arcs (upper, then lower back to the start)."""
    return _two_arcs(upper, lower, n)[:-1]


def _mirror(xy: np.ndarray) -> np.ndarray:
    return xy * np.array([-1.0, 1.0])


def _part_counts(n_points: int) -> dict[str, int]:
    p = n_points
    counts = {
        "jaw": max(7, round(0.066 * p)),
        "brows": 2 * max(3, round(0.022 * p)),
        "nose_bridge": max(2, round(0.012 * p)),
        "nose_base": max(3, round(0.022 * p)),
        "eyes": 2 * max(4, round(0.028 * p)),
        "lips_outer": 2 * max(2, round(0.025 * p)),
        "lips_inner": 2 * max(2, round(0.0175 * p)),
    }
    counts["interior"] = p - sum(counts.values())
    return counts


def _curves(counts: dict[str, int]) -> dict[str, np.ndarray]:
    brow, eye = _closed(*g.brow_arcs(), counts["brows"] // 2), _closed(*g.eye_arcs(), counts["eyes"] // 2)
    bridge_y = np.linspace(g.NASION_Y - 0.01, g.NOSE_TIP_Y, counts["nose_bridge"])
    return {
        "jaw": _symmetric_open(g.jaw_half(), counts["jaw"]),
        "brows": np.concatenate([brow, _mirror(brow)]),
        "nose_bridge": np.stack([np.zeros_like(bridge_y), bridge_y], axis=1),
        "nose_base": _symmetric_open(g.nose_base_half(), counts["nose_base"]),
        "eyes": np.concatenate([eye, _mirror(eye)]),
        "lips_outer": _symmetric_closed(*g.lip_arcs(inner=False), counts["lips_outer"]),
        "lips_inner": _symmetric_closed(*g.lip_arcs(inner=True), counts["lips_inner"]),
    }


_STEP = 0.004  # interior candidate grid step


def _interior_candidates(step: float = _STEP) -> np.ndarray:
    """Grid of left-half and midline face points off the eyes, brows and mouth opening."""
    xs = -step * np.arange(int(g.JAW_A / step) + 1)[::-1]
    ys = np.arange(g.CHIN_Y, g.FOREHEAD_TOP, step)
    x, y = (a.ravel() for a in np.meshgrid(xs, ys))
    keep = g.inside_face(x, y) & (g.inside_eye(x, y) < -0.004) & (g.inside_brow(x, y) < -0.004)
    keep &= g.inside_mouth(x, y) < -0.002
    return np.stack([x[keep], y[keep]], axis=1)


def _fill_interior(fixed: np.ndarray, n: int) -> np.ndarray:
    """Symmetric farthest-point sampling of n interior points away from the fixed (curve) points."""
    cand = _interior_candidates()
    cx, cy = cand[:, 0].copy(), cand[:, 1].copy()
    on_mid = cx == 0.0
    d2 = np.full(len(cand), np.inf)
    for qx, qy in fixed:
        d2 = np.minimum(d2, (cx - qx) ** 2 + (cy - qy) ** 2)
    self_d2 = np.where(on_mid, np.inf, (2 * cx) ** 2)  # a pair is as close as its two halves
    chosen: list[int] = []
    remaining = n
    while remaining > 0:
        score = np.minimum(d2, self_d2)
        if remaining == 1:
            score = np.where(on_mid, score, -1.0)
        i = int(np.argmax(score))
        if score[i] < _STEP**2:
            raise ValueError(f"too many points for the face layout: {n} interior points do not fit")
        chosen.append(i)
        remaining -= 1 if on_mid[i] else 2
        d2 = np.minimum(d2, np.minimum((cx - cx[i]) ** 2, (cx + cx[i]) ** 2) + (cy - cy[i]) ** 2)
    pts = cand[chosen]
    mid, left = pts[pts[:, 0] == 0.0], pts[pts[:, 0] != 0.0]
    left = left[np.lexsort((left[:, 0], -left[:, 1]))]  # rows top to bottom
    mid = mid[np.argsort(-mid[:, 1])]
    return np.concatenate([left, mid, _mirror(left)])


def _flip_permutation(xy: np.ndarray) -> np.ndarray:
    index = {(float(x), float(y)): i for i, (x, y) in enumerate(xy)}
    perm = np.array([index[(-float(x), float(y))] for x, y in xy])
    if not np.array_equal(perm[perm], np.arange(len(xy))):
        raise AssertionError("template layout is not mirror-symmetric")
    return perm


@lru_cache(maxsize=8)
def make_template(n_points: int = 971) -> FaceTemplate:
    """Build the landmark template with ``n_points`` points (at least 50).

    Raises:
        ValueError: too few points for the layout.
    """
    if n_points < MIN_POINTS:
        raise ValueError(f"n_points must be at least {MIN_POINTS}, got {n_points}")
    counts = _part_counts(n_points)
    curves = _curves(counts)
    fixed = np.concatenate(list(curves.values()))
    curves["interior"] = _fill_interior(fixed, counts["interior"])
    xy = np.concatenate([curves[name] for name in PART_NAMES])
    xy[xy[:, 0] == 0.0, 0] = 0.0  # no negative zeros: exact dictionary matching of mirrors
    parts = np.concatenate([np.full(len(curves[name]), k) for k, name in enumerate(PART_NAMES)])
    points3d = g.lift(xy)
    points3d[:, 0] = xy[:, 0]
    perm = _flip_permutation(xy)
    for a in (points3d, perm, parts):
        a.flags.writeable = False
    return FaceTemplate(points3d=points3d, flip_permutation=perm, parts=parts, part_names=PART_NAMES)
