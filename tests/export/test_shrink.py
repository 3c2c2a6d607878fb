"""shrink: the shrunk model computes what the masked model computes, with fewer channels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qaprune.compress import attach
from qaprune.export import BlockDiagonalLinear, SparseLinear, shrink
from qaprune.export.shrink import block_pattern
from qaprune.metrics.bops import profile
from qaprune.models import build_model
from qaprune.param import add_mask, get_mask
from qaprune.prune.groups import channel_groups, mask_channels
from qaprune.recipe import Recipe

CASES = [
    ("mlp", (16,), "affine"),
    ("vgg_small", (1, 16, 16), "affine"),
    ("resnet8", (1, 16, 16), "affine"),
    ("resnet8", (1, 16, 16), "no_affine"),
    ("lenet5", (1, 16, 16), "none"),
]


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    return sum(p.macs for p in profile(model, x))


def _half_masked(name, shape, batchnorm, x):
    m = build_model(name, input_shape=shape, num_classes=5, batchnorm=batchnorm)
    attach(m, Recipe(quant={"weight_bits": 6, "act_bits": 6}, prune={"sparsity": 0.5}), sample=x)
    m.train()
    m(x)
    gen = torch.Generator().manual_seed(1)
    for g in channel_groups(m, x):
        if g.prunable:
            mask_channels(m, g, torch.rand(g.size, generator=gen) < 0.5)
    m.train()
    m(x)
    return m.eval()


@pytest.mark.parametrize("name,shape,batchnorm", CASES)
def test_shrunk_equals_masked(name, shape, batchnorm):
    torch.manual_seed(0)
    x = torch.randn(8, *shape)
    m = _half_masked(name, shape, batchnorm, x)
    r = shrink(m, x)
    with torch.no_grad():
        assert torch.allclose(r.model(x), m(x), atol=1e-5)
        x2 = torch.randn(3, *shape)
        assert torch.allclose(r.model(x2), m(x2), atol=1e-5)  # not just on the example
    assert r.max_abs_diff <= 1e-5
    masked = build_model(name, input_shape=shape, num_classes=5, batchnorm=batchnorm)
    assert _params(r.model) < 0.6 * _params(masked)
    assert _macs(r.model, x) < 0.6 * _macs(m, x)
    assert len(r.removed) >= 3 and all(v > 0 for v in r.removed.values())
    out_layer = [n for n, mod in m.named_modules() if isinstance(mod, nn.Linear)][-1]
    assert "model output" in r.not_shrunk[out_layer]
    assert get_mask(m.get_submodule(out_layer)) is not None  # input untouched


def test_reports_unstructured_and_dense_layers():
    torch.manual_seed(0)
    m = build_model("mlp", input_shape=(16,), num_classes=5).eval()
    x = torch.randn(4, 16)
    for layer in (m.fc1, m.fc2):
        add_mask(layer)
    get_mask(m.fc2).mask.copy_((torch.rand(32, 64) < 0.5).float())  # unstructured
    mask_channels(m, next(g for g in channel_groups(m, x) if g.root == "fc1"), torch.arange(64) < 40)
    r = shrink(m, x)
    assert r.removed == {"fc1": 24}
    assert r.not_shrunk["fc2"].startswith("unstructured sparsity: no whole channel is zero")
    assert r.not_shrunk["fc3"] == "dense: no zero weights"
    assert set(r.removed) | set(r.not_shrunk) == {"fc1", "fc2", "fc3", "fc4"}


def test_residual_channels_need_zero_in_every_coupled_layer():
    m = build_model("resnet8", input_shape=(1, 16, 16), num_classes=5).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        m.conv1.weight[:4] = 0
        m.bn1.weight[:4] = 0
        m.bn1.bias[:4] = 0  # zero in conv1 but not in layer1.conv2
    r = shrink(m, x)
    assert "conv1" not in r.removed and "layer1.conv2" in r.not_shrunk["conv1"]
    with torch.no_grad():
        m.layer1.conv2.weight[:4] = 0
        m.layer1.bn2.weight[:4] = 0
        m.layer1.bn2.bias[:4] = 0
    r = shrink(m, x)
    assert r.removed["conv1"] == 4 and r.removed["layer1.conv2"] == 4
    assert torch.allclose(r.model(x), m(x), atol=1e-5)


def test_channels_that_are_not_zero_after_the_activation_stay():
    m = nn.Sequential(nn.Linear(8, 16), nn.Sigmoid(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        m[0].weight[:5] = 0
        m[0].bias[:5] = 0  # sigmoid(0) = 0.5 reaches the next layer
    r = shrink(m, torch.randn(4, 8))
    assert r.removed == {} and "non-zero at the input of 2" in r.not_shrunk["0"]


class _MeanGate(nn.Module):
    """The mean over channels sees how many there are: removing zero channels changes it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc0, self.fc1, self.fc2 = nn.Linear(8, 8), nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.fc1(torch.relu(self.fc0(x))))
        return self.fc2(h * h.mean(1, keepdim=True))


def test_groups_that_would_change_the_outputs_are_kept_and_reported():
    m = _MeanGate().eval()
    with torch.no_grad():
        for layer, n in ((m.fc0, 3), (m.fc1, 4)):
            layer.weight[:n] = 0
            layer.bias[:n] = 0
    x = torch.randn(4, 8)
    r = shrink(m, x)
    assert r.removed == {"fc0": 3} and "changed the outputs" in r.not_shrunk["fc1"]
    assert torch.allclose(r.model(x), m(x), atol=1e-5)


def _mpd_mask(out: int, inp: int, k: int, gen: torch.Generator) -> torch.Tensor:
    blocks = torch.block_diag(*[torch.ones(out // k, inp // k)] * k)
    rows, cols = torch.randperm(out, generator=gen), torch.randperm(inp, generator=gen)
    return blocks[torch.argsort(rows)][:, torch.argsort(cols)]


def test_mpd_linear_becomes_block_diagonal():
    gen = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5)).eval()
    add_mask(m[0]).mask.copy_(_mpd_mask(32, 64, 4, gen))
    x = torch.randn(6, 64)
    r = shrink(m, x)
    bd = r.model[0]
    assert isinstance(bd, BlockDiagonalLinear) and r.converted == {"0": "BlockDiagonalLinear(k=4)"}
    assert bd.weight.numel() == 32 * 64 // 4 and "0" not in r.not_shrunk
    with torch.no_grad():
        assert torch.allclose(r.model(x), m(x), atol=1e-5)
        x3 = torch.randn(2, 3, 64)  # leading dims kept
        assert torch.allclose(bd(x3), m[0](x3), atol=1e-5)


def test_block_pattern_detection():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(12, 24) * _mpd_mask(12, 24, 3, gen)
    rows, cols = block_pattern(w)
    assert [len(r) for r in rows] == [4, 4, 4] and [len(c) for c in cols] == [8, 8, 8]
    assert sorted(torch.cat(rows).tolist()) == list(range(12))
    assert sorted(torch.cat(cols).tolist()) == list(range(24))
    for b, (r, c) in enumerate(zip(rows, cols)):  # nothing outside the blocks
        others = torch.cat([cc for bb, cc in enumerate(cols) if bb != b])
        assert torch.equal(w[r][:, others], torch.zeros(4, 16)) and bool((w[r][:, c] != 0).all())
    assert block_pattern(torch.randn(12, 24)) is None  # dense: one block
    assert block_pattern(torch.randn(12, 24) * (torch.rand(12, 24) < 0.5)) is None


def test_unequal_blocks_and_empty_rows_are_padded():
    lin = nn.Linear(7, 5)
    mask = torch.zeros(5, 7)
    mask[0:2, 0:4] = 1
    mask[2:4, 4:7] = 1  # row 4 is all zero
    with torch.no_grad():
        lin.weight.mul_(mask[torch.tensor([3, 0, 4, 1, 2])][:, torch.tensor([6, 1, 0, 5, 2, 4, 3])])
    bd = BlockDiagonalLinear.from_linear(lin, *block_pattern(lin.weight))
    x = torch.randn(4, 7)
    with torch.no_grad():
        assert torch.allclose(bd(x), lin(x), atol=1e-6)
    assert bd.weight.shape == (2, 3, 4)


def test_sparse_linear_equals_dense():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    with torch.no_grad():
        lin.weight.mul_((torch.rand(64, 128) < 0.1).float())
    sp = SparseLinear.from_linear(lin)
    x = torch.randn(5, 7, 128)
    with torch.no_grad():
        assert torch.allclose(sp(x), lin(x), atol=1e-5)
    assert sp.values.numel() == int((lin.weight != 0).sum())


@pytest.mark.parametrize("mode", ["always", "auto"])
def test_sparse_conversion_is_recorded(mode):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5)).eval()
    add_mask(m[0]).mask.copy_((torch.rand(64, 64) < 0.1).float())
    x = torch.randn(16, 64)
    r = shrink(m, x, sparse=mode)
    converted = isinstance(r.model[0], SparseLinear)
    if mode == "always":
        assert converted and r.converted["0"].startswith("SparseLinear") and r.sparse_timings == {}
    else:
        t = r.sparse_timings["0"]
        assert t["dense_ms"] > 0 and t["sparse_ms"] > 0 and t["sparse"] == converted
        assert converted == ("0" in r.converted) == ("0" not in r.not_shrunk)
    assert torch.allclose(r.model(x), m(x), atol=1e-5)


def test_rejects_unknown_sparse_mode():
    with pytest.raises(ValueError, match="sparse='sometimes'"):
        shrink(nn.Linear(2, 2), torch.zeros(1, 2), sparse="sometimes")


def test_a_rounding_tie_does_not_stop_an_exact_removal(monkeypatch):
    """Removing channels reorders float sums: a pre-activation at a rounding tie may come out
    ~1e-7 apart and round one step off. The removal is judged with rounding off (``unrounded``)."""
    import importlib

    from qaprune.quant.activations import QuantReLU

    shrink_mod = importlib.import_module("qaprune.export.shrink")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(2, 4), QuantReLU(bits=2, max_value=3.0), nn.Linear(4, 3)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    net = Net().eval()
    with torch.no_grad():
        net.fc1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))
        net.fc1.bias.copy_(torch.tensor([1.5, 0.0, 0.0, 0.0]))  # row 0 at x0 = 1: 2.5, a tie (step 1)
    x = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    remove = shrink_mod._remove_channels

    def reordered(*args):  # stands for another summation order: 2.5 becomes 2.5 + 1e-6 (2 -> 3)
        out, removed = remove(*args)
        with torch.no_grad():
            out.fc1.bias[0] += 1e-6
        return out, removed

    monkeypatch.setattr(shrink_mod, "_remove_channels", reordered)
    r = shrink(net, x, sparse="never")
    assert r.removed == {"fc1": 2} and r.max_abs_diff < 1e-5
    assert not torch.equal(r.model(x), net(x))  # as deployed, the tie rounds the other way
