"""Tests of qaprune.models: every registered model builds and gives (N, classes) logits; the
mlp's batch-norm modes and widths; user factories "module:function"; clear errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from qaprune.errors import RecipeError
from qaprune.models import MODELS, build_model

SHAPES = {
    "mlp": [(16,)],
    "lenet300": [(16,)],
    "lenet5": [(1, 28, 28), (1, 8, 8)],
    "vgg_small": [(1, 28, 28), (1, 8, 8), (3, 8, 8)],
    "resnet8": [(3, 32, 32), (1, 28, 28), (1, 8, 8)],
}
CASES = [(name, shape) for name in MODELS.names() for shape in SHAPES.get(name, [])]


def test_every_registered_model_has_a_test_shape() -> None:
    assert set(MODELS.names()) == set(SHAPES), "add the new model's input shape to SHAPES"


@pytest.mark.parametrize("name,shape", CASES)
def test_every_model_gives_logits(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(name, input_shape=shape, num_classes=7)
    x = torch.randn(3, *shape)
    model.train()
    assert model(x).shape == (3, 7)
    model.eval()
    out = model(x)
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()
    assert isinstance(model.input_quant, nn.Identity)  # the slot attach() fills
    weights = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert weights and isinstance(weights[-1], nn.Linear) and weights[-1].out_features == 7


def test_mlp_default_widths_and_names() -> None:
    model = build_model("mlp", input_shape=(16,), num_classes=5)
    lin = {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert lin == {"fc1": (16, 64), "fc2": (64, 32), "fc3": (32, 32), "fc4": (32, 5)}
    assert [type(getattr(model, f"act{i}")) for i in (1, 2, 3)] == [nn.ReLU] * 3


def test_mlp_custom_hidden_and_flattening() -> None:
    model = build_model("mlp", input_shape=(2, 3), num_classes=4, hidden=[8, 6])
    lin = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert lin == [(6, 8), (8, 6), (6, 4)]
    assert model(torch.randn(5, 2, 3)).shape == (5, 4)


@pytest.mark.parametrize(
    "mode,kind,affine",
    [("affine", nn.BatchNorm1d, True), ("no_affine", nn.BatchNorm1d, False), ("none", nn.Identity, None)],
)
def test_mlp_batchnorm_modes(mode: str, kind: type, affine: bool | None) -> None:
    model = build_model("mlp", input_shape=(16,), num_classes=5, batchnorm=mode)
    for i in (1, 2, 3):
        bn = getattr(model, f"bn{i}")
        assert type(bn) is kind
        if affine is not None:
            assert bn.affine is affine
            assert (bn.weight is not None) is affine
    n_params = sum(p.numel() for p in model.parameters())
    base = 16 * 64 + 64 + 64 * 32 + 32 + 32 * 32 + 32 + 32 * 5 + 5
    assert n_params == base + (2 * 128 if mode == "affine" else 0)
    assert model(torch.randn(4, 16)).shape == (4, 5)


def test_mlp_dropout_layers() -> None:
    model = build_model("mlp", input_shape=(16,), num_classes=5, dropout=0.25)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 3 and all(d.p == 0.25 for d in drops)


def test_bad_batchnorm_mode_lists_allowed() -> None:
    with pytest.raises(RecipeError, match="model.args.batchnorm: 'group'; allowed: affine, no_affine, none"):
        build_model("mlp", input_shape=(16,), num_classes=5, batchnorm="group")
    with pytest.raises(RecipeError, match="model.args.batchnorm: 'x'; allowed: affine, no_affine, none"):
        build_model("vgg_small", input_shape=(1, 8, 8), num_classes=5, batchnorm="x")


def test_lenet300_widths() -> None:
    model = build_model("lenet300", input_shape=(784,), num_classes=10)
    lin = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert lin == [(784, 300), (300, 100), (100, 10)]


def test_lenet5_classic_shapes() -> None:
    model = build_model("lenet5", input_shape=(1, 28, 28), num_classes=10)
    assert model.fc1.in_features == 16 * 5 * 5  # 28 → (pad 2) 28 → 14 → 10 → 5
    small = build_model("lenet5", input_shape=(1, 8, 8), num_classes=10)
    assert small.fc1.in_features == 16 * 4 * 4  # 8 → 8 → 4 → (pad 2) 4, no second pool


def test_unknown_kwarg_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError, match="^model.args: .*width"):
        build_model("mlp", input_shape=(16,), num_classes=5, width=3)


def test_cnn_refuses_flat_input() -> None:
    with pytest.raises(RecipeError, match=r"a CNN needs image data \(C, H, W\), got input shape \(16,\)"):
        build_model("lenet5", input_shape=(16,), num_classes=3)


def test_unknown_name_lists_known() -> None:
    with pytest.raises(KeyError) as info:
        build_model("resnet9000", input_shape=(16,), num_classes=3)
    msg = str(info.value)
    assert msg.startswith("unknown model 'resnet9000'; known: ")
    assert msg.endswith(", ".join(MODELS.names()))


def _write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))


def test_user_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_module(
        tmp_path,
        monkeypatch,
        "qap_user_models",
        """
        import math
        from torch import nn

        def tiny(*, input_shape, num_classes, width=3):
            return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width),
                                 nn.ReLU(), nn.Linear(width, num_classes))

        def not_a_module(*, input_shape, num_classes):
            return 42
    """,
    )
    model = build_model("qap_user_models:tiny", input_shape=(2, 2), num_classes=3, width=5)
    assert model[1].in_features == 4 and model[1].out_features == 5
    assert model(torch.randn(6, 2, 2)).shape == (6, 3)
    with pytest.raises(RecipeError, match="has no attribute 'missing'"):
        build_model("qap_user_models:missing", input_shape=(4,), num_classes=3)
    with pytest.raises(RecipeError, match="returned int, not an nn.Module"):
        build_model("qap_user_models:not_a_module", input_shape=(4,), num_classes=3)


def test_user_factory_import_error() -> None:
    with pytest.raises(RecipeError, match="model.name: cannot import 'qap_no_such_module_xyz'"):
        build_model("qap_no_such_module_xyz:f", input_shape=(4,), num_classes=3)
