"""Rasterise the deformed head surface: a dense sample grid splatted into a depth-tested image.

The surface is sampled on a (row, column) grid whose spacing is even in arc length (denser over the nose, lips
and the mouth gap, which stretches when the mouth opens). Each sample covers the 2x2 pixels around it; a pixel keeps
the sample nearest in depth, and among samples of the same surface layer the one nearest in the image, so there is
no systematic sub-pixel shift. Small holes are closed afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from kit.synth import geometry as g
from kit.synth.appearance import CanonicalAppearance, FaceColours, albedo
from kit.synth.pose import rotate
from kit.synth.shape import MOUTH_OPEN_MAX, ShapeBasis, mouth_open_weight

PHI_MAX = 1.75  # azimuth reached by the surface grid (about 100 degrees: just behind the ears)
SPACING = 0.015  # target arc length between neighbouring samples, in face units
DEPTH_LAYER = 0.02  # depth (face units) worth one pixel of image distance when two samples compete for a pixel
_ID_BITS = 15  # sample index bits of a 31-bit depth key; the rest is the quantised score
_SCORE_STEPS = 32.0  # score quantisation per unit (one pixel of squared distance, or one depth layer)
_EMPTY = np.iinfo(np.int32).max


def _domain(phi: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Grid samples on the head: above the jaw line in front, above ear level behind the jaw."""
    x = g.half_width(y) * np.abs(np.sin(phi)) ** g.SUPER_E
    behind = (np.abs(phi) > np.pi / 2) | (x >= g.JAW_A)
    return (y >= np.where(behind, g.EAR_Y, g.jaw_y(x))) & (y <= g.GRID_TOP)


def _even_samples(values: np.ndarray, interval_lengths: np.ndarray, spacing: float) -> np.ndarray:
    """Resample a fine 1D grid so consecutive samples are ``spacing`` apart in the given interval lengths."""
    cum = np.concatenate([[0.0], np.cumsum(interval_lengths)])
    n = int(np.ceil(cum[-1] / spacing)) + 1
    return np.interp(np.linspace(0.0, cum[-1], n), cum, values)


@dataclass(frozen=True)
class HeadMesh:
    """The surface sample grid of the canonical head with its shape basis and appearance maps."""

    rows: int
    cols: int
    domain: np.ndarray  # (N,) bool, N = rows * cols
    basis: ShapeBasis
    appearance: CanonicalAppearance


@lru_cache(maxsize=1)
def head_mesh() -> HeadMesh:
    """Build (once per process) the surface grid of the canonical head."""
    phi_f = np.linspace(0.0, PHI_MAX, 400)
    y_f = np.linspace(g.CHIN_Y - 0.005, g.GRID_TOP, 600)
    pf, yf = np.meshgrid(phi_f, y_f)
    pts = g.surface(pf, yf)
    dom = _domain(pf, yf)
    step_phi = np.linalg.norm(np.diff(pts, axis=1), axis=-1) * (dom[:, 1:] & dom[:, :-1])
    step_y = np.linalg.norm(np.diff(pts, axis=0), axis=-1) * (dom[1:] & dom[:-1])
    # The mouth gap stretches by up to MOUTH_OPEN_MAX: give it rows in proportion.
    open_step = np.abs(np.diff(mouth_open_weight(np.zeros_like(y_f), y_f))) * MOUTH_OPEN_MAX
    phi_pos = _even_samples(phi_f, step_phi.max(axis=0), SPACING)
    phis = np.concatenate([-phi_pos[:0:-1], phi_pos])
    ys = _even_samples(y_f, step_y.max(axis=1) + open_step, SPACING)
    pg, yg = np.meshgrid(phis, ys)
    points = g.surface(pg, yg).reshape(-1, 3)
    phi = pg.ravel()
    return HeadMesh(
        rows=len(ys),
        cols=len(phis),
        domain=_domain(pg, yg).ravel(),
        basis=ShapeBasis.at(points),
        appearance=CanonicalAppearance.at(points, phi),
    )


def grid_normals(points: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Unit outward normals (3, N) of a deformed planar sample grid (3, N), N = rows * cols, by central differences."""
    p = points.reshape(3, rows, cols)
    du = np.empty_like(p)
    du[:, :, 1:-1] = p[:, :, 2:] - p[:, :, :-2]
    du[:, :, 0], du[:, :, -1] = p[:, :, 1] - p[:, :, 0], p[:, :, -1] - p[:, :, -2]
    dv = np.empty_like(p)
    dv[:, 1:-1] = p[:, 2:] - p[:, :-2]
    dv[:, 0], dv[:, -1] = p[:, 1] - p[:, 0], p[:, -1] - p[:, -2]
    n = np.stack(
        [
            du[1] * dv[2] - du[2] * dv[1],
            du[2] * dv[0] - du[0] * dv[2],
            du[0] * dv[1] - du[1] * dv[0],
        ]
    ).reshape(3, -1)
    n /= np.maximum(np.sqrt(n[0] ** 2 + n[1] ** 2 + n[2] ** 2), 1e-12)
    return n


@dataclass(frozen=True)
class Light:
    """Directional light in camera space with ambient, diffuse and specular terms."""

    direction: np.ndarray  # (3,) unit, toward the light
    ambient: float
    diffuse: float
    specular: float
    shininess: int  # a power of two: the specular power is a few squarings
    tint: np.ndarray  # (3,) BGR multiplier


def sample_light(rng: np.random.Generator) -> Light:
    """A random key light, mostly from the front and above."""
    az, el = np.radians(rng.uniform(-70, 70)), np.radians(rng.uniform(-20, 60))
    direction = np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)])
    return Light(
        direction=direction,
        ambient=float(rng.uniform(0.25, 0.55)),
        diffuse=float(rng.uniform(0.5, 0.85)),
        specular=float(rng.uniform(0.0, 0.25)),
        shininess=int(rng.choice([8, 16, 32])),
        tint=np.exp(rng.normal(0.0, 0.05, 3)),
    )


def shade(colour: np.ndarray, normals: np.ndarray, light: Light) -> np.ndarray:
    """Lambert plus Blinn-Phong shading of planar albedo (3, n) with camera-space normals (3, n).

    Returns:
        (n, 4) uint8 BGRA colours (alpha 255), packable as uint32.
    """
    ndl = np.clip(_dot(normals, light.direction), 0.0, None)
    half = light.direction + np.array([0.0, 0.0, 1.0])
    spec = np.clip(_dot(normals, half / np.linalg.norm(half)), 0.0, None)
    for _ in range(int(np.log2(light.shininess))):
        spec *= spec
    spec *= light.specular
    diffuse = light.ambient + light.diffuse * ndl
    out = np.full((colour.shape[1], 4), 255, np.uint8)
    for ch in range(3):
        out[:, ch] = np.clip((colour[ch] * diffuse * light.tint[ch] + spec) * 255.0, 0, 255)
    return out


def _dot(vectors: np.ndarray, d: np.ndarray) -> np.ndarray:
    return vectors[0] * np.float32(d[0]) + vectors[1] * np.float32(d[1]) + vectors[2] * np.float32(d[2])


def splat(canvas: np.ndarray, xy: np.ndarray, depth: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Draw samples into ``canvas`` (H, W, 3) uint8 in place with depth testing; returns the covered mask (H, W).

    Args:
        canvas: the image to draw on.
        xy: sample positions (2, n) in canvas pixels (pixel centres at integers).
        depth: sample depths (n,), larger is nearer.
        colours: sample colours (n, 4) uint8 BGRA.
    """
    h, w = canvas.shape[:2]
    if len(depth) >= 1 << _ID_BITS:
        raise ValueError(f"at most {(1 << _ID_BITS) - 1} samples per splat, got {len(depth)}")
    wp = w + 4  # a 2-pixel border takes the footprints of samples just outside the canvas
    x0, y0 = np.floor(xy[0]), np.floor(xy[1])
    fx, fy = xy[0] - x0, xy[1] - y0
    base = (np.clip(y0, -2, h) + 2).astype(np.int32) * wp + (np.clip(x0, -2, w) + 2).astype(np.int32)
    far = (depth.max() - depth) * np.float32(_SCORE_STEPS / DEPTH_LAYER)
    steps = np.float32(_SCORE_STEPS)
    cx = (fx * fx * steps, (1 - fx) ** 2 * steps)  # squared distances to the footprint's pixel columns
    cy = (fy * fy * steps + far, (1 - fy) ** 2 * steps + far)
    ids = np.arange(len(depth), dtype=np.int32)
    keys = np.empty((4, len(depth)), np.int32)
    pix = np.empty((4, len(depth)), np.int32)
    top = np.float32((1 << (31 - _ID_BITS)) - 1)
    for k, (dx, dy) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):
        keys[k] = np.minimum(cx[dx] + cy[dy], top).astype(np.int32) << _ID_BITS | ids
        pix[k] = base + (dy * wp + dx)
    zbuf = np.full((h + 4) * wp, _EMPTY, dtype=np.int32)
    np.minimum.at(zbuf, pix.ravel(), keys.ravel())
    zbuf = zbuf.reshape(h + 4, wp)[2 : h + 2, 2 : w + 2].ravel()
    covered = np.flatnonzero(zbuf != _EMPTY)
    packed = np.zeros(h * w, np.uint32)
    packed[covered] = np.ascontiguousarray(colours).view(np.uint32).ravel()[zbuf[covered] & ((1 << _ID_BITS) - 1)]
    face = cv2.cvtColor(packed.view(np.uint8).reshape(h, w, 4), cv2.COLOR_BGRA2BGR)
    mask = (packed.reshape(h, w) != 0).view(np.uint8)
    cv2.copyTo(face, mask, canvas)
    closed = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    holes = cv2.subtract(closed, mask)
    if cv2.countNonZero(holes):
        cv2.copyTo(cv2.dilate(face, np.ones((3, 3), np.uint8)), holes, canvas)
    return closed.astype(bool)


def render_surface(
    canvas: np.ndarray,
    mesh: HeadMesh,
    points: np.ndarray,
    rotation: np.ndarray,
    xy: np.ndarray,
    depth: np.ndarray,
    colours: FaceColours,
    light: Light,
) -> np.ndarray:
    """Shade and splat the deformed head surface onto ``canvas`` (H, W, 3) uint8; returns the covered mask.

    Args:
        canvas: image to draw on.
        mesh: the sample grid.
        points: deformed canonical sample positions (3, N).
        rotation: head rotation (3, 3).
        xy: projected sample positions (2, N) in canvas pixels.
        depth: camera-space depth of the samples (N,).
        colours: the face's colours.
        light: the light.
    """
    h, w = canvas.shape[:2]
    normals = rotate(grid_normals(points, mesh.rows, mesh.cols), rotation)
    keep = mesh.domain & (normals[2] > -0.05)
    keep &= (xy[0] > -2) & (xy[0] < w + 1) & (xy[1] > -2) & (xy[1] < h + 1)
    idx = np.flatnonzero(keep)
    if len(idx) == 0:
        return np.zeros((h, w), bool)
    rgb = shade(albedo(mesh.appearance, colours, idx), normals[:, idx], light)
    return splat(canvas, xy[:, idx], depth[idx], rgb)
