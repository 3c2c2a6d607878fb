"""Condensa-style schemes (apply → restore bit for bit, idempotent apply, composition order,
layer selection, errors) and the L-C optimizer on digits."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn

import qaprune.lc as lc_module
import qaprune.schemes as schemes_module
from qaprune.errors import RecipeError
from qaprune.lc import lc_compress
from qaprune.param import add_mask, get_mask
from qaprune.prune.pruner import prune_to
from qaprune.schemes import Cluster, Compose, Prune, Quantize, Scheme, Unify


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 4)
    )


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if hasattr(m, "weight")}


SCHEMES = {
    "prune": lambda: Prune(0.7),
    "prune_density_blocks": lambda: Prune(density=0.5, structure="blocks", structure_args={"block": [2, 2]}),
    "prune_channels_uniform": lambda: Prune(0.5, structure="channels", allocation="uniform"),
    "quantize": lambda: Quantize(4),
    "quantize_per_channel": lambda: Quantize(3, per_channel=True),
    "cluster": lambda: Cluster(4),
    "unify": lambda: Unify((1, 4), 0.5, prune=0.1),
    "compose": lambda: Compose([Prune(0.6), Unify((2, 2), 0.5), Quantize(5)]),
}


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_apply_restore_is_bit_exact_and_apply_is_idempotent(name) -> None:
    model, scheme = _net(), SCHEMES[name]()
    original = _weights(model)
    scheme.apply(model)
    once = _weights(model)
    assert any(not torch.equal(once[n], original[n]) for n in original)  # it compressed
    scheme.apply(model)
    assert all(torch.equal(_weights(model)[n], once[n]) for n in once)
    scheme.restore(model)
    assert all(torch.equal(_weights(model)[n], original[n]) for n in original)
    with pytest.raises(RecipeError, match="not applied"):
        scheme.restore(model)


@pytest.mark.parametrize("name", ["prune", "prune_density_blocks", "cluster", "unify"])
def test_projection_of_a_projection_changes_nothing(name) -> None:
    scheme = SCHEMES[name]()
    once = scheme.project(_weights(_net()))
    twice = scheme.project(once)
    assert all(torch.equal(twice[n], once[n]) for n in once)


def test_pi_compresses_in_place_and_keeps_the_parameters() -> None:
    model = _net()
    params = [m.weight for m in (model[0], model[3], model[5])]
    Prune(0.5).pi(model)
    assert [m.weight for m in (model[0], model[3], model[5])] == params  # same Parameter objects
    total = sum(p.numel() for p in params)
    assert sum(int((p == 0).sum()) for p in params) == round(0.5 * total)


def test_prune_then_quantize_keeps_zeros_and_at_most_15_levels() -> None:
    model = _net()
    pruned = Prune(0.8).project(_weights(model))
    both = Compose([Prune(0.8), Quantize(4)]).project(_weights(model))
    for n in both:
        assert bool((both[n][pruned[n] == 0] == 0).all())
        assert len(both[n].unique()) <= 2**4 - 1
    zeros = sum(int((t == 0).sum()) for t in both.values())
    assert zeros >= round(0.8 * sum(t.numel() for t in both.values()))
    # the other order quantizes first: the sparsity is then exactly Prune's
    other = Compose([Quantize(4), Prune(0.8)]).project(_weights(model))
    total = sum(t.numel() for t in other.values())
    assert sum(int((t == 0).sum()) for t in other.values()) == round(0.8 * total)


def test_prune_then_cluster_keeps_zeros() -> None:
    w = _weights(_net())
    pruned, out = Prune(0.5).project(w), Compose([Prune(0.5), Cluster(3)]).project(w)
    for n, t in out.items():
        assert torch.equal(t == 0, pruned[n] == 0)  # k = 3 centres of the nonzeros, plus 0
        assert len(t.unique()) == 4


def test_prune_matches_prune_to_on_masked_layers() -> None:
    model = _net()
    expected = Prune(0.6, criterion="lamp").project(_weights(model))
    for m in (model[0], model[3], model[5]):
        add_mask(m)
    prune_to(model, 0.6, criterion="lamp")
    for name in ("0", "3", "5"):
        mod = model.get_submodule(name)
        assert torch.equal(expected[name], mod.parametrizations.weight.original.detach() * get_mask(mod).mask)


def test_layers_select_what_is_compressed() -> None:
    model = _net()
    original = _weights(model)
    Quantize(2, layers=["3"]).pi(model)
    after = _weights(model)
    assert torch.equal(after["0"], original["0"]) and torch.equal(after["5"], original["5"])
    assert len(after["3"].unique()) <= 3
    with pytest.raises(RecipeError, match=r"scheme Prune.layers: \['fc9'\].*known: 0, 3, 5"):
        Prune(0.5, layers=["fc9"]).pi(model)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: Prune(), "exactly one of sparsity or density"),
        (lambda: Prune(0.5, density=0.5), "exactly one"),
        (lambda: Prune(1.0), r"sparsity: 1.0 is not in \[0, 1\)"),
        (lambda: Quantize(40), "Quantize"),
        (lambda: Cluster(0), "Cluster.k"),
        (lambda: Unify((1, 4), 1.5), "ratio"),
        (lambda: Unify((-1, 4)), "block"),
        (lambda: Unify(4), "block"),
        (lambda: Compose([]), "non-empty"),
    ],
)
def test_bad_options_are_recipe_errors(make, match) -> None:
    with pytest.raises(RecipeError, match=match):
        make()


def test_unify_refuses_a_block_larger_than_a_layer() -> None:
    with pytest.raises(RecipeError, match="layer '5'"):
        Unify((8, 4), 0.5).pi(_net())  # layer 5 has 4 outputs


def test_schemes_are_schemes() -> None:
    assert all(isinstance(make(), Scheme) for make in SCHEMES.values())


@pytest.fixture(scope="module")
def digits_model() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = torch.tensor(d.data, dtype=torch.float32) / 16, torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    data = x[perm[:1300]], y[perm[:1300]], x[perm[1300:]], y[perm[1300:]]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt, gen = torch.optim.Adam(model.parameters(), lr=3e-3), torch.Generator().manual_seed(1)
    for _ in range(15):
        for idx in torch.randperm(1300, generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(data[0][idx]), data[1][idx]).backward()
            opt.step()
    return model, data


def _copy(model: nn.Module) -> nn.Module:
    fresh = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    fresh.load_state_dict(model.state_dict())
    return fresh


def test_lc_prune_ends_exactly_80_percent_sparse_and_accurate(digits_model) -> None:
    trained, data = digits_model
    model = _copy(trained)
    r = lc_compress(model, Prune(0.8), *data, mu0=1e-2, mu_factor=1.5, iterations=12, lr=3e-3, batch_size=64)
    weights = [model[0].weight, model[2].weight]
    total = sum(w.numel() for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) == round(0.8 * total)
    assert len(r.history) == 12 and r.history[-1]["accuracy"] == r.accuracy
    assert r.accuracy > 0.8 and r.accuracy > r.direct_accuracy
    assert r.history[-1]["distance"] < r.history[0]["distance"]


def test_lc_quantize_ends_with_at_most_15_levels_per_layer(digits_model) -> None:
    trained, data = digits_model
    model = _copy(trained)
    r = lc_compress(model, Quantize(4), *data, mu0=1e-2, mu_factor=1.5, iterations=6, lr=3e-3, batch_size=64)
    assert all(len(w.unique()) <= 15 for w in (model[0].weight, model[2].weight))
    assert r.accuracy > 0.8


def test_lc_refuses_bad_options(digits_model) -> None:
    trained, data = digits_model
    with pytest.raises(RecipeError, match="mu_factor=0.5"):
        lc_compress(_copy(trained), Prune(0.5), *data, mu_factor=0.5)


@pytest.mark.parametrize("module", [schemes_module, lc_module])
def test_docstring_examples_run(module) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
