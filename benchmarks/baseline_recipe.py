"""The organizers' 2020 baseline recipe, written plainly (no kit code), as the yardstick of ``vs_baseline.sh``.

torchvision resnet18 regression (from scratch: nothing downloads here), shorter side scaled to 128 then a centre
crop of 128, Adam with amsgrad at lr 1e-3, MSE on crop coordinates, batch 32, trained on all training rows for a
wall-time budget, then the test images predicted, mapped back to original pixels and written as a submission.

Usage: python benchmarks/baseline_recipe.py DATA_DIR --seconds S --out SUBMISSION.csv [--size 128] [--batch 32]
"""

from __future__ import annotations

import argparse
import ast
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import torchvision

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def load(path: Path, size: int) -> tuple[np.ndarray, float, np.ndarray]:
    """The image scaled so its shorter side is ``size`` and centre-cropped: (crop, scale, offset of the crop)."""
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    h, w = image.shape[:2]
    scale = size / min(h, w)
    image = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_LINEAR)
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top : top + size, left : left + size], scale, np.array([left, top], np.float32)


def tensors(paths: list[Path], size: int):
    crops, scales, offsets = zip(*(load(p, size) for p in paths), strict=True)
    x = (np.stack(crops).astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), np.array(scales, np.float32), np.stack(offsets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--seconds", type=float, required=True, help="training wall-time budget")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    train = pd.read_csv(args.data / "train" / "landmarks.csv", sep="\t")
    points = train.drop(columns="file_name").to_numpy(np.float32).reshape(len(train), -1, 2)
    n_points = points.shape[1]
    x, scales, offsets = tensors([args.data / "train" / "images" / n for n in train["file_name"]], args.size)
    y = torch.from_numpy(points * scales[:, None, None] - offsets[:, None, :]).reshape(len(train), -1)

    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, 2 * n_points)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, amsgrad=True)
    budget_end = started + args.seconds
    epoch = 0
    while time.perf_counter() < budget_end:
        model.train()
        order = torch.randperm(len(x))
        losses = []
        for start in range(0, len(x), args.batch):
            rows = order[start : start + args.batch]
            loss = torch.nn.functional.mse_loss(model(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
            if time.perf_counter() >= budget_end:
                break
        epoch += 1
        print(f"epoch {epoch}  loss {np.mean(losses):.2f}  {time.perf_counter() - started:.0f} s", flush=True)

    test = pd.read_csv(args.data / "test" / "test_points.csv", sep="\t")
    tx, tscales, toffsets = tensors([args.data / "test" / "images" / n for n in test["file_name"]], args.size)
    model.eval()
    with torch.no_grad():
        crop = torch.cat([model(tx[i : i + 256]) for i in range(0, len(tx), 256)]).numpy().reshape(len(tx), -1, 2)
    original = (crop + toffsets[:, None, :]) / tscales[:, None, None]
    requested = [ast.literal_eval(v) for v in test["point_index_list"]]
    rows = [
        [name, *original[i, idx].reshape(-1).tolist()]
        for i, (name, idx) in enumerate(zip(test["file_name"], requested, strict=True))
    ]
    columns = ["file_name"] + [f"Point_M{k}_{a}" for k in range(len(requested[0])) for a in "XY"]
    pd.DataFrame(rows, columns=columns).to_csv(args.out, index=False)
    print(f"baseline: {epoch} epochs in {time.perf_counter() - started:.0f} s, wrote {args.out}")


if __name__ == "__main__":
    main()
