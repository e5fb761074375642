"""Surface colour: fixed feature masks and a fixed skin pattern on the canonical head, random colours per face.

The pattern is tied to template position (and mirror-symmetric, so flipped images stay plausible): it gives a
network texture to localise interior points by, besides shading.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kit.synth import geometry as g

FEATURES = ("brows", "lips", "mouth", "teeth", "sclera", "iris", "pupil", "lash", "nostrils", "fold")
_HAIR_COLOURS = np.array(  # BGR in [0, 1]: black, dark brown, brown, blond, grey, auburn
    [
        [0.05, 0.05, 0.06],
        [0.07, 0.11, 0.18],
        [0.14, 0.24, 0.36],
        [0.38, 0.58, 0.72],
        [0.55, 0.55, 0.56],
        [0.10, 0.22, 0.50],
    ]
)
_HAIR_WEIGHTS = np.array([0.3, 0.3, 0.17, 0.1, 0.07, 0.06])
_IRIS_COLOURS = np.array([[0.06, 0.14, 0.26], [0.5, 0.38, 0.24], [0.28, 0.42, 0.3], [0.04, 0.06, 0.1]])
_SKIN_LIGHT, _SKIN_DARK = np.array([0.74, 0.82, 0.96]), np.array([0.15, 0.23, 0.36])


def _ramp(margin: np.ndarray, width: float) -> np.ndarray:
    return np.clip(margin / width + 0.5, 0.0, 1.0)


def _gauss(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def skin_pattern(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fixed zero-mean skin pattern at frontal (x, y): a few plane waves and freckle-like spots, mirror-symmetric."""
    rng = np.random.default_rng(20240611)  # fixed: the pattern belongs to the template, not to a dataset seed
    xl = np.abs(x)
    out = np.zeros_like(x)
    for _ in range(8):
        freq = rng.uniform(4.0, 12.0)
        ang = rng.uniform(0, np.pi)
        amp, phase = rng.uniform(0.3, 1.0), rng.uniform(0, 6.3)
        out += amp * np.sin(2 * np.pi * freq * (np.cos(ang) * xl + np.sin(ang) * y) + phase)
    out /= 4.0
    spots = np.stack([rng.uniform(0.02, 0.45, 40), rng.uniform(-0.58, 0.45, 40)], axis=1)
    for sx, sy in spots:
        out -= 1.2 * np.exp(-((xl - sx) ** 2 + (y - sy) ** 2) / (2 * 0.011**2))
    return out


@dataclass(frozen=True)
class CanonicalAppearance:
    """Per-sample canonical maps of a surface point set."""

    masks: np.ndarray  # (len(FEATURES), N) float32 coverage of each feature; sums to <= 1
    mask_sum: np.ndarray  # (N,) float32
    pattern: np.ndarray  # (N,) float32 zero-mean skin pattern
    socket: np.ndarray  # (N,) float32 eye-socket darkening
    blush: np.ndarray  # (N,) float32 cheek redness
    phi: np.ndarray  # (N,) absolute azimuth, for the hairline
    y: np.ndarray  # (N,) height, for the hairline
    streak: np.ndarray  # (N,) hair brightness pattern

    @classmethod
    def at(cls, points: np.ndarray, phi: np.ndarray) -> CanonicalAppearance:
        """Evaluate the maps at canonical surface points (N, 3) with azimuths ``phi``."""
        x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
        xl = -np.abs(x)
        front = np.abs(phi) < 1.3
        eye = _ramp(g.inside_eye(x, y), 0.006) * front
        d_iris = np.hypot(xl + g.EYE_X, y - g.EYE_Y - 0.004)
        iris = eye * _ramp(g.IRIS_R - d_iris, 0.006)
        pupil = eye * _ramp(g.PUPIL_R - d_iris, 0.006)
        above = y - g.upper_lid(x)
        lash = _ramp(np.minimum(above, 0.008 - 0.004 * g.eye_u(x) - above), 0.004) * (np.abs(g.eye_u(x)) < 1.05)
        mouth = _ramp(g.inside_mouth(x, y), 0.003) * front
        teeth = mouth * _ramp(y - g.MOUTH_Y + 0.001, 0.002)
        lips = np.clip(_ramp(g.inside_lips(x, y), 0.006) * front - mouth, 0.0, 1.0)
        brows = _ramp(g.inside_brow(x, y), 0.008) * front * (1 - eye)
        nostrils = _ramp(1.0 - ((xl + 0.036) / 0.017) ** 2 - ((y + 0.188) / 0.008) ** 2, 0.6) * front
        t = np.clip(((xl + 0.095) * -0.105 + (y + 0.16) * -0.21) / (0.105**2 + 0.21**2), 0.0, 1.0)
        d_fold = np.hypot(xl - (-0.095 - 0.105 * t), y - (-0.16 - 0.21 * t))
        fold = 0.45 * _ramp(0.008 - d_fold, 0.012) * (t > 0.05) * front
        masks = np.stack(
            [brows, lips, mouth - teeth, teeth, eye - iris, iris - pupil, pupil, lash * (1 - eye), nostrils, fold]
        )
        socket = _gauss(xl, y, -g.EYE_X, g.EYE_Y - 0.04, 0.08, 0.03) + 0.6 * _gauss(xl, y, -0.13, 0.12, 0.03, 0.04)
        socket *= (1 - eye) * front
        blush = _gauss(xl, y, -0.25, -0.15, 0.08, 0.07) * front
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
        return cls(
            masks=f32(masks),
            mask_sum=f32(masks.sum(0)),
            pattern=f32(skin_pattern(x, y) * front),
            socket=f32(socket),
            blush=f32(blush),
            phi=f32(np.abs(phi)),
            y=f32(y),
            streak=f32(1.0 + 0.07 * np.sin(70.0 * phi + 9.0 * y) + 0.05 * np.sin(23.0 * phi - 31.0 * y + 1.3)),
        )


@dataclass(frozen=True)
class FaceColours:
    """Random colours of one face (BGR in [0, 1])."""

    skin: np.ndarray  # (3,)
    features: np.ndarray  # (len(FEATURES), 3)
    hair: np.ndarray  # (3,)
    pattern_contrast: float
    socket_depth: float
    blush: float
    hairline: np.ndarray  # (2, k): |phi| knots and hairline heights
    bald: bool


def sample_colours(rng: np.random.Generator) -> FaceColours:
    """Skin tone, hair, eye, lip and mouth colours and the hairline of a random face."""
    tone = rng.random() ** 1.4
    skin = (_SKIN_LIGHT * (1 - tone) + _SKIN_DARK * tone) * np.exp(rng.normal(0.0, 0.05, 3))
    hair = _HAIR_COLOURS[rng.choice(len(_HAIR_COLOURS), p=_HAIR_WEIGHTS)] * np.exp(rng.normal(0.0, 0.12, 3))
    lips = skin * np.array([0.72, 0.62, 0.92]) * rng.uniform(0.75, 1.0)
    iris = _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] * rng.uniform(0.6, 1.1)
    features = np.stack(
        [
            0.65 * hair + 0.35 * skin * 0.45,  # brows
            lips,
            np.array([0.10, 0.09, 0.22]) * rng.uniform(0.4, 1.0),  # mouth inside
            np.array([0.78, 0.84, 0.86]) * rng.uniform(0.6, 1.0) if rng.random() < 0.75 else np.array([0.1, 0.09, 0.2]),
            np.array([0.84, 0.87, 0.9]) * rng.uniform(0.75, 1.0),  # sclera
            iris,
            np.array([0.03, 0.03, 0.035]),  # pupil
            np.array([0.07, 0.07, 0.09]) * 0.6 + skin * 0.4 * 0.3,  # lashes
            skin * 0.3,  # nostrils
            skin * 0.8,  # nasolabial fold
        ]
    )
    h0 = rng.uniform(0.40, 0.62)
    sideburn = rng.uniform(-0.1, 0.1)
    bald = rng.random() < 0.06
    if bald:
        h0 = 0.95
    hairline = np.array(
        [
            [0.0, 0.45, 0.8, 1.05, 1.25, 1.45, 1.6, 1.9],
            [h0, h0 - 0.02, h0 - 0.1, min(h0 - 0.25, 0.28), 0.02 + sideburn, 0.02 + sideburn, 0.16, 0.12],
        ]
    )
    if bald:
        hairline[1, :4] = 0.95
    return FaceColours(
        skin=skin,
        features=np.clip(features, 0.0, 1.0),
        hair=np.clip(hair, 0.0, 1.0),
        pattern_contrast=float(rng.uniform(0.04, 0.14)),
        socket_depth=float(rng.uniform(0.05, 0.3)),
        blush=float(rng.uniform(0.0, 0.06)),
        hairline=hairline,
        bald=bald,
    )


def albedo(canon: CanonicalAppearance, colours: FaceColours, index: np.ndarray) -> np.ndarray:
    """Planar surface colour (3, n) float32 of a face at the canonical samples ``index``."""
    mod = 1.0 + colours.pattern_contrast * canon.pattern[index] - colours.socket_depth * canon.socket[index]
    blush = canon.blush[index] * colours.blush
    bare = 1.0 - canon.mask_sum[index]
    feats = np.einsum("kn,kc->cn", np.take(canon.masks, index, axis=1), colours.features.astype(np.float32))
    line = np.interp(canon.phi[index], colours.hairline[0], colours.hairline[1]).astype(np.float32)
    hair = _ramp(canon.y[index] - line, 0.02).astype(np.float32)
    hair_streak = hair * canon.streak[index]
    out = np.empty((3, len(index)), np.float32)
    for ch, tint in enumerate((-0.6, -0.6, 1.0)):
        skin = colours.skin[ch] * mod + tint * blush
        out[ch] = (skin * bare + feats[ch]) * (1.0 - hair) + hair_streak * colours.hair[ch]
    return out
