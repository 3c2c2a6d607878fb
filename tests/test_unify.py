"""Micro-structured weight unification: the projection (exact unified blocks, least-error choice
checked by brute force, idempotence, errors), the ``Unified`` parametrization and ADMM training."""

from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

import qaprune.quant.unify as unify_module
from qaprune.errors import RecipeError
from qaprune.methods import admm_unify
from qaprune.quant.unify import ADMMUnify, Unified, block_errors, block_ids, choose_blocks, unify_project
from qaprune.recipe import TrainSpec
from qaprune.train import fit


def _blocks_of(t: torch.Tensor, block: tuple[int, int]) -> list[torch.Tensor]:
    """The entries of every block of t's (out, in) view, in block order (independent tiling)."""
    rows = t.reshape(t.shape[0], -1)
    r, c = block
    return [
        rows[i : i + r, j : j + c].reshape(-1) for i in range(0, rows.shape[0], r) for j in range(0, rows.shape[1], c)
    ]


@pytest.mark.parametrize("shape,block", [((6, 10), (2, 3)), ((4, 3, 3, 3), (1, 4)), ((5, 8), (4, 4))])
def test_unified_blocks_share_one_magnitude_and_keep_signs(shape, block) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    out = unify_project(w, block, 0.5)
    unified, pruned = choose_blocks(w, block, 0.5)
    assert not pruned.any() and int(unified.sum()) == round(0.5 * unified.numel())
    assert torch.equal(torch.sign(out), torch.sign(w))
    for b, (wb, ob) in enumerate(zip(_blocks_of(w, block), _blocks_of(out, block))):
        if unified[b]:
            assert torch.all(ob.abs() == ob.abs()[0])  # exactly one magnitude
            assert ob.abs()[0].item() == pytest.approx(wb.abs().mean().item(), rel=1e-6)
        else:
            assert torch.equal(ob, wb)  # free blocks untouched


def test_block_ids_cover_partial_edge_tiles() -> None:
    ids, n = block_ids((3, 5), (2, 2))
    assert n == 6
    assert ids.view(3, 5).tolist() == [[0, 0, 1, 1, 2], [0, 0, 1, 1, 2], [3, 3, 4, 4, 5]]


def _lstsq_error(wb: np.ndarray) -> float:
    """Least-squares error of wb ≈ sign(wb)·m for one shared m (numpy's solver)."""
    s = np.where(wb < 0, -1.0, 1.0)[:, None]
    m = np.linalg.lstsq(s, wb, rcond=None)[0]
    return float(((s @ m) - wb) @ ((s @ m) - wb))


def test_chosen_blocks_minimize_the_error_by_brute_force() -> None:
    w = torch.randn(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    blocks = [b.numpy() for b in _blocks_of(w, (1, 2))]
    errors = [_lstsq_error(b) for b in blocks]
    best = min(itertools.combinations(range(8), 4), key=lambda s: sum(errors[i] for i in s))
    unified, _ = choose_blocks(w, (1, 2), 0.5)
    assert sorted(torch.nonzero(unified).flatten().tolist()) == sorted(best)
    dist = float((unify_project(w, (1, 2), 0.5) - w).square().sum())
    assert dist == pytest.approx(sum(errors[i] for i in best), rel=1e-9)
    err, energy = block_errors(w, (1, 2))
    assert err.tolist() == pytest.approx(errors, abs=1e-12)
    assert energy.tolist() == pytest.approx([float((b**2).sum()) for b in blocks])


def test_prune_budget_takes_the_least_energy_blocks_first() -> None:
    w = torch.randn(4, 12, generator=torch.Generator().manual_seed(1))
    err, energy = block_errors(w, (2, 2))  # 12 blocks
    unified, pruned = choose_blocks(w, (2, 2), 0.5, prune=0.25)
    assert int(pruned.sum()) == 3 and int(unified.sum()) == 6 and bool((unified | ~pruned).all())
    assert set(torch.nonzero(pruned).flatten().tolist()) == set(torch.argsort(energy)[:3].tolist())
    rest = err.masked_fill(pruned, math.inf)
    assert set(torch.nonzero(unified & ~pruned).flatten().tolist()) == set(torch.argsort(rest)[:3].tolist())
    out = unify_project(w, (2, 2), 0.5, prune=0.25)
    for b, ob in enumerate(_blocks_of(out, (2, 2))):
        if pruned[b]:
            assert torch.equal(ob, torch.zeros_like(ob)) and not torch.signbit(ob).any()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("block,ratio,prune", [((1, 4), 0.5, 0.0), ((2, 3), 0.8, 0.3), ((3, 3), 1.0, 0.0)])
def test_projection_is_idempotent_bit_for_bit(seed, block, ratio, prune) -> None:
    w = torch.randn(7, 13, generator=torch.Generator().manual_seed(seed))
    once = unify_project(w, block, ratio, prune=prune)
    assert torch.equal(unify_project(once, block, ratio, prune=prune), once)


def test_ratio_zero_is_identity_and_ratio_one_unifies_everything() -> None:
    w = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(unify_project(w, (1, 4), 0.0), w)
    a = unify_project(w, (1, 4), 1.0).abs().reshape(8, 4)
    assert bool((a == a[:, :1]).all())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"block": (3, 2)}, r"larger than the \(out, in\) view \(2, 6\) of layer 'fc1'"),
        ({"block": (1, 7)}, "larger than"),
        ({"block": (0, 2)}, "positive integers"),
        ({"block": [2]}, "rows, cols"),
        ({"ratio": 1.5}, r"ratio: 1.5 is not in \[0, 1\] \(layer 'fc1'\)"),
        ({"ratio": 0.5, "prune": 0.6}, "prune"),
    ],
)
def test_bad_options_are_recipe_errors_naming_the_layer(kwargs, match) -> None:
    args = {"block": (1, 2), "ratio": 0.5, **kwargs}
    with pytest.raises(RecipeError, match=match):
        unify_project(torch.randn(2, 6), args.pop("block"), args.pop("ratio"), layer="fc1", **args)


def test_unified_parametrization_matches_the_projection_and_trains_unified() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(12, 6)
    w0 = lin.weight.detach().clone()
    par = Unified.from_weight(w0, (2, 4), 0.5, prune=1 / 9)
    torch.nn.utils.parametrize.register_parametrization(lin, "weight", par)
    assert torch.equal(lin.weight, unify_project(w0, (2, 4), 0.5, prune=1 / 9))
    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        lin(torch.randn(16, 12)).square().mean().backward()
        opt.step()
    latent = lin.parametrizations.weight.original
    assert not torch.equal(latent, w0)  # it trained
    for b, ob in enumerate(_blocks_of(lin.weight.detach(), (2, 4))):
        if par.pruned[b]:
            assert torch.equal(ob, torch.zeros_like(ob))
        elif par.unified[b]:
            assert torch.all(ob.abs() == ob.abs()[0])
    # pruned entries get no gradient
    lin.weight.sum().backward()
    grad = _blocks_of(latent.grad, (2, 4))
    assert all(torch.equal(g, torch.zeros_like(g)) for g, p in zip(grad, par.pruned) if p)


def test_admm_gradient_hook_equals_the_penalty_in_the_loss() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    x, y = torch.randn(20, 8), torch.randint(0, 3, (20,))
    admm = ADMMUnify(model, block=(1, 4), ratio=0.5, rho=0.7)
    with torch.no_grad():
        model[0].weight.add_(0.3)  # move W away from Z
    admm.u["0"].fill_(0.05)
    loss = nn.functional.cross_entropy(model(x), y) + admm.penalty()
    expected = torch.autograd.grad(loss, [model[0].weight, model[2].weight])
    with admm:
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
    assert torch.allclose(model[0].weight.grad, expected[0], atol=1e-6)
    assert torch.allclose(model[2].weight.grad, expected[1], atol=1e-6)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()  # stopped: the plain gradient again
    assert not torch.allclose(model[0].weight.grad, expected[0], atol=1e-6)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = torch.tensor(d.data, dtype=torch.float32) / 16, torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm[:1300]], y[perm[:1300]], x[perm[1300:]], y[perm[1300:]]


def test_admm_on_digits_converges_and_ends_exactly_unified(digits) -> None:
    xt, yt, xv, yv = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    fit(model, xt, yt, xv, yv, spec=TrainSpec(epochs=15, lr=3e-3, batch_size=64, patience=None))
    r = admm_unify(
        model, xt, yt, xv, yv, block=(1, 4), ratio=0.75, rho=0.1, rho_factor=2.0, iterations=8, lr=3e-3, batch_size=64
    )
    residuals = [h["residual"] for h in r.history]
    assert len(residuals) == 8 and residuals[-1] < residuals[0] / 10
    assert r.accuracy > 0.9
    for name, mod in (("0", model[0]), ("2", model[2])):
        par = r.parametrizations[name]
        assert int(par.unified.sum()) == round(0.75 * par.unified.numel())
        blocks = _blocks_of(mod.weight.detach(), (1, 4))
        assert all(torch.all(b.abs() == b.abs()[0]) for b, u in zip(blocks, par.unified) if u)
    fit(model, xt, yt, xv, yv, spec=TrainSpec(epochs=2, lr=3e-3, batch_size=64, patience=None))
    blocks = _blocks_of(model[0].weight.detach(), (1, 4))  # fine-tuning keeps them unified
    assert all(torch.all(b.abs() == b.abs()[0]) for b, u in zip(blocks, r.parametrizations["0"].unified) if u)


def test_docstring_examples_run() -> None:
    result = doctest.testmod(unify_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
