"""Kit as a wheel built from its checkout, offline, and the third-party packages a bundle assumes on the target.

The wheel is built from a copy of the checkout's ``pyproject.toml``, ``README.md`` and ``kit/`` (so the checkout
gets no ``build/`` folder) with ``pip wheel --no-deps --no-build-isolation --no-index``: setuptools, already
installed, builds it without the network.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import kit
from kit.errors import KitError

_SOURCES = ("pyproject.toml", "README.md")


def checkout() -> Path:
    """The folder kit is installed from in editable mode (holding ``pyproject.toml``).

    Raises:
        KitError: kit is installed from a wheel, not from a checkout.
    """
    root = Path(kit.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise KitError(f"{root}: kit is not installed from a checkout (pip install -e .); cannot build its wheel")
    return root


def build_kit_wheel(out_dir: Path) -> Path:
    """Build kit's wheel into ``out_dir``; returns its path.

    Raises:
        KitError: the build failed (pip's last line).
    """
    root = checkout()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kit-wheel-") as tmp:
        source = Path(tmp) / "src"
        source.mkdir()
        for name in _SOURCES:
            if (root / name).is_file():
                shutil.copy2(root / name, source / name)
        shutil.copytree(root / "kit", source / "kit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        built = Path(tmp) / "wheel"
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        done = subprocess.run(
            [*command, "--quiet", "-w", str(built), str(source)], capture_output=True, text=True, cwd=tmp
        )
        wheels = sorted(built.glob("kit-*.whl")) if built.is_dir() else []
        if done.returncode != 0 or len(wheels) != 1:
            lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            raise KitError(f"building kit's wheel failed: {lines[-1] if lines else f'exit {done.returncode}'}")
        target = out_dir / wheels[0].name
        shutil.copy2(wheels[0], target)
    return target


def assumed_packages() -> dict[str, str]:
    """Kit's runtime dependencies (no extras) with their versions here: what the target image must provide."""
    found = {}
    for text in importlib.metadata.requires("kit") or []:
        name = re.match(r"[A-Za-z0-9._-]+", text)
        if name is None or re.search(r";.*\bextra\s*==", text):
            continue
        try:
            found[name.group()] = importlib.metadata.version(name.group())
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def module_owners(distributions: dict[str, str]) -> dict[str, str]:
    """Top-level module -> distribution, for the given distributions (``cv2`` -> ``opencv-python-headless``)."""
    wanted = {_normalise(name): name for name in distributions}
    owners = {}
    for module, names in importlib.metadata.packages_distributions().items():
        for name in names:
            if _normalise(name) in wanted and not module.startswith("_"):
                owners[module] = wanted[_normalise(name)]
    return dict(sorted(owners.items()))


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
