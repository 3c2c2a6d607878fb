"""Tests of prune_to's allocations across layers: "lamp" (LAMP-normalized scores, one global
threshold) against "global" and "uniform", with fixed per-layer sparsities and structures."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch import nn

from qaprune.errors import RecipeError
from qaprune.param import add_mask, get_mask, latent_weight, prunable_layers
from qaprune.prune.allocation import ALLOCATIONS
from qaprune.prune.pruner import current_sparsity, prune_to


def _scaled(a_scale: float = 100.0, b_scale: float = 0.01) -> nn.Sequential:
    """Layer "0" (4×5) holds ±a_scale·{1..20}, layer "1" (3×4) ±b_scale·{1..12}, shuffled."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3))
    with torch.no_grad():
        for lin, scale in ((model[0], a_scale), (model[1], b_scale)):
            n = lin.weight.numel()
            values = (torch.randperm(n, generator=gen) + 1).float()
            sign = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
            lin.weight.copy_((scale * values * sign).view_as(lin.weight))
    for lin in model:
        add_mask(lin)
    return model


def _lamp_reference(n: int) -> dict[int, Fraction]:
    """Exact LAMP score of the weight of rank v (|w| = v·scale) in a layer holding 1..n."""
    return {v: Fraction(v * v, sum(u * u for u in range(v, n + 1))) for v in range(1, n + 1)}


def _pruned_values(model: nn.Sequential) -> list[list[int]]:
    """The pruned |w| ranks (1 = smallest) of each layer, sorted."""
    out = []
    for lin in model:
        w, m = latent_weight(lin).detach().abs().flatten(), get_mask(lin).mask.flatten()
        ranks = torch.argsort(torch.argsort(w)) + 1
        out.append(sorted(ranks[m == 0].tolist()))
    return out


def test_allocations_listed() -> None:
    assert ALLOCATIONS.names() == ["global", "lamp", "uniform"]
    with pytest.raises(RecipeError, match=r"recipe\.prune\.allocation: 'owl'; allowed: global, lamp, uniform"):
        prune_to(_scaled(), 0.5, allocation="owl")


def test_global_magnitude_empties_the_small_scale_layer() -> None:
    assert prune_to(_scaled(), 12 / 32, allocation="global") == {"0": 0.0, "1": 1.0}
    assert prune_to(_scaled(), 0.5, allocation="global") == {"0": 4 / 20, "1": 1.0}


@pytest.mark.parametrize("n_pruned,expected", [(12, (8, 4)), (16, (11, 5)), (24, (16, 8))])
def test_lamp_prunes_both_layers(n_pruned: int, expected: tuple[int, int]) -> None:
    model = _scaled()
    achieved = prune_to(model, n_pruned / 32, allocation="lamp")
    assert achieved == {"0": expected[0] / 20, "1": expected[1] / 12}
    assert current_sparsity(model) == n_pruned / 32
    # within each layer the smallest weights go
    assert _pruned_values(model) == [list(range(1, expected[0] + 1)), list(range(1, expected[1] + 1))]
    # the same split from exact LAMP scores
    scores = sorted([(s, 0) for s in _lamp_reference(20).values()] + [(s, 1) for s in _lamp_reference(12).values()])[
        :n_pruned
    ]
    assert tuple(sum(1 for _, layer in scores if layer == i) for i in (0, 1)) == expected


def test_lamp_is_blind_to_layer_scale() -> None:
    a, b = _scaled(100.0, 0.01), _scaled(0.01, 100.0)
    assert prune_to(a, 0.5, allocation="lamp") == prune_to(b, 0.5, allocation="lamp")
    for la, lb in zip(a, b):
        assert torch.equal(get_mask(la).mask, get_mask(lb).mask)


def test_lamp_keeps_every_layers_largest_weight() -> None:
    model = _scaled()
    assert prune_to(model, 30 / 32, allocation="lamp") == {"0": 19 / 20, "1": 11 / 12}
    assert _pruned_values(model) == [list(range(1, 20)), list(range(1, 12))]


def test_lamp_masks_only_grow() -> None:
    model = _scaled()
    prune_to(model, 12 / 32, allocation="lamp")
    before = {n: get_mask(m).mask.clone() for n, m in prunable_layers(model).items()}
    achieved = prune_to(model, 16 / 32, allocation="lamp")
    assert achieved == {"0": 11 / 20, "1": 5 / 12}  # same as pruning to 16 at once
    for name, mod in prunable_layers(model).items():
        assert torch.all(get_mask(mod).mask <= before[name])
    assert prune_to(model, 0.25, allocation="lamp") == achieved  # lower target: no change


@pytest.mark.parametrize("allocation", ALLOCATIONS.names())
def test_fixed_with_every_allocation(allocation: str) -> None:
    model = _scaled()
    achieved = prune_to(model, 0.5, allocation=allocation, fixed={"1": 0.25})
    assert achieved == {"0": 0.5, "1": 0.25}  # the only free layer gets the whole target
    assert _pruned_values(model) == [list(range(1, 11)), [1, 2, 3]]


def test_lamp_with_a_fixed_third_layer() -> None:
    model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3), nn.Linear(3, 2))
    with torch.no_grad():
        model[2].weight.copy_(torch.arange(1.0, 7.0).view(2, 3))
    ref = _scaled()
    with torch.no_grad():
        model[0].weight.copy_(latent_weight(ref[0]))
        model[1].weight.copy_(latent_weight(ref[1]))
    for lin in model:
        add_mask(lin)
    achieved = prune_to(model, 0.5, allocation="lamp", fixed={"2": 0.5})
    assert achieved == {"0": 11 / 20, "1": 5 / 12, "2": 0.5}


def test_lamp_with_channels_structure() -> None:
    model = _scaled()
    # LAMP gives layer "0" 8/20 and layer "1" 4/12; channels rounds to whole rows
    achieved = prune_to(model, 12 / 32, allocation="lamp", structure="channels")
    assert achieved == {"0": 2 / 4, "1": 1 / 3}
    for lin in model:
        rows = get_mask(lin).mask
        assert all(float(r.min()) == float(r.max()) for r in rows)


def test_lamp_on_l2_scores_runs() -> None:
    achieved = prune_to(_scaled(), 0.5, criterion="l2", allocation="lamp")
    assert 0 < achieved["0"] < 1 and 0 < achieved["1"] < 1
    assert achieved["0"] * 20 + achieved["1"] * 12 == 16
