"""The Kaggle metadata of a bundle: ``dataset-metadata.json`` (``kaggle datasets create -r zip``) and
``kernel-metadata.json`` (``kaggle kernels push``: the bundle's ``predict.py`` as a script kernel, internet off).

Neither is listed in the manifest: ``kit bundle upload --dataset`` rewrites their dataset id.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from kit.bundle.manifest import DATASET_METADATA_FILE, KERNEL_METADATA_FILE
from kit.errors import KitError
from kit.io import write_json

SCRIPT_FILE = "predict.py"
_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


def check_dataset(ref: str, what: str = "--dataset") -> tuple[str, str]:
    """``USER/SLUG`` as (user, slug): Kaggle wants a slug of 6-50 lower-case letters, digits and dashes.

    Raises:
        KitError: naming the option and what is wrong.
    """
    parts = ref.split("/")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise KitError(f"{what} {ref!r}: expected USER/SLUG")
    user, slug = parts
    if not _SLUG.fullmatch(slug) or not 6 <= len(slug) <= 50:
        raise KitError(f"{what} {ref!r}: the slug must be 6-50 lower-case letters, digits and dashes")
    return user, slug


def default_dataset(name: str) -> str:
    """``$KAGGLE_USERNAME/kit-NAME`` (``USERNAME`` when unset), the name made a valid slug (``-bundle`` added to a
    short one)."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"kit-{name}".lower()).strip("-")[:50].rstrip("-")
    slug = slug if len(slug) >= 6 else f"{slug}-bundle"
    return f"{os.environ.get('KAGGLE_USERNAME') or 'USERNAME'}/{slug}"


def dataset_metadata(dataset: str) -> dict:
    user, slug = check_dataset(dataset)
    return {
        "title": slug,
        "id": f"{user}/{slug}",
        "licenses": [{"name": "other"}],
        "description": "Offline inference bundle written by `kit bundle`: fold weights, kit's wheel and predict.py. "
        "Licences of the pretrained weights: WEIGHTS_LICENCE.md.",
    }


def kernel_metadata(dataset: str, competition: str | None) -> dict:
    user, slug = check_dataset(dataset)
    kernel = f"{slug}-predict"
    return {
        "id": f"{user}/{kernel}",
        "title": kernel,
        "code_file": SCRIPT_FILE,
        "language": "python",
        "kernel_type": "script",
        "is_private": "true",
        "enable_gpu": "true",
        "enable_tpu": "false",
        "enable_internet": "false",  # code competitions score notebooks run offline; the client's default is true
        "dataset_sources": [f"{user}/{slug}"],
        "competition_sources": [competition] if competition else [],
        "kernel_sources": [],
        "model_sources": [],
    }


def write_metadata(root: Path, dataset: str, competition: str | None) -> None:
    write_json(root / DATASET_METADATA_FILE, dataset_metadata(dataset))
    write_json(root / KERNEL_METADATA_FILE, kernel_metadata(dataset, competition))
