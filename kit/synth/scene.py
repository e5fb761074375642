"""One synthetic photo: sample a face, pose, light and placement, render it small, finish at full size."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from kit.synth.appearance import sample_colours
from kit.synth.background import draw_background
from kit.synth.body import draw_body
from kit.synth.effects import add_occluders, degrade
from kit.synth.face import FaceTemplate
from kit.synth.pose import Placement, project, sample_placement, sample_pose
from kit.synth.render import head_mesh, render_surface, sample_light
from kit.synth.shape import ShapeBasis, sample_coefficients

RENDER_SCALE = 100.0  # render-canvas pixels per face unit at most; larger outputs are upscaled


@dataclass(frozen=True)
class LandmarkModel:
    """The template with its shape basis and the point groups the scene needs."""

    template: FaceTemplate
    basis: ShapeBasis
    box: np.ndarray  # indices of jaw and brow points: the face-detector box
    eyes: tuple[np.ndarray, np.ndarray]  # indices of the left and right eye contours
    lower_face: np.ndarray  # indices of jaw points below the mouth and of the lips
    brows: np.ndarray


@lru_cache(maxsize=4)
def landmark_model(template: FaceTemplate) -> LandmarkModel:
    """Precompute what rendering needs about a template."""
    names = {name: k for k, name in enumerate(template.part_names)}
    x, y = template.points3d[:, 0], template.points3d[:, 1]
    part = template.parts
    eyes = part == names["eyes"]
    return LandmarkModel(
        template=template,
        basis=ShapeBasis.at(template.points3d),
        box=np.flatnonzero((part == names["jaw"]) | (part == names["brows"])),
        eyes=(np.flatnonzero(eyes & (x < 0)), np.flatnonzero(eyes & (x > 0))),
        lower_face=np.flatnonzero(((part == names["jaw"]) & (y < -0.3)) | (part == names["lips_outer"])),
        brows=np.flatnonzero(part == names["brows"]),
    )


def _to_canvas(placement: Placement, kx: float, ky: float):
    def f(plane: np.ndarray) -> np.ndarray:
        px = placement.to_pixels(plane)
        return np.stack([(px[0] + 0.5) * kx - 0.5, (px[1] + 0.5) * ky - 0.5])

    return f


def make_image(rng: np.random.Generator, model: LandmarkModel, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Render one photo.

    Returns:
        The image (H, W, 3) or (H, W) uint8 and the landmarks (P, 2) in its pixels (x right, y down; may fall
        outside the image).
    """
    coefficients = sample_coefficients(rng)
    pose = sample_pose(rng)
    colours = sample_colours(rng)
    light = sample_light(rng)
    rotation = pose.rotation

    plane, _ = project(model.basis.apply(coefficients), rotation, pose.distance)
    placement = sample_placement(rng, plane[:, model.box])
    landmarks = placement.to_pixels(plane.astype(np.float64))

    k = min(1.0, RENDER_SCALE / placement.scale)
    wr, hr = max(16, round(placement.width * k)), max(16, round(placement.height * k))
    to_canvas = _to_canvas(placement, wr / placement.width, hr / placement.height)
    canvas = draw_background(rng, hr, wr, noise)

    def project_parts(points: np.ndarray, rot: np.ndarray) -> np.ndarray:
        return to_canvas(project(points, rot, pose.distance)[0])

    draw_body(canvas, rng, project_parts, pose, colours, light)
    mesh = head_mesh()
    points = mesh.basis.apply(coefficients)
    surface_plane, depth = project(points, rotation, pose.distance)
    render_surface(canvas, mesh, points, rotation, to_canvas(surface_plane), depth, colours, light)

    img = canvas
    if (wr, hr) != (placement.width, placement.height):
        img = cv2.resize(canvas, (placement.width, placement.height), interpolation=cv2.INTER_LINEAR)
    eyes = tuple(landmarks[:, idx].mean(axis=1) for idx in model.eyes)
    add_occluders(rng, img, eyes, landmarks[:, model.lower_face], landmarks[:, model.brows], colours.skin, colours.hair)
    return degrade(rng, img, noise), landmarks.T
