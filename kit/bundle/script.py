"""Landmarks with this kit bundle, offline: a Kaggle code competition's submission, or every point of any images.

    python predict.py                                   # in a Kaggle notebook: finds the bundle and the competition
    python predict.py --data COMPETITION_DIR --out submission.csv [--batch-size N]
    python predict.py --images FOLDER --out landmarks.csv

It checks every file of the bundle against manifest.json (a missing or changed file stops it, named), installs kit
from the bundle's wheels with pip --no-index when kit is not installed, then runs kit.bundle.predict (crops, TTA,
decoders and ensemble as `kit infer`). Written by `kit bundle`; uses only the standard library until kit is in.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

MANIFEST = "manifest.json"
KAGGLE_INPUT = Path("/kaggle/input")


def fail(message: str) -> None:
    sys.exit(f"error: {message}")


def find_bundle(given: Path | None) -> Path:
    """``--bundle``, else this script's folder, else the one kit bundle under /kaggle/input."""
    if given is not None:
        return given
    here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
    if (here / MANIFEST).is_file():
        return here
    found = sorted({p.parent for depth in ("*", "*/*", "*/*/*") for p in KAGGLE_INPUT.glob(f"{depth}/{MANIFEST}")})
    if len(found) != 1:
        fail(f"{'no' if not found else len(found)} kit bundles found under {KAGGLE_INPUT}; give --bundle DIR")
    return found[0]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify(bundle: Path) -> dict:
    """The manifest, once every file it lists has its size and sha256."""
    path = bundle / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        fail(f"{path}: not a readable kit bundle manifest ({type(exc).__name__})")
    for rel, entry in files.items():
        file = bundle / rel
        if not file.is_file():
            fail(f"{file}: missing (listed in {MANIFEST}); the bundle is incomplete")
        if file.stat().st_size != entry["size"] or sha256(file) != entry["sha256"]:
            fail(f"{file}: checksum mismatch with {MANIFEST}; the file was changed or damaged")
    return manifest


def installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def pip_install(args: list[str]) -> None:
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--quiet", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        fail(f"pip install {' '.join(args)} failed: {lines[-1] if lines else done.returncode}")


def ensure_kit(bundle: Path, manifest: dict) -> None:
    """Install the bundle's kit wheel (no dependencies: they are on the image) and its extra wheels, offline."""
    extra = [bundle / rel for rel in manifest.get("wheels", [])]
    if extra:
        pip_install(["--find-links", str(extra[0].parent), *map(str, extra)])
    if installed("kit") != manifest["kit_version"]:
        pip_install(["--no-deps", "--force-reinstall", str(bundle / manifest["kit_wheel"])])
        importlib.invalidate_caches()


def warn_versions(manifest: dict) -> None:
    differ = [
        f"{name} {have} (built with {want})"
        for name, want in manifest.get("assumes", {}).items()
        if (have := installed(name)) is not None and have != want
    ]
    if differ:
        print(f"warning: versions differ from the bundle's build: {', '.join(differ)}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--bundle", type=Path, help="the bundle folder (default: found)")
    args, rest = parser.parse_known_args()
    bundle = find_bundle(args.bundle)
    manifest = verify(bundle)
    ensure_kit(bundle, manifest)
    warn_versions(manifest)
    try:
        from kit.bundle.predict import main as predict
    except ModuleNotFoundError as exc:
        module = (exc.name or "?").split(".")[0]
        dist = manifest.get("modules", {}).get(module, module)
        want = manifest.get("assumes", {}).get(dist)
        built = f"; the bundle was built with {dist}=={want}" if want else ""
        fail(f"missing dependency '{module}'{built}: add its wheel with kit bundle --wheels DIR")
    return predict(bundle, rest)


if __name__ == "__main__":
    sys.exit(main())
