"""Tests of qaprune.param, the ground floor: the parametrization order that ``place`` keeps
whatever the order of registration, ``find``, ``bake``, masks and the layer types."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from qaprune.errors import RecipeError
from qaprune.param import (
    STAGES,
    WEIGHT_LAYERS,
    ChannelMask,
    Mask,
    add_mask,
    bake,
    find,
    get_mask,
    latent_weight,
    place,
    prunable_layers,
    weight_layers,
)
from qaprune.quant.cluster import Cluster
from qaprune.quant.fake_quant import FakeQuant


class Doubler(nn.Module):  # a user's own parametrization, no stage: goes last
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2 * w


def _parts(lin: nn.Linear) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    mask = Mask(lin.weight.shape)
    mask.mask[0] = 0
    pruned = lin.weight.detach() * mask.mask  # the cluster is fit on what the mask lets through
    return {"mask": mask, "share": Cluster.fit(pruned, 4), "quant": FakeQuant(3)}


@pytest.mark.parametrize("order", list(itertools.permutations(STAGES)))
def test_place_keeps_the_stage_order_whatever_the_registration_order(order: tuple[str, ...]) -> None:
    lin = nn.Linear(6, 3)
    parts = _parts(lin)
    for stage in order:
        place(lin, "weight", parts[stage])
    assert [type(p) for p in lin.parametrizations.weight] == [Mask, Cluster, FakeQuant]
    expected = parts["quant"](parts["share"](parts["mask"](latent_weight(lin))))
    assert torch.equal(lin.weight, expected) and bool((lin.weight[0] == 0).all())


def test_a_parametrization_without_stage_goes_last_and_masks_go_first_on_any_tensor() -> None:
    lin = nn.Linear(4, 3)
    place(lin, "weight", Doubler())
    place(lin, "weight", FakeQuant(4))
    assert [type(p) for p in lin.parametrizations.weight] == [FakeQuant, Doubler]
    place(lin, "bias", FakeQuant(8))
    cm = place(lin, "bias", ChannelMask(3))
    assert [type(p) for p in lin.parametrizations.bias] == [ChannelMask, FakeQuant]
    assert find(lin, "bias", ChannelMask) is cm and find(lin, "weight", Mask) is None and find(lin, "x", Mask) is None


def test_masks_layers_and_bake() -> None:
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 5), nn.BatchNorm1d(5))
    assert list(weight_layers(model)) == ["0", "3"] and isinstance(model[0], WEIGHT_LAYERS)
    place(model[3], "weight", FakeQuant(4))
    mask = add_mask(model[3])
    assert list(prunable_layers(model)) == ["3"] and get_mask(model[3]) is mask and get_mask(model[0]) is None
    with pytest.raises(RecipeError, match="already carries a Mask"):
        add_mask(model[3])
    mask.mask[:, :12] = 0
    x = torch.randn(8, 2, 8)
    model.eval()
    before = model(x)
    bake(model)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
    assert torch.equal(model(x), before) and bool((model[3].weight[:, :12] == 0).all())
