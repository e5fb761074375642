"""``kit predict``: a finished run's OOF and test predictions again, with another TTA or heatmap decoder."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from kit.cli._common import DecoderChoice, WorkspaceOption, console, echo_workspace, handle_errors


class TTAChoice(str, Enum):
    none = "none"
    hflip = "hflip"


@handle_errors
def predict(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="Finished run folder (pipeline.yaml, split.json, fold*/best.pt).", exists=True, file_okay=False
        ),
    ],
    data: Annotated[Path, typer.Option(help="Competition folder the run was trained on.")],
    tta: Annotated[TTAChoice | None, typer.Option(help="Test-time augmentation (default: the run's).")] = None,
    decoder: Annotated[DecoderChoice | None, typer.Option(help="Heatmap decoder (default: the run's).")] = None,
    name: Annotated[str | None, typer.Option(help="New run name (default: RUN-hflip|noflip[-DECODER]).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing run of that name (never the source).")] = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Recompute OOF and test predictions from the fold checkpoints, without retraining, into a new run folder."""
    from kit.cli.train import RichReporter
    from kit.metrics import format_nme
    from kit.predict.repredict import repredict

    echo_workspace(data, workspace)
    result = repredict(
        run_dir,
        data,
        tta=tta.value if tta else None,
        decoder=decoder.value if decoder else None,
        name=name,
        force=force,
        reporter=RichReporter(),
        workspace=workspace,
    )
    source = result.source_oof_mse
    versus = f" (source {source:.4f})" if source is not None else ""
    nme = format_nme(result.metrics.oof_nme, result.metrics.oof_failure_rate)
    console.print(f"OOF MSE {result.metrics.oof_mse:.4f}{versus}, {nme}, written to {result.run_dir}", highlight=False)


@handle_errors
def infer(
    source: Annotated[
        Path,
        typer.Argument(
            help="A finished run folder, or a blend's or stack's NAME.json (its runs, combined as its submission).",
            exists=True,
        ),
    ],
    images: Annotated[
        Path, typer.Option(help="Folder of face images (.jpg, .png, ...).", exists=True, file_okay=False)
    ],
    out: Annotated[Path, typer.Option(help="CSV to write, in the landmarks.csv layout (TAB-separated, all points).")],
    overlays: Annotated[Path | None, typer.Option(help="Also write one PNG per image with its points here.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per batch (default: the run's x 2).")] = None,
    force: Annotated[
        bool, typer.Option(help="Replace an existing --out file (never one inside the images, the data or a run).")
    ] = False,
    max_pixels: Annotated[
        int | None,
        typer.Option(
            min=1, help="Largest image accepted (width x height). Default: $KIT_MAX_IMAGE_PIXELS, else 50000000."
        ),
    ] = None,
) -> None:
    """All landmarks for any folder of face images, from a run's fold models or a blend or stack of runs."""
    from kit.cli.train import RichReporter
    from kit.data.images import max_image_pixels, pixel_limit
    from kit.predict.infer import infer as run_infer

    with pixel_limit(max_pixels):  # the decoding threads read the limit from the environment
        max_image_pixels()  # a malformed $KIT_MAX_IMAGE_PIXELS fails before any work
        result = run_infer(
            source, images, out, overlays=overlays, force=force, batch_size=batch_size, reporter=RichReporter()
        )
    extra = f", overlays in {result.overlays}" if result.overlays is not None else ""
    console.print(
        f"wrote {result.csv}: {len(result.file_names)} images x {result.points.shape[1]} points "
        f"({result.images_per_second:,.0f} images/s){extra}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command()(predict)
    app.command()(infer)
