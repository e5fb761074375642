"""``kit bundle SOURCE --out DIR`` and ``kit bundle upload DIR --dataset USER/SLUG``: offline inference for Kaggle
code competitions."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from kit.bundle.upload import EXIT_CODES  # cheap: no torch
from kit.cli._common import echo, err_console, handle_errors


class _BuildByDefault(TyperGroup):
    """``kit bundle SOURCE ...`` runs ``kit bundle build SOURCE ...``; ``kit bundle upload ...`` the upload."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["build", *args]
        return super().parse_args(ctx, args)


class Half(str, Enum):
    fp16 = "fp16"
    bf16 = "bf16"


bundle_app = typer.Typer(
    cls=_BuildByDefault,
    help="A trained run, blend or stack as an offline inference package for Kaggle code competitions: "
    "kit bundle SOURCE --out DIR, then kit bundle upload DIR --dataset USER/SLUG.",
    no_args_is_help=True,
)


@bundle_app.command()
@handle_errors
def build(
    source: Annotated[
        Path, typer.Argument(help="A finished run folder, or a blend's or stack's NAME.json.", exists=True)
    ],
    out: Annotated[Path, typer.Option(help="The bundle folder to write.")],
    wheels: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            file_okay=False,
            help="Folder of wheels of dependencies the target image lacks, installed offline by predict.py "
            "(default: none; the manifest names what it assumes present).",
        ),
    ] = None,
    half: Annotated[
        Half | None, typer.Option(help="Store the weights in half precision (fp16 or bf16): half the size.")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="Kaggle dataset USER/SLUG the metadata names (default: $KAGGLE_USERNAME/kit-NAME)."),
    ] = None,
    competition: Annotated[
        str | None, typer.Option(help="Competition slug the kernel reads (kernel-metadata.json).")
    ] = "made-thousand-facial-landmarks",
    data: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            file_okay=False,
            help="Competition folder: predict a few of its test images with the bundle to measure its speed "
            "(and, with --half, how far the predictions move).",
        ),
    ] = None,
    measure: Annotated[int, typer.Option(min=1, help="Test images predicted to measure, with --data.")] = 32,
    force: Annotated[
        bool, typer.Option(help="Replace an existing bundle at --out once the new one is complete.")
    ] = False,
) -> None:
    """Write a self-contained bundle: fold weights (.safetensors), pipelines, flip permutations, the ensemble
    record, kit's wheel, predict.py, manifest.json (sha256 of every file), the weights' licence note and the Kaggle
    metadata (internet off)."""
    from kit.bundle.build import build_bundle

    built = build_bundle(
        source,
        out,
        wheels=wheels,
        half=half.value if half else None,
        dataset=dataset,
        competition=competition,
        force=force,
        data=data,
        measure_images=measure,
        log=echo,
    )
    m = built.manifest
    folds = sum(len(run.folds) for run in m.runs)
    echo(
        f"wrote {built.out}: {m.kind} of {len(m.runs)} run(s), {folds} fold models ({m.weights_dtype}), "
        f"{len(m.files)} files, {built.size_bytes / 1e6:.1f} MB"
    )
    measured = built.measured
    if measured is None:
        half_note = " and how far half precision moves the predictions" if half else ""
        echo(f"speed{half_note}: not measured (give --data COMPETITION to predict a few of its test images)")
    else:
        echo(
            f"predict: {measured.images} images in {measured.seconds:.1f} s = {measured.images_per_second:,.1f} "
            f"images/s on {measured.device} (crops and all {folds} fold models, loaded from the bundle)"
        )
        if measured.half_max_change_px is not None:
            echo(
                f"{m.weights_dtype} weights: predicted coordinates move by at most {measured.half_max_change_px:.4f} "
                f"px (mean {measured.half_mean_change_px:.4f} px) from the float32 checkpoints"
            )
    echo(f"next: kit bundle upload {built.out} --dataset USER/SLUG; kaggle kernels push -p {built.out}")


@bundle_app.command(epilog="Exit codes: " + "; ".join(f"{code}: {text}" for code, text in EXIT_CODES.items()) + ".")
@handle_errors
def upload(
    bundle_dir: Annotated[Path, typer.Argument(help="A bundle folder written by kit bundle.", exists=True)],
    dataset: Annotated[str, typer.Option(help="Kaggle dataset USER/SLUG: created, or given a new version.")],
    notes: Annotated[str | None, typer.Option(help="Version notes (a new version of an existing dataset).")] = None,
    public: Annotated[bool, typer.Option(help="Make a new dataset public (default: private).")] = False,
    timeout: Annotated[
        float | None, typer.Option(help="Seconds a Kaggle request may stall (env KIT_KAGGLE_TIMEOUT, default 30).")
    ] = None,
    retries: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Retries of the status check and of an upload that created nothing, on HTTP 5xx, timeouts and "
            "dropped connections (never the create call; env KIT_KAGGLE_RETRIES, default 3).",
        ),
    ] = None,
) -> None:
    """Upload a bundle as a Kaggle dataset with the official client, folders zipped (never skipped); the bundle is
    checked against its manifest first."""
    from kit.bundle.upload import upload_bundle
    from kit.submit.kaggle import Network

    def notify(line: str) -> None:
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)

    net = Network.from_env(timeout_s=timeout, retries=retries, notify=notify)
    done = upload_bundle(bundle_dir, dataset, notes=notes, public=public, net=net)
    what = "created the dataset" if done.new else "created a new version of"
    echo(f"{what} {done.dataset} ({done.entries} entries, folders as zips): {done.url}")
    echo(f"next: kaggle kernels push -p {bundle_dir}")


def register(app: typer.Typer) -> None:
    app.add_typer(bundle_app, name="bundle")
