"""Reading, validating and caching the competition data."""

from kit.data.competition import Competition
from kit.data.images import load_image, read_image_size
from kit.data.landmarks import Landmarks, TestPoints, point_columns, read_landmarks, read_test_points

__all__ = [
    "Competition",
    "Landmarks",
    "TestPoints",
    "load_image",
    "point_columns",
    "read_image_size",
    "read_landmarks",
    "read_test_points",
]
