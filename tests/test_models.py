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


USER_MODULE = """
    import torch
    from torch import nn

    def plain(in_features, n_classes):                 # positional names a user would pick
        return nn.Sequential(nn.Linear(in_features, 8), nn.ReLU(), nn.Linear(8, n_classes))

    class Conv1dNet(nn.Module):                         # a class is a factory too
        def __init__(self, in_channels, num_classes, width=4):
            super().__init__()
            self.conv = nn.Conv1d(in_channels, width, 3, padding=1)
            self.fc = nn.Linear(width, num_classes)

        def forward(self, x):
            x = x.unsqueeze(1) if x.dim() == 2 else x
            return self.fc(torch.relu(self.conv(x)).mean(-1))

    def needs_depth(in_features, num_classes, depth):
        return nn.Linear(in_features, num_classes)
"""


def test_factories_get_the_arguments_they_declare(tmp_path: Path) -> None:
    (tmp_path / "qap_sig_models.py").write_text(textwrap.dedent(USER_MODULE))
    m = build_model("qap_sig_models:plain", input_shape=(9,), num_classes=6, search_path=[tmp_path])
    assert (m[0].in_features, m[2].out_features) == (9, 6)
    net = build_model("qap_sig_models:Conv1dNet", input_shape=(12,), num_classes=3, search_path=[tmp_path], width=5)
    assert net.conv.in_channels == 1 and net.conv.out_channels == 5 and net(torch.randn(2, 12)).shape == (2, 3)
    with pytest.raises(RecipeError, match=r"needs depth: not filled from the data .* give it in model.args"):
        build_model("qap_sig_models:needs_depth", input_shape=(9,), num_classes=6, search_path=[tmp_path])
    with pytest.raises(RecipeError, match="takes no argument hidden"):
        build_model("qap_sig_models:plain", input_shape=(9,), num_classes=6, search_path=[tmp_path], hidden=[4])


def test_a_user_module_is_found_beside_the_recipe_and_recorded(tmp_path: Path, monkeypatch) -> None:
    from qaprune.rundir import model_search_path, resolve_recipe

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "qap_beside_models.py").write_text(textwrap.dedent(USER_MODULE))
    (folder / "r.yaml").write_text("model: {name: 'qap_beside_models:plain'}\n")
    monkeypatch.chdir(tmp_path)  # not the recipe's folder, and no PYTHONPATH
    recipe = resolve_recipe(folder / "r.yaml")
    assert recipe.model.path == str(folder.resolve())
    m = build_model(recipe.model.name, input_shape=(4,), num_classes=2, search_path=model_search_path(recipe))
    assert m[0].in_features == 4
    with pytest.raises(RecipeError, match=r"cannot import 'qap_nowhere_models' \(looked in .*project"):
        build_model("qap_nowhere_models:f", input_shape=(4,), num_classes=2, search_path=[folder])
