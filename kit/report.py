"""``report.png``: learning curves per fold and validation images with true and predicted points."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kit.io import atomic_path  # noqa: E402


def write_report(
    path: Path,
    summaries: list,
    train_cache,
    points: np.ndarray,
    oof: np.ndarray,
    pipeline,
    nme_points: tuple[int, int] | None = None,
    scores=None,
) -> None:
    """Curves (train loss, valid MSE in original pixels) and a grid of validation crops, atomically; the title
    and each crop give the MSE and the NME (``nme_points``: the face size's two points, None: the face box).

    Only the rows drawn are read from ``points`` and ``oof`` (either may be memory-mapped).

    Args:
        summaries: the folds' ``kit.runs.FoldSummary`` records; train_cache: the training ``CropCache``;
        points: (N, P, 2) training points and oof: (N, P, 2) OOF predictions, in original pixels.
        scores: the OOF ``kit.metrics.Scores`` for the title (default: computed, a pass over both arrays).
    """
    from kit.metrics import landmark_scores, nme_per_face, normalisation

    scores = scores if scores is not None else landmark_scores(oof, points, nme_points)
    n_images = min(pipeline.train.report_images, len(oof))
    cols = 6
    rows = 1 + (n_images + cols - 1) // cols
    fig = plt.figure(figsize=(3 * cols, 3 * rows))
    ax_loss = fig.add_subplot(rows, 2, 1)
    ax_mse = fig.add_subplot(rows, 2, 2)
    for s in summaries:  # kit.runs.FoldSummary records
        epochs = [h.epoch + 1 for h in s.history]
        ax_loss.plot(epochs, [h.train_loss for h in s.history], label=f"fold {s.fold}")
        ax_mse.plot(epochs, [h.valid_mse for h in s.history], label=f"fold {s.fold}")
    ax_loss.set(title="train loss", xlabel="epoch", yscale="log")
    ax_mse.set(title="valid MSE (original px)", xlabel="epoch", yscale="log")
    ax_loss.legend(fontsize=7)
    ax_mse.legend(fontsize=7)

    if n_images:
        chosen = np.linspace(0, len(oof) - 1, n_images).astype(int)
        images = train_cache.images()
        true, pred = np.asarray(points[chosen]), np.asarray(oof[chosen])
        cache_true = train_cache.to_cache(true, chosen)
        transforms = train_cache.transforms()[chosen]
        from kit.data.geometry import apply_affine

        cache_pred = apply_affine(pred, transforms)
        size, pad = train_cache.size, train_cache.pad
        for i, row in enumerate(chosen):
            ax = fig.add_subplot(rows, cols, cols + i + 1)
            ax.imshow(images[row][pad : pad + size, pad : pad + size])
            t, p = cache_true[i] - pad, cache_pred[i] - pad
            ax.scatter(t[:, 0], t[:, 1], s=4, c="lime", linewidths=0)
            ax.scatter(p[:, 0], p[:, 1], s=4, c="red", linewidths=0)
            err = float(((pred[i] - true[i]) ** 2).mean())
            nme = float(nme_per_face(pred[i : i + 1], true[i : i + 1], nme_points)[0])
            ax.set_title(f"row {row}  MSE {err:.1f}  NME {nme:.1f}%", fontsize=8)
            ax.set(xlim=(0, size), ylim=(size, 0))
            ax.axis("off")
    fig.suptitle(
        f"{pipeline.name}: OOF {scores} (NME by {normalisation(nme_points)}); "
        "green = truth, red = out-of-fold prediction"
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def report_writer(train_cache, points: np.ndarray, pipeline, nme_points: tuple[int, int] | None = None):
    """The ``report(path, summaries, oof, scores)`` callback that ``RunDir.assemble`` calls to draw ``report.png``."""

    def report(path: Path, summaries: list, oof: np.ndarray, scores) -> None:
        write_report(path, summaries, train_cache, points, oof, pipeline, nme_points, scores)

    return report
