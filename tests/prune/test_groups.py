"""Channel groups: which tensors lose channels together, and exact zeroing of removed channels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qaprune.compress import attach
from qaprune.models import build_model
from qaprune.param import ChannelMask, Mask, prunable_layers
from qaprune.prune.groups import channel_groups, mask_channels, zero_channels
from qaprune.recipe import Recipe


def _by_root(groups):
    return {g.root: g for g in groups}


def test_mlp_group_members_and_output_layer():
    m = build_model("mlp", input_shape=(16,), num_classes=5)
    groups = _by_root(channel_groups(m, torch.zeros(2, 16)))
    g = groups["fc1"]
    assert g.size == 64 and g.prunable
    assert {(c.name, c.role) for c in g.members} == {("fc1", "out"), ("bn1", "out"), ("fc2", "in")}
    assert not groups["fc4"].prunable and "model output" in groups["fc4"].reason


def test_resnet8_residual_coupling():
    m = build_model("resnet8", input_shape=(1, 16, 16), num_classes=5)
    groups = channel_groups(m, torch.zeros(2, 1, 16, 16))
    producers = {frozenset(g.producers) for g in groups}
    assert frozenset({"conv1", "layer1.conv2"}) in producers  # identity shortcut
    assert frozenset({"layer2.shortcut.conv", "layer2.conv2"}) in producers
    assert frozenset({"layer1.conv1"}) in producers
    assert sum(g.prunable for g in groups) == len(groups) - 1  # all but the classifier


def test_flatten_maps_one_channel_to_many_columns():
    m = build_model("lenet5", input_shape=(1, 16, 16), num_classes=5)
    g = _by_root(channel_groups(m, torch.zeros(2, 1, 16, 16)))["features.4"]
    fc1 = next(c for c in g.members if c.name == "fc1")
    assert len(fc1.idxs) == 64 and sorted(set(fc1.root_idxs)) == list(range(16))


@pytest.mark.parametrize("batchnorm", ["affine", "no_affine"])
def test_mask_channels_zeroes_exactly_through_quantizers_and_training(batchnorm):
    torch.manual_seed(0)
    m = build_model("mlp", input_shape=(16,), num_classes=5, batchnorm=batchnorm)
    x = torch.randn(32, 16)
    attach(m, Recipe(quant={"weight_bits": 4, "act_bits": 4}), sample=x)  # FakeQuant, no Mask yet
    m.train()
    m(x)  # non-zero running stats
    g = _by_root(channel_groups(m, x))["fc1"]
    keep = torch.arange(64) % 2 == 0
    mask_channels(m, g, keep)
    assert isinstance(m.fc1.parametrizations.weight[0], Mask)  # first: quant(mask · w)
    m.train()
    m(x)
    m.eval()
    hidden = m.act1(m.bn1(m.fc1(m.input_quant(x))))
    assert torch.equal(hidden[:, ~keep], torch.zeros_like(hidden[:, ~keep]))
    assert torch.equal(zero_channels(m, g), ~keep)
    assert set(prunable_layers(m)) == {"fc1"}  # BN is not a prunable layer


def test_mask_channels_checks_its_arguments():
    m = build_model("mlp", input_shape=(16,), num_classes=5)
    groups = _by_root(channel_groups(m, torch.zeros(2, 16)))
    with pytest.raises(ValueError, match="expected \\(64,\\)"):
        mask_channels(m, groups["fc1"], torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="model output"):
        mask_channels(m, groups["fc4"], torch.ones(5, dtype=torch.bool))


def test_channel_mask_broadcasts_over_trailing_dims():
    cm = ChannelMask(3)
    cm.keep[2] = 0
    assert cm(torch.ones(3, 2)).sum().item() == 4.0
    assert isinstance(cm, nn.Module) and not isinstance(cm, Mask)
