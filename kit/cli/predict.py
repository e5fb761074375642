"""``kit predict``: a finished run's OOF and test predictions again, with another TTA or heatmap decoder."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from kit.cli._common import console, handle_errors


class TTAChoice(str, Enum):
    none = "none"
    hflip = "hflip"


class DecoderChoice(str, Enum):
    argmax = "argmax"
    soft_argmax = "soft_argmax"
    local_soft_argmax = "local_soft_argmax"
    dark = "dark"


@handle_errors
def predict(
    run_dir: Annotated[Path, typer.Argument(help="Finished run folder (pipeline.yaml, split.json, fold*/best.pt).",
                                            exists=True, file_okay=False)],
    data: Annotated[Path, typer.Option(help="Competition folder the run was trained on.")],
    tta: Annotated[TTAChoice | None, typer.Option(help="Test-time augmentation (default: the run's).")] = None,
    decoder: Annotated[DecoderChoice | None, typer.Option(help="Heatmap decoder (default: the run's).")] = None,
    name: Annotated[str | None, typer.Option(help="New run name (default: RUN-hflip|noflip[-DECODER]).")] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing run of that name (never the source).")] = False,
) -> None:
    """Recompute OOF and test predictions from the fold checkpoints, without retraining, into a new run folder."""
    from kit.cli.train import RichReporter
    from kit.predict import repredict

    result = repredict(run_dir, data, tta=tta.value if tta else None, decoder=decoder.value if decoder else None,
                       name=name, force=force, reporter=RichReporter())
    source = result.source_oof_mse
    versus = f" (source {source:.4f})" if source is not None else ""
    console.print(f"OOF MSE {result.metrics['oof_mse']:.4f}{versus}, written to {result.run_dir}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(predict)
