"""Heatmap family: shapes at each stride, losses, pretrained weights from a file, flip TTA for both families."""

import warnings

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from kit.config import pipeline_from_dict
from kit.errors import KitError
from kit.losses import awing_weight_map, heatmap_adaptive_wing, heatmap_l2
from kit.models import create_model
from kit.models.base import LandmarkModel
from kit.models.heatmap import HeatmapConfig, HeatmapModel, HeatmapModelConfig
from kit.models.regression import RegressionModel
from kit.predict.tta import predict_points as predict

warnings.filterwarnings("ignore", category=UserWarning)
SIZE, N_POINTS = 64, 6
SMALL_UNET = [16, 16, 8, 8, 8]


def _pipeline(family="heatmap", backbone="tu-test_resnet", **heatmap):
    heatmap.setdefault("decoder_channels", SMALL_UNET)
    model = {"family": family, "backbone": backbone}
    if family == "heatmap":
        model["heatmap"] = heatmap
    return pipeline_from_dict({"name": "t", "input": {"size": SIZE}, "model": model})


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_unet_forward_shapes_at_each_stride(stride):
    model = create_model(_pipeline(stride=stride), N_POINTS)
    assert isinstance(model, HeatmapModel)
    out = model(torch.randn(2, 3, SIZE, SIZE))
    assert out.shape == (2, N_POINTS, SIZE // stride, SIZE // stride)
    assert model.decode(out).shape == (2, N_POINTS, 2)
    # The decoder stops at the stride: no block computes anything finer.
    assert len(model.decoder.blocks) == {1: 5, 2: 4, 4: 3}[stride]
    assert model.head.scale == 1


@pytest.mark.parametrize("arch, stride, scale", [("FPN", 2, 2.0), ("UnetPlusPlus", 4, 0.25)])
def test_decoders_ending_at_another_stride_are_resampled(arch, stride, scale):
    extra = {
        "arch_kwargs": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
        "decoder_channels": None,
    }
    settings = extra if arch == "FPN" else {"decoder_channels": [8, 8, 8, 8, 8]}
    model = create_model(_pipeline(arch=arch, stride=stride, **settings), N_POINTS)
    assert model.head.scale == scale
    assert model(torch.randn(1, 3, SIZE, SIZE)).shape == (1, N_POINTS, SIZE // stride, SIZE // stride)


def test_config_errors_name_the_key():
    with pytest.raises(KitError, match="model.heatmap.arch"):
        create_model(_pipeline(arch="NoSuchNet"), N_POINTS)
    with pytest.raises(KitError, match="arch_kwargs"):
        create_model(_pipeline(arch_kwargs={"no_such_argument": 1}), N_POINTS)
    with pytest.raises(KitError, match="nothing to train"):
        create_model(_pipeline(heatmap_loss="none", coord_weight=0), N_POINTS)
    with pytest.raises(KitError, match="model.pretrained.package"):
        pipeline = _pipeline().model_dump()
        pipeline["model"]["pretrained"] = {"source": "package", "package": "efficientnet-lite0"}
        create_model(pipeline_from_dict(pipeline), N_POINTS)


def test_decoder_hooks():
    heatmap = _pipeline(decoder="dark").model
    assert isinstance(heatmap, HeatmapModelConfig) and isinstance(heatmap.heatmap, HeatmapConfig)
    assert heatmap.decoder == "dark"
    other = heatmap.with_decoder("argmax")
    assert isinstance(other, HeatmapModelConfig) and other.decoder == "argmax" and heatmap.decoder == "dark"
    assert other.model_copy(update={"heatmap": heatmap.heatmap}) == heatmap  # nothing else changed
    with pytest.raises(KitError, match="--decoder 'nearest': Input should be 'argmax'"):
        heatmap.with_decoder("nearest")
    regression = _pipeline("regression", "test_resnet").model
    assert regression.decoder is None
    with pytest.raises(KitError, match=r"^--decoder: model family 'regression' has no decoder option$"):
        regression.with_decoder("dark")


def test_dark_blur_follows_the_final_target_sigma_unless_set():
    assert create_model(_pipeline(sigma=2.0), N_POINTS).codec.dark_sigma == 2.0
    assert create_model(_pipeline(sigma=3.0, sigma_end=1.0), N_POINTS).codec.dark_sigma == 1.0
    assert create_model(_pipeline(sigma=2.0, dark_blur=0), N_POINTS).codec.dark_sigma == 0.0
    with pytest.raises(KitError, match="dark_blur"):
        _pipeline(dark_blur=-1.0)


def test_heatmap_losses_on_perfect_and_separable_targets():
    coords = torch.tensor([[[5.3, 7.6], [2.0, 9.5]]])
    gy = torch.exp(-((torch.arange(12.0) - coords[..., 1:2]) ** 2) / 4.5)
    gx = torch.exp(-((torch.arange(10.0) - coords[..., 0:1]) ** 2) / 4.5)
    target = gy[..., :, None] * gx[..., None, :]
    assert float(heatmap_l2(target, gy, gx)) == 0
    assert float(heatmap_adaptive_wing(target, gy, gx)) == 0
    assert float(heatmap_l2(target + 0.1, gy, gx)) == pytest.approx(0.01 * 120, rel=1e-4)
    assert float(heatmap_adaptive_wing(target + 0.1, gy, gx)) > 0
    # Separable dilation equals the 3x3 grey dilation of the full map.
    dilated = F.max_pool2d(target, 3, stride=1, padding=1)
    assert torch.equal(awing_weight_map(gy, gx, 10.0, 0.2), 1 + 10.0 * (dilated >= 0.2).float())


@pytest.mark.parametrize(
    "settings",
    [
        {"heatmap_loss": "none", "coord_weight": 1.0},
        {"heatmap_loss": "l2", "coord_weight": 0.0},
        {"heatmap_loss": "adaptive_wing", "coord_weight": 0.5, "sigma": 2.0, "sigma_end": 1.0},
        {"heatmap_loss": "kl", "coord_weight": 0.0, "sigma": 1.5},
        {"heatmap_loss": "kl", "coord_weight": 0.1},
    ],
)
def test_loss_is_finite_and_decreases_on_a_fixed_batch(settings):
    torch.manual_seed(0)
    model = create_model(_pipeline(stride=4, **settings), N_POINTS)
    x = torch.randn(2, 3, SIZE, SIZE)
    target = 8 + torch.rand(2, N_POINTS, 2) * (SIZE - 17)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(6):
        loss = model.loss(model(x), target, progress=step / 6)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < 0.95 * np.mean(losses[:2]), losses


def test_kl_loss_trains_logits_that_decode_to_its_targets():
    model = create_model(_pipeline(stride=4, heatmap_loss="kl", coord_weight=0.0, sigma=1.0), N_POINTS)
    assert model.codec.outputs == "logits"
    h = SIZE // 4
    points = 12 + torch.rand(2, N_POINTS, 2) * (SIZE - 25)  # the decoder's window inside the map
    heat = (points + 0.5) / 4 - 0.5
    grid = torch.arange(h, dtype=torch.float32)
    # log of the target Gaussian: zero KL, and the decoders find the points
    logits = -((grid - heat[..., 1:2]) ** 2).unsqueeze(-1) / 2 - ((grid - heat[..., 0:1]) ** 2).unsqueeze(-2) / 2
    assert float(model.loss(logits, points, progress=0.0)) < 1e-4
    assert float(model.loss(logits, points + 4.0, progress=0.0)) > 0.1
    torch.testing.assert_close(model.codec.decode(logits, "local_soft_argmax"), points, atol=0.1, rtol=0)


def test_pretrained_encoder_weights_from_a_local_file(tmp_path):
    source = timm.create_model("test_resnet", pretrained=False)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    path = tmp_path / "test_resnet.pth"
    torch.save(state, path)  # a classifier checkpoint: its `fc` is dropped
    pipeline = _pipeline().model_dump()
    pipeline["model"]["pretrained"] = {"source": "file", "path": str(path)}
    model = create_model(pipeline_from_dict(pipeline), N_POINTS)
    encoder_state = model.backbone.model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in encoder_state.items())
    assert model.mean == tuple(source.pretrained_cfg["mean"])


def test_pretrained_file_with_flattened_timm_feature_names(tmp_path):
    # timm's features-only convnext names its stem `stem_0` where the classifier has `stem.0`.
    source = timm.create_model("test_convnext", pretrained=False)
    path = tmp_path / "test_convnext.pth"
    torch.save(source.state_dict(), path)
    pipeline = _pipeline(
        backbone="tu-test_convnext",
        arch="FPN",
        decoder_channels=None,
        arch_kwargs={"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
    ).model_dump()
    pipeline["model"]["pretrained"] = {"source": "file", "path": str(path)}
    model = create_model(pipeline_from_dict(pipeline), N_POINTS)
    encoder_state = model.backbone.model.state_dict()
    key = next(k for k in encoder_state if k.startswith("stem"))
    assert torch.equal(encoder_state[key], source.state_dict()[key.replace("stem_", "stem.", 1)])


class _FlipSymmetric(LandmarkModel):
    """Wraps a model so that its raw outputs are exactly flip-equivariant: f(x) + mirror(f(flip x))."""

    def __init__(self, inner: LandmarkModel, perm: torch.Tensor, mirror):
        super().__init__()
        self.inner, self.backbone, self.perm, self.mirror = inner, inner.backbone, perm, mirror
        self.n_points, self.mean, self.std = inner.n_points, inner.mean, inner.std

    def forward(self, x):
        return self.inner(x) + self.mirror(self.inner(torch.flip(x, dims=[3])))[:, self.perm]

    def decode(self, outputs):
        return self.inner.decode(outputs)


def _flip_perm(n: int) -> np.ndarray:
    perm = np.arange(n)
    perm[0], perm[1], perm[2], perm[3] = 1, 0, 3, 2
    return perm


@pytest.mark.parametrize("family", ["heatmap", "regression"])
def test_flip_tta_of_an_equivariant_model_equals_plain_prediction(family):
    torch.manual_seed(0)
    backbone = "tu-test_resnet" if family == "heatmap" else "test_resnet"
    inner = create_model(_pipeline(family, backbone, decoder="local_soft_argmax"), N_POINTS)
    if isinstance(inner, RegressionModel):
        torch.nn.init.normal_(inner.head.weight, std=0.1)
        inner.set_mean_shape(torch.rand(N_POINTS, 2) * SIZE)

        def mirror(out):  # normalised coordinates: x -> -x
            return out * torch.tensor([-1.0, 1.0])
    else:

        def mirror(out):
            return torch.flip(out, dims=[3])

    perm = _flip_perm(N_POINTS)
    model = _FlipSymmetric(inner, torch.as_tensor(perm), mirror).eval()
    images = torch.randint(0, 256, (3, SIZE, SIZE, 3), dtype=torch.uint8)
    loader = DataLoader(TensorDataset(images, torch.zeros(3, N_POINTS, 2), torch.arange(3)), batch_size=2)
    plain = predict(model, loader, torch.device("cpu"), channels_last=False)
    tta = predict(model, loader, torch.device("cpu"), channels_last=False, flip_perm=perm)
    assert np.abs(plain - tta).max() < 1e-3
    # ... while without the symmetrisation the two differ, so the test has teeth.
    raw = predict(inner.eval(), loader, torch.device("cpu"), channels_last=False)
    raw_tta = predict(inner, loader, torch.device("cpu"), channels_last=False, flip_perm=perm)
    assert np.abs(raw - raw_tta).max() > 1e-3


def test_model_decodes_its_codec_targets():
    model = create_model(_pipeline(stride=4, heatmap_loss="l2", decoder="dark"), N_POINTS)
    out = model(torch.randn(1, 3, SIZE, SIZE))
    points = 12 + torch.rand(1, N_POINTS, 2) * (SIZE - 25)
    targets = model.codec.encode(points, out.shape[-2:])
    assert targets.shape == out.shape
    assert torch.allclose(model.decode(targets), points, atol=0.05)
    corner = model.codec.encode(torch.tensor([[[1.5, 1.5]]]), (16, 16))
    assert float(corner[0, 0, 0, 0]) == pytest.approx(1.0)  # input (1.5, 1.5) is the centre of heatmap pixel (0, 0)
