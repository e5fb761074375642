"""kit's DARK decoder vs a plain numpy DARK after mmpose's, on noisy Gaussian maps with known sub-pixel centres.

Usage::

    python benchmarks/dark_vs_reference.py [--n 2000] [--old d336a00]

Prints the mean distance to the true centres in heatmap pixels for argmax, the dark decoder of the git revision
``--old`` (the one before DARK followed the target sigma: default blur 1.0 and blur = sigma; skipped when git
cannot show it), kit's dark decoder with its default blur and the reference (tests/codecs/test_dark_reference.py).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "codecs"))
from test_dark_reference import errors, gaussian_maps  # noqa: E402

CASES = [(16, 1.0), (32, 2.0), (64, 3.0)]  # map side, target sigma


def _old_codec(revision: str) -> types.ModuleType | None:
    try:
        source = subprocess.run(
            ["git", "show", f"{revision}:kit/codecs/heatmap.py"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = sys.modules["old_heatmap_codec"] = types.ModuleType("old_heatmap_codec")  # dataclasses look it up
    exec(compile(source, f"{revision}:kit/codecs/heatmap.py", "exec"), module.__dict__)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="maps per case")
    parser.add_argument("--old", default="d336a00", help="git revision of the previous dark decoder")
    args = parser.parse_args()
    old = _old_codec(args.old)
    names = ["argmax"] + (["old dark (blur 1)", "old dark (blur sigma)"] if old else []) + ["dark", "reference"]
    print(f"{'sigma':>5} {'map':>5} {'noise':>5} " + " ".join(f"{n:>21}" for n in names) + "   dark / reference")
    for size, sigma in CASES:
        for noise in (0.03, 0.1):
            maps, centres = gaussian_maps(args.n, size, sigma, noise, seed=1)
            err = errors(maps, centres, sigma)
            if old:
                for name, blur in (("old dark (blur 1)", 1.0), ("old dark (blur sigma)", sigma)):
                    xy = old.dark_decode(torch.from_numpy(maps), blur, "heatmap").double().numpy()
                    err[name] = float(np.linalg.norm(xy - centres, axis=-1).mean())
            row = " ".join(f"{err[n]:>21.4f}" for n in names)
            print(f"{sigma:>5} {size:>5} {noise:>5} {row}   {err['dark'] / err['reference']:.3f}")


if __name__ == "__main__":
    main()
