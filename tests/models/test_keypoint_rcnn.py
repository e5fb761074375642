"""Keypoint R-CNN family: torchvision's keypoint path on the full-image box, losses, decoders, weights, training."""

import warnings

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models.detection import keypointrcnn_resnet50_fpn
from torchvision.ops import MultiScaleRoIAlign

from kit.config import load_pipeline, pipeline_from_dict
from kit.data.competition import Competition
from kit.data.folds import make_folds, write_folds
from kit.errors import KitError
from kit.metrics import mse
from kit.models import create_model, family_config, list_families
from kit.models.base import LandmarkModel
from kit.models.keypoint_rcnn import (
    DECODERS,
    KeypointRCNNModel,
    KeypointRCNNModelConfig,
    fpn_level,
    from_map_coords,
    load_weights,
    roi_level,
    to_map_coords,
)
from kit.predict.tta import predict_points
from kit.synth import generate_competition
from kit.train import fold_train

warnings.filterwarnings("ignore", category=UserWarning)
SIZE, N_POINTS = 64, 6
SMALL = {"fpn_channels": 16, "roi_size": 8, "head_channels": 16, "head_layers": 2}


def _pipeline(backbone="tu-test_resnet", pretrained=None, size=SIZE, **section):
    model = {"family": "keypoint_rcnn", "backbone": backbone, "keypoint_rcnn": {**SMALL, **section}}
    if pretrained:
        model["pretrained"] = pretrained
    return pipeline_from_dict({"name": "t", "input": {"size": size}, "model": model})


def _randomised(state: dict) -> dict:
    """Every float perturbed, BatchNorm statistics included, at the scale of the initialisation (no overflow)."""

    def perturb(key: str, v: torch.Tensor) -> torch.Tensor:
        if not v.is_floating_point():
            return v
        if key.endswith("running_var"):
            return torch.empty_like(v).uniform_(0.5, 1.5)
        return v * (1 + 0.1 * torch.randn_like(v)) + 0.01 * torch.randn_like(v)

    return {k: perturb(k, v) for k, v in state.items()}


def test_registered_with_its_config():
    assert "keypoint_rcnn" in list_families() and family_config("keypoint_rcnn") is KeypointRCNNModelConfig


@pytest.mark.parametrize("backbone", ["tu-test_resnet", "resnet18"])
@pytest.mark.parametrize("upscale", [1, 2])
def test_forward_shapes_and_every_decoder(backbone, upscale):
    model = create_model(_pipeline(backbone, upscale=upscale), N_POINTS)
    assert isinstance(model, KeypointRCNNModel)
    out = model(torch.randn(2, 3, SIZE, SIZE))
    side = 8 * 2 * upscale
    assert out.shape == (2, N_POINTS, side, side) and model.map_size == side
    for decoder in DECODERS:
        points = model.decode(out, decoder)
        assert points.shape == (2, N_POINTS, 2) and torch.isfinite(points).all()
        slack = SIZE / side  # DARK may step up to one map pixel past an edge pixel
        assert (points >= -0.5 - slack).all() and (points <= SIZE - 0.5 + slack).all()


def test_defaults_are_torchvisions_keypoint_branch():
    model = create_model(pipeline_from_dict({"name": "t", "model": {"family": "keypoint_rcnn"}}), 17)
    reference = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    ours = model.state_dict()
    theirs = {
        k.replace("backbone.body.", "backbone.").replace("backbone.fpn.", "fpn.").replace("roi_heads.", ""): v
        for k, v in reference.state_dict().items()
        if not k.startswith(("rpn.", "roi_heads.box_")) and not k.endswith("num_batches_tracked")
    }
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    assert model.map_size == 56
    # torchvision's trainable_backbone_layers=3: conv1 and layer1 frozen; FrozenBatchNorm2d has no parameters.
    trained = {k.split(".")[1] for k, p in model.named_parameters() if p.requires_grad and k.startswith("backbone.")}
    assert trained == {"layer2", "layer3", "layer4"}


@pytest.mark.parametrize("size", [64, 128, 256])
def test_pooling_matches_torchvisions_multiscale_pooler_on_the_whole_fpn(size):
    model = create_model(_pipeline("resnet18", size=size), N_POINTS).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        body = model.backbone(x)
        pyramid = model.fpn(body)  # torchvision's own FPN forward, every level
        boxes, shapes = model.boxes(x), [(size, size)] * 2
        reference = MultiScaleRoIAlign(["0", "1", "2", "3"], 8, 2)(pyramid, boxes, shapes)
        level = fpn_level(model.fpn, list(body.values()), model.level)
        torch.testing.assert_close(level, pyramid[str(model.level)])
        torch.testing.assert_close(model.keypoint_roi_pool({str(model.level): level}, boxes, shapes), reference)
    assert model.level == roi_level(size) == {64: 0, 128: 1, 256: 2}[size]


@pytest.mark.parametrize("size", [64, 128])
def test_every_trained_parameter_gets_a_gradient(size):
    # DistributedDataParallel refuses parameters that take part in no loss: the unused FPN blocks are frozen.
    model = create_model(_pipeline("resnet18", size=size, trainable_layers=5, frozen_bn=False), N_POINTS)
    model.loss(model(torch.randn(2, 3, size, size)), torch.rand(2, N_POINTS, 2) * size, 0.5).backward()
    missing = [k for k, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    frozen = {".".join(k.split(".")[:2]) for k, p in model.fpn.named_parameters() if not p.requires_grad}
    level = model.level
    assert frozen == {f"inner_blocks.{i}" for i in range(level)} | {f"layer_blocks.{i}" for i in range(4) if i != level}


def test_map_coordinates_round_trip_flip_and_match_torchvisions_discretisation():
    x = torch.tensor([0.0, 10.3, 63.0])
    for m in (16, 32, 56):
        u = to_map_coords(x, SIZE, m)
        torch.testing.assert_close(from_map_coords(u, SIZE, m), x)
        torch.testing.assert_close(to_map_coords(SIZE - 1 - x, SIZE, m), m - 1 - u)
        # torchvision's keypoints_to_heatmap floors (x + 0.5) * m / size: the map pixel that contains u.
        assert torch.equal(torch.floor((x + 0.5) * m / SIZE), torch.round(u))


def test_model_decodes_gaussian_targets_to_sub_pixel_points():
    model = create_model(_pipeline(sigma=1.0), N_POINTS)
    m = model.map_size
    points = 6 + torch.rand(2, N_POINTS, 2) * (SIZE - 13)
    coords = to_map_coords(points, SIZE, m)
    grid = torch.arange(m, dtype=torch.float32)
    logits = -((grid - coords[..., 1:2]) ** 2).unsqueeze(-1) / 2 - ((grid - coords[..., 0:1]) ** 2).unsqueeze(-2) / 2
    assert float(model.loss(logits, points, 0.0)) < 1e-4
    for decoder, tolerance in [("local_soft_argmax", 0.02), ("dark", 0.01), ("soft_argmax", 0.02)]:
        torch.testing.assert_close(model.decode(logits, decoder), points, atol=tolerance, rtol=0)
    assert (model.decode(logits, "torchvision") - points).abs().max() <= 0.5 + 1e-4  # argmax at input resolution
    assert (model.decode(logits, "argmax") - points).abs().max() <= SIZE / m / 2 + 1e-4


@pytest.mark.parametrize("target", ["gaussian", "one_hot"])
def test_loss_is_finite_and_decreases_on_a_fixed_batch(target):
    torch.manual_seed(0)
    model = create_model(_pipeline(target=target), N_POINTS)
    x = torch.randn(2, 3, SIZE, SIZE)
    points = 8 + torch.rand(2, N_POINTS, 2) * (SIZE - 17)
    points[0, 0] = torch.tensor([-3.0, 70.0])  # off the crop: dropped by one_hot, an edge target for gaussian
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(8):
        loss = model.loss(model(x), points, progress=step / 8)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2]), losses


@pytest.mark.slow  # builds big models or spawns processes
def test_equals_torchvisions_keypoint_path_with_the_full_image_box():
    torch.manual_seed(0)
    reference = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_keypoints=N_POINTS).eval()
    reference.load_state_dict(_randomised(reference.state_dict()))
    pipeline = pipeline_from_dict({"name": "t", "input": {"size": SIZE}, "model": {"family": "keypoint_rcnn"}})
    model = create_model(pipeline, N_POINTS).eval()
    load_weights(model, reference.state_dict(), "reference")  # the predictor fits: loaded too
    x = torch.randn(2, 3, SIZE, SIZE)
    heads = reference.roi_heads
    with torch.no_grad():
        features = reference.backbone(x)
        pooled = heads.keypoint_roi_pool(features, model.boxes(x), [(SIZE, SIZE)] * 2)
        expected = heads.keypoint_predictor(heads.keypoint_head(pooled))
        # FrozenBatchNorm2d here, BatchNorm2d there: the same maths in another order, float32 rounding apart.
        torch.testing.assert_close(model(x), expected, atol=1e-4 * float(expected.abs().max()), rtol=1e-4)


@pytest.mark.slow  # builds big models or spawns processes
def test_coco_layout_checkpoint_from_a_file(tmp_path):
    # torchvision's COCO checkpoint: 17 keypoints, FrozenBatchNorm2d (no num_batches_tracked), RPN and box head.
    coco = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    state = {k: v for k, v in _randomised(coco.state_dict()).items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "keypointrcnn_resnet50_fpn_coco.pth"
    torch.save(state, path)
    file = {"source": "file", "path": str(path)}
    pipeline = pipeline_from_dict(
        {"name": "t", "input": {"size": SIZE}, "model": {"family": "keypoint_rcnn", "pretrained": file}}
    )
    model = create_model(pipeline, N_POINTS)
    ours = model.state_dict()
    for prefix, mine in [
        ("backbone.body.", "backbone."),
        ("backbone.fpn.", "fpn."),
        ("roi_heads.keypoint_head.", "keypoint_head."),
    ]:
        keys = [k for k in state if k.startswith(prefix)]
        assert keys and all(torch.equal(ours[mine + k.removeprefix(prefix)], state[k]) for k in keys), prefix
    # The 17-keypoint predictor is replaced by one for N_POINTS.
    assert model.keypoint_predictor.kps_score_lowres.weight.shape == (512, N_POINTS, 4, 4)
    assert model(torch.randn(1, 3, SIZE, SIZE)).shape == (1, N_POINTS, 56, 56)
    # A head of another size cannot take the checkpoint's: the error names the part and the tensor.
    small = pipeline.model.model_copy(
        update={"keypoint_rcnn": pipeline.model.keypoint_rcnn.model_copy(update={"head_channels": 64})}
    )
    with pytest.raises(KitError, match=r"roi_heads\.keypoint_head\): shape mismatch .*0\.weight"):
        create_model(pipeline.model_copy(update={"model": small}), N_POINTS)


@pytest.mark.parametrize("backbone", ["resnet18", "tu-test_resnet"])
def test_classifier_checkpoint_loads_the_body(tmp_path, backbone):
    if backbone == "resnet18":
        classifier = torchvision.models.resnet18(weights=None)
    else:
        classifier = timm.create_model("test_resnet", pretrained=False)
    state = _randomised(classifier.state_dict())
    path = tmp_path / "classifier.pth"
    torch.save(state, path)
    model = create_model(_pipeline(backbone, pretrained={"source": "file", "path": str(path)}), N_POINTS)
    body = getattr(model.backbone, "model", model.backbone).state_dict()
    assert body and all(torch.equal(v, state[k]) for k, v in body.items())
    if backbone == "tu-test_resnet":
        assert model.mean == tuple(classifier.pretrained_cfg["mean"])
    else:
        assert model.mean == LandmarkModel.mean  # torchvision's detection transform normalises with ImageNet's


class _FlipSymmetric(LandmarkModel):
    """Raw outputs made exactly flip-equivariant: f(x) + mirror(f(flip x)), the maps mirrored along x."""

    def __init__(self, inner: KeypointRCNNModel, perm: torch.Tensor):
        super().__init__()
        self.inner, self.backbone, self.perm = inner, inner.backbone, perm
        self.n_points, self.mean, self.std = inner.n_points, inner.mean, inner.std

    def forward(self, x):
        return self.inner(x) + torch.flip(self.inner(torch.flip(x, dims=[3])), dims=[3])[:, self.perm]

    def decode(self, outputs):
        return self.inner.decode(outputs)


def test_flip_tta_of_an_equivariant_model_equals_plain_prediction():
    torch.manual_seed(0)
    inner = create_model(_pipeline(), N_POINTS)
    perm = np.arange(N_POINTS)
    perm[[0, 1, 2, 3]] = [1, 0, 3, 2]
    model = _FlipSymmetric(inner, torch.as_tensor(perm)).eval()
    images = torch.randint(0, 256, (3, SIZE, SIZE, 3), dtype=torch.uint8)
    loader = DataLoader(TensorDataset(images, torch.zeros(3, N_POINTS, 2), torch.arange(3)), batch_size=2)
    cpu = torch.device("cpu")
    plain = predict_points(model, loader, cpu, channels_last=False)
    tta = predict_points(model, loader, cpu, channels_last=False, flip_perm=perm)
    assert np.abs(plain - tta).max() < 1e-3
    raw = predict_points(inner.eval(), loader, cpu, channels_last=False)
    raw_tta = predict_points(inner, loader, cpu, channels_last=False, flip_perm=perm)
    assert np.abs(raw - raw_tta).max() > 1e-3


@pytest.mark.parametrize(
    "model, message",
    [
        ({"keypoint_rcnn": {"roi": 7}}, r"unknown key 'model\.keypoint_rcnn\.roi'"),
        ({"keypoint_rcnn": {"window": 4}}, r"key 'model\.keypoint_rcnn\.window'"),
        ({"keypoint_rcnn": {"trainable_layers": 6}}, r"key 'model\.keypoint_rcnn\.trainable_layers'"),
        ({"keypoint_rcnn": {"target": "mse"}}, r"key 'model\.keypoint_rcnn\.target'"),
        ({"backbone": "tu-resnet18", "keypoint_rcnn": {"frozen_bn": False}}, "torchvision ResNet backbones only"),
        ({"heatmap": {}}, r"unknown key 'model\.heatmap'"),
    ],
)
def test_config_errors_name_the_key(model, message):
    with pytest.raises(KitError, match=message):
        pipeline_from_dict({"name": "t", "model": {"family": "keypoint_rcnn", **model}}, "cfg")


def test_build_errors_name_the_key():
    with pytest.raises(KitError, match="'vgg16' is neither a torchvision ResNet"):
        create_model(_pipeline("vgg16"), N_POINTS)
    with pytest.raises(KitError, match="unknown timm model 'no_such_net'"):
        create_model(_pipeline("tu-no_such_net"), N_POINTS)
    with pytest.raises(KitError, match="model.pretrained.package"):
        create_model(_pipeline("resnet18", pretrained={"source": "package", "package": "efficientnet-lite0"}), 3)


def test_decoder_hooks():
    cfg = _pipeline(decoder="dark").model
    assert cfg.decoder == "dark"
    other = cfg.with_decoder("torchvision")
    assert other.decoder == "torchvision" and other.model_copy(update={"keypoint_rcnn": cfg.keypoint_rcnn}) == cfg
    with pytest.raises(KitError, match="--decoder 'nearest'"):
        cfg.with_decoder("nearest")


@pytest.mark.slow
def test_fold_train_end_to_end(tmp_path):
    root = tmp_path / "c"
    generate_competition(root, n_train=24, n_test=6, seed=3, n_points=100)
    comp = Competition.load(root)
    write_folds(comp.folds_csv, make_folds(comp.train.file_names, k=3, seed=0))
    path = tmp_path / "tiny_krcnn.yaml"
    section = "{fpn_channels: 16, roi_size: 4, head_channels: 16, head_layers: 2}"
    path.write_text(
        f"name: tiny_krcnn\nmodel: {{family: keypoint_rcnn, backbone: tu-test_resnet, keypoint_rcnn: {section}}}\n"
    )
    overrides = ["input.size=32", "input.pad=4", "train.batch_size=8", "train.epochs=2", "train.num_workers=0"]
    overrides += ["train.report_images=2", "optim.lr=3e-3", "tta.hflip=true"]
    metrics = fold_train(load_pipeline(path, overrides), root, out_dir=tmp_path / "runs")
    oof = np.load(tmp_path / "runs" / "tiny_krcnn" / "oof.npy")
    assert oof.shape == (24, 100, 2) and np.isfinite(oof).all()
    assert metrics.oof_mse == pytest.approx(mse(oof, comp.train.points), rel=1e-6)
    # Two tiny epochs do not fit the shapes, but the points come back in the images' frame, on the faces.
    assert metrics.oof_mse < mse(np.zeros_like(oof), comp.train.points) / 3
