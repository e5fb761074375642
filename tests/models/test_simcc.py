"""SimCC family: shapes at each feature stride, loss, decoding its own targets, flip TTA, config, weights, training."""

import warnings

import numpy as np
import pytest
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

from kit.config import load_pipeline, pipeline_from_dict
from kit.data.competition import Competition
from kit.data.folds import make_folds, write_folds
from kit.errors import KitError
from kit.metrics import mse
from kit.models import create_model, family_config, list_families
from kit.models.base import LandmarkModel
from kit.models.simcc import SimCCConfig, SimCCModel, SimCCModelConfig
from kit.predict.tta import predict_points
from kit.synth import generate_competition
from kit.train import fold_train

warnings.filterwarnings("ignore", category=UserWarning)
SIZE, N_POINTS = 64, 6


def _pipeline(backbone="test_resnet", pretrained=None, **simcc):
    model = {"family": "simcc", "backbone": backbone, "simcc": simcc}
    if pretrained:
        model["pretrained"] = pretrained
    return pipeline_from_dict({"name": "t", "input": {"size": SIZE}, "model": model})


def test_registered_with_its_config():
    assert "simcc" in list_families() and family_config("simcc") is SimCCModelConfig


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_forward_shapes_at_each_feature_stride(stride):
    model = create_model(_pipeline(feature_stride=stride, split_ratio=2.0, token_dim=32), N_POINTS)
    assert isinstance(model, SimCCModel)
    out = model(torch.randn(2, 3, SIZE, SIZE))
    assert out.shape == (2, N_POINTS, 2 * 2 * SIZE)
    assert model.decode(out).shape == (2, N_POINTS, 2)
    side = SIZE // stride
    assert model.head.token.in_features == side * side
    if stride < 32:  # the stages after the feature stage are pruned
        assert model.stage is not None and not any(k.startswith("layer4.") for k in model.backbone.state_dict())


def test_model_decodes_its_codec_targets():
    model = create_model(_pipeline(split_ratio=2.5, sigma=1.5, decoder="dark"), N_POINTS)
    points = 6 + torch.rand(2, N_POINTS, 2) * (SIZE - 13)
    torch.testing.assert_close(model.decode(model.codec.log_targets(points).flatten(-2)), points, atol=1e-3, rtol=0)
    assert model.codec.bins == 160


@pytest.mark.parametrize("settings", [{}, {"coord_weight": 0.01, "kernel_size": 3}])
def test_loss_is_finite_and_decreases_on_a_fixed_batch(settings):
    torch.manual_seed(0)
    model = create_model(_pipeline(feature_stride=16, token_dim=32, **settings), N_POINTS)
    x = torch.randn(2, 3, SIZE, SIZE)
    target = 8 + torch.rand(2, N_POINTS, 2) * (SIZE - 17)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(8):
        loss = model.loss(model(x), target, progress=step / 8)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2]), losses


class _FlipSymmetric(LandmarkModel):
    """Raw outputs made exactly flip-equivariant: f(x) + mirror(f(flip x)), with x bins reversed by the mirror."""

    def __init__(self, inner: SimCCModel, perm: torch.Tensor):
        super().__init__()
        self.inner, self.backbone, self.perm = inner, inner.backbone, perm
        self.n_points, self.mean, self.std = inner.n_points, inner.mean, inner.std

    def forward(self, x):
        n = self.inner.codec.bins
        out = self.inner(torch.flip(x, dims=[3]))[:, self.perm]
        mirrored = torch.cat([out[..., :n].flip(-1), out[..., n:]], dim=-1)
        return self.inner(x) + mirrored

    def decode(self, outputs):
        return self.inner.decode(outputs)


def test_flip_tta_of_an_equivariant_model_equals_plain_prediction():
    torch.manual_seed(0)
    inner = create_model(_pipeline(feature_stride=16, token_dim=32), N_POINTS)
    perm = np.arange(N_POINTS)
    perm[[0, 1, 2, 3]] = [1, 0, 3, 2]
    model = _FlipSymmetric(inner, torch.as_tensor(perm)).eval()
    images = torch.randint(0, 256, (3, SIZE, SIZE, 3), dtype=torch.uint8)
    loader = DataLoader(TensorDataset(images, torch.zeros(3, N_POINTS, 2), torch.arange(3)), batch_size=2)
    cpu = torch.device("cpu")
    plain = predict_points(model, loader, cpu, channels_last=False)
    tta = predict_points(model, loader, cpu, channels_last=False, flip_perm=perm)
    assert np.abs(plain - tta).max() < 1e-3
    # ... while without the symmetrisation the two differ, so the test has teeth.
    raw = predict_points(inner.eval(), loader, cpu, channels_last=False)
    raw_tta = predict_points(inner, loader, cpu, channels_last=False, flip_perm=perm)
    assert np.abs(raw - raw_tta).max() > 1e-3


@pytest.mark.parametrize(
    "simcc, message",
    [
        ({"strid": 2}, r"unknown key 'model\.simcc\.strid'"),
        ({"kernel_size": 2}, r"key 'model\.simcc\.kernel_size': Value error, must be odd"),
        ({"window": 4}, r"key 'model\.simcc\.window'"),
        ({"feature_stride": 4}, r"key 'model\.simcc\.feature_stride'"),
        ({"sigma": 0}, r"key 'model\.simcc\.sigma'"),
    ],
)
def test_config_errors_name_the_key(simcc, message):
    with pytest.raises(KitError, match=message):
        pipeline_from_dict({"name": "t", "model": {"family": "simcc", "simcc": simcc}}, "cfg")


def test_build_errors_name_the_key():
    with pytest.raises(KitError, match="model.simcc.split_ratio"):
        create_model(_pipeline(split_ratio=1.3), N_POINTS)  # 64 x 1.3 is not a whole number of bins
    with pytest.raises(KitError, match="unknown timm model 'no_such_net'"):
        create_model(_pipeline(backbone="no_such_net"), N_POINTS)
    with pytest.raises(KitError, match="model.pretrained.package"):
        create_model(_pipeline(pretrained={"source": "package", "package": "efficientnet-lite0"}), N_POINTS)


def test_decoder_hooks():
    cfg = _pipeline(decoder="dark").model
    assert isinstance(cfg, SimCCModelConfig) and isinstance(cfg.simcc, SimCCConfig) and cfg.decoder == "dark"
    other = cfg.with_decoder("soft_argmax")
    assert other.decoder == "soft_argmax" and cfg.decoder == "dark"
    assert other.model_copy(update={"simcc": cfg.simcc}) == cfg
    with pytest.raises(KitError, match="--decoder 'nearest': Input should be 'argmax'"):
        cfg.with_decoder("nearest")


@pytest.mark.parametrize("stride", [32, 16])
def test_pretrained_backbone_from_a_local_file(tmp_path, stride):
    source = timm.create_model("test_resnet", pretrained=False)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    path = tmp_path / "test_resnet.pth"
    torch.save(state, path)  # a classifier checkpoint: its `fc` (and, pruned, the later stages) are dropped
    model = create_model(_pipeline(pretrained={"source": "file", "path": str(path)}, feature_stride=stride), N_POINTS)
    own = model.backbone.state_dict()
    assert own and all(torch.equal(v, state[k]) for k, v in own.items())
    assert model.mean == tuple(source.pretrained_cfg["mean"])


@pytest.mark.slow
def test_fold_train_end_to_end(tmp_path):
    root = tmp_path / "c"
    generate_competition(root, n_train=24, n_test=6, seed=3, n_points=100)
    comp = Competition.load(root)
    write_folds(comp.folds_csv, make_folds(comp.train.file_names, k=3, seed=0))
    path = tmp_path / "tiny_simcc.yaml"
    path.write_text("name: tiny_simcc\nmodel: {family: simcc, backbone: test_resnet, simcc: {feature_stride: 16}}\n")
    overrides = ["input.size=32", "input.pad=4", "train.batch_size=8", "train.epochs=2", "train.num_workers=0"]
    overrides += ["train.report_images=2", "optim.lr=3e-3", "tta.hflip=true"]
    metrics = fold_train(load_pipeline(path, overrides), root, out_dir=tmp_path / "runs")
    oof = np.load(tmp_path / "runs" / "tiny_simcc" / "oof.npy")
    assert oof.shape == (24, 100, 2) and np.isfinite(oof).all()
    assert metrics.oof_mse == pytest.approx(mse(oof, comp.train.points), rel=1e-6)
    # Two tiny epochs do not fit the shapes, but the points come back in the images' frame, on the faces.
    assert metrics.oof_mse < mse(np.zeros_like(oof), comp.train.points) / 3
