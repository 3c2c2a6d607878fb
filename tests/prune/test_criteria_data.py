"""Tests of the data-dependent and filter-geometry criteria (qaprune.prune.criteria) and of
qaprune.prune.stats: each criterion against hand-computed or brute-force numbers, the clear
error without stats, collect_stats on an MLP and a CNN, the momentum tracker's EMA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from qaprune.errors import RecipeError
from qaprune.param import add_mask, get_mask, latent_weight
from qaprune.prune.criteria import (
    CRITERIA,
    LayerStats,
    filtersketch_weights,
    frequent_directions,
    haste_buckets,
    histogram_entropy,
)
from qaprune.prune.pruner import prune_to
from qaprune.prune.stats import COLLECTABLE, MomentumTracker, collect_stats, hutchinson_diagonal
from qaprune.quant.fake_quant import FakeQuant
from qaprune.recipe import TrainSpec
from qaprune.train import fit

CHANNEL_LEVEL = ["hap", "nuclear", "entropy", "filtersketch", "haste"]
SHAPES = [(5,), (4, 3), (6, 3, 3, 3)]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _full_stats(shape: tuple[int, ...], name: str = "layer") -> LayerStats:
    g = _gen(1)
    spatial = (5, 5) if len(shape) == 4 else ()
    return LayerStats(
        name=name,
        grad=torch.randn(shape, generator=g),
        generator=_gen(2),
        activations=torch.randn((8, shape[0], *spatial), generator=g),
        hessian=torch.randn(shape, generator=g).abs(),
        momentum=torch.rand(shape, generator=g),
    )


def _data_criteria() -> list[str]:
    return [n for n in CRITERIA.names() if CRITERIA.get(n).needs]


# --- the registry ------------------------------------------------------------------------------


def test_registry_has_the_new_criteria_with_their_needs() -> None:
    expected = {
        "taylor": {"grad"},
        "momentum": {"momentum"},
        "hap": {"hessian"},
        "nuclear": {"activations"},
        "entropy": {"activations"},
        "filtersketch": set(),
        "haste": set(),
    }
    for name, needs in expected.items():
        assert CRITERIA.get(name).needs == frozenset(needs)
    for name in CRITERIA.names():  # every criterion declares what it reads, all collectable
        assert isinstance(CRITERIA.get(name).needs, frozenset)
        assert CRITERIA.get(name).needs <= set(COLLECTABLE)


@pytest.mark.parametrize("name", CRITERIA.names())
@pytest.mark.parametrize("shape", SHAPES)
def test_every_criterion_returns_weight_shape_given_full_stats(name: str, shape: tuple[int, ...]) -> None:
    w = torch.randn(shape, generator=_gen(0))
    before = w.clone()
    scores = CRITERIA.get(name)(w, _full_stats(shape))
    assert scores.shape == w.shape and scores.dtype == w.dtype
    assert torch.isfinite(scores).all()
    assert torch.equal(w, before)


@pytest.mark.parametrize("name", CHANNEL_LEVEL)
def test_channel_level_criteria_broadcast_one_score_per_channel(name: str) -> None:
    shape = (6, 3, 3, 3)
    scores = CRITERIA.get(name)(torch.randn(shape, generator=_gen(0)), _full_stats(shape))
    flat = scores.reshape(6, -1)
    assert torch.equal(flat, flat[:, :1].expand_as(flat))


@pytest.mark.parametrize("name", _data_criteria())
def test_data_criteria_raise_a_clear_error_without_stats(name: str) -> None:
    what = next(iter(CRITERIA.get(name).needs))
    how = "MomentumTracker" if what == "momentum" else "collect_stats"
    with pytest.raises(RecipeError, match=rf"criterion '{name}' needs {what} for layer 'fc1': .*{how}"):
        CRITERIA.get(name)(torch.randn(4, 3), LayerStats(name="fc1"))


@pytest.mark.parametrize("name", _data_criteria())
def test_data_criteria_refuse_stats_of_the_wrong_shape(name: str) -> None:
    with pytest.raises(RecipeError, match="does not fit the weight"):
        CRITERIA.get(name)(torch.randn(4, 3), _full_stats((5, 3), name="fc1"))


# --- taylor ------------------------------------------------------------------------------------


def test_taylor_hand_computed_on_a_quadratic_loss() -> None:
    # L = ½‖Wx − t‖², W (2, 3): ∂L/∂W = (Wx − t) xᵀ
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    x, t = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([0.0, 1.0])
    r = (w @ x - t).tolist()  # [-3.5, 6.0]
    grad = torch.tensor([[r[0] * xi for xi in x.tolist()], [r[1] * xi for xi in x.tolist()]])
    expected = [[3.5, 14.0, 1.75], [0.0, 36.0, 6.0]]  # |w · g|
    assert CRITERIA.get("taylor")(w, LayerStats(grad=grad)).tolist() == expected


def test_collect_stats_grad_is_the_mean_cross_entropy_gradient() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    x, y = torch.randn(10, 3, generator=_gen(3)), torch.randint(0, 2, (10,), generator=_gen(4))
    st = collect_stats(lin, x, y, needs={"grad"}, batch_size=4, batches=3)  # batches of 4, 4, 2
    p = torch.softmax(x @ lin.weight.detach().T + lin.bias.detach(), 1)
    expected = (p - F.one_hot(y, 2).float()).T @ x / 10  # ∂ mean CE / ∂W by hand
    assert torch.allclose(st[""].grad, expected, atol=1e-6)
    assert lin.weight.grad is None  # .grad untouched
    taylor = CRITERIA.get("taylor")(lin.weight, st[""])
    assert torch.allclose(taylor, (lin.weight * expected).abs(), atol=1e-6)


# --- hap ---------------------------------------------------------------------------------------


def _quadratic(w: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return 0.5 * w.flatten() @ a @ w.flatten()


def test_hutchinson_is_exact_for_a_diagonal_hessian() -> None:
    w = torch.randn(3, 4, generator=_gen(0), requires_grad=True)
    d = torch.arange(1.0, 13.0)
    g = torch.autograd.grad(_quadratic(w, torch.diag(d)), [w], create_graph=True)
    assert torch.allclose(hutchinson_diagonal(g, [w], samples=1, generator=_gen(1))[0], d.view(3, 4))


def test_hutchinson_channel_trace_converges_on_a_quadratic_loss() -> None:
    b = torch.randn(12, 12, generator=_gen(5))
    a = b @ b.T / 12 + torch.eye(12)  # known Hessian of ½wᵀAw
    w = torch.randn(3, 4, generator=_gen(0), requires_grad=True)
    g = torch.autograd.grad(_quadratic(w, a), [w], create_graph=True)
    diag = hutchinson_diagonal(g, [w], samples=3000, generator=_gen(6))[0]
    true_trace = torch.stack([a[4 * c : 4 * c + 4, 4 * c : 4 * c + 4].trace() for c in range(3)])
    assert torch.allclose(diag.sum(1), true_trace, rtol=0.05)


def test_hap_hand_computed() -> None:
    w = torch.tensor([[1.0, 2.0, 2.0], [0.5, 0.0, 0.0]])
    h = torch.tensor([[1.0, 0.5, 0.5], [4.0, 1.0, 1.0]])  # Tr(H_c) = 2, 6
    scores = CRITERIA.get("hap")(w, LayerStats(hessian=h))
    assert scores.tolist() == [[6.0] * 3, [0.5] * 3]  # 2·9/3, 6·0.25/3


def test_collect_stats_hessian_matches_the_exact_hessian_diagonal() -> None:
    torch.manual_seed(1)
    lin = nn.Linear(3, 2)
    x, y = torch.randn(16, 3, generator=_gen(7)), torch.randint(0, 2, (16,), generator=_gen(8))
    st = collect_stats(
        lin, x, y, needs={"hessian"}, batch_size=16, batches=1, hutchinson_samples=2000, generator=_gen(9)
    )
    exact = torch.autograd.functional.hessian(
        lambda w: F.cross_entropy(x @ w.T + lin.bias.detach(), y), lin.weight.detach()
    )
    assert torch.allclose(st[""].hessian, exact.reshape(6, 6).diagonal().view(2, 3), atol=0.02)
    assert st[""].grad is None  # only what was asked


# --- nuclear, entropy --------------------------------------------------------------------------


def test_nuclear_matches_svd_of_each_channels_feature_maps() -> None:
    acts = torch.randn(6, 3, 2, 4, generator=_gen(0))
    u, v = torch.tensor([1.0, 2.0, 0.0, 0.0, 0.0, 2.0]), torch.arange(8.0)
    acts[:, 1] = torch.outer(u, v).view(6, 2, 4)  # rank 1: nuclear norm ‖u‖·‖v‖
    scores = CRITERIA.get("nuclear")(torch.ones(3, 5, 3, 3), LayerStats(activations=acts))[:, 0, 0, 0]
    brute = [np.linalg.svd(acts[:, c].reshape(6, 8).double().numpy(), compute_uv=False).sum() for c in range(3)]
    assert scores.tolist() == pytest.approx(brute, rel=1e-5)
    assert float(scores[1]) == pytest.approx(3.0 * math.sqrt(140.0), rel=1e-5)


def test_nuclear_of_a_linear_layer_is_the_l2_norm() -> None:
    acts = torch.tensor([[3.0, 1.0, 0.0], [4.0, 1.0, 0.0]])
    scores = CRITERIA.get("nuclear")(torch.ones(3, 2), LayerStats(activations=acts))
    assert scores[:, 0].tolist() == pytest.approx([5.0, math.sqrt(2.0), 0.0])


def test_entropy_constant_is_zero_uniform_is_maximal() -> None:
    bins = 16
    acts = torch.empty(64, 3)
    acts[:, 0] = 2.5  # constant: 0
    acts[:, 1] = torch.arange(float(bins)).repeat(4)  # 4 per bin: log(bins)
    acts[:, 2] = torch.randn(64, generator=_gen(0))
    scores = CRITERIA.get("entropy")(torch.ones(3, 2), LayerStats(activations=acts))[:, 0]
    assert scores[0] == 0.0
    assert float(scores[1]) == pytest.approx(math.log(bins))
    assert 0.0 < float(scores[2]) < math.log(bins)


def test_entropy_averages_conv_maps_over_space_and_reads_bins() -> None:
    acts = torch.zeros(4, 2, 3, 3)
    acts[:, 1] = torch.tensor([0.0, 0.0, 1.0, 1.0]).view(4, 1, 1)  # two values, half each
    scores = CRITERIA.get("entropy")(torch.ones(2, 1, 3, 3), LayerStats(activations=acts, extra={"bins": 2}))
    assert scores[:, 0, 0, 0].tolist() == pytest.approx([0.0, math.log(2.0)])
    assert histogram_entropy(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), 2).tolist() == pytest.approx([math.log(2)])


# --- filtersketch ------------------------------------------------------------------------------


@pytest.mark.parametrize("n, d, ell", [(100, 20, 5), (37, 12, 4), (9, 30, 8)])
def test_frequent_directions_guarantee(n: int, d: int, ell: int) -> None:
    a = torch.randn(n, d, generator=_gen(n), dtype=torch.float64)
    b = frequent_directions(a, ell)
    assert b.shape == (ell, d)
    err = a.T @ a - b.T @ b
    assert float(torch.linalg.eigvalsh(err).min()) >= -1e-9  # BᵀB ⪯ AᵀA
    assert float(torch.linalg.matrix_norm(err, 2)) <= float(a.square().sum()) / ell + 1e-9


def test_frequent_directions_is_exact_when_ell_covers_the_rank() -> None:
    a = torch.randn(30, 4, generator=_gen(0), dtype=torch.float64)
    for ell in (4, 6, 40):
        b = frequent_directions(a, ell)
        assert torch.allclose(b.T @ b, a.T @ a, atol=1e-9)


def test_filtersketch_scores_energy_in_the_sketch_row_space() -> None:
    w = torch.tensor([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [9.0, 1.0, 0.0], [0.0, 0.0, 0.1]])
    # the sketch (ell = 2) spans e1, e2 exactly: σ₃² = 0.01 is shrunk away
    scores = CRITERIA.get("filtersketch")(w, LayerStats())[:, 0]
    assert scores.tolist() == pytest.approx([1.0, 1.0, 1.0, 0.0], abs=1e-6)
    w2 = torch.randn(8, 3, 3, 3, generator=_gen(0))
    s2 = CRITERIA.get("filtersketch")(w2, LayerStats(extra={"ell": torch.tensor(3)}))
    assert float(s2.min()) >= 0.0 and float(s2.max()) <= 1.0 + 1e-6
    assert torch.allclose(
        CRITERIA.get("filtersketch")(w2 * 7.0, LayerStats()), CRITERIA.get("filtersketch")(w2, LayerStats()), atol=1e-5
    )


def test_filtersketch_weights_keep_the_gram_matrix() -> None:
    w = torch.randn(16, 4, 3, 3, generator=_gen(2), dtype=torch.float64)
    b = filtersketch_weights(w, 6)
    assert b.shape == (6, 4, 3, 3)
    wf, bf = w.reshape(16, -1), b.reshape(6, -1)
    assert float(torch.linalg.matrix_norm(wf.T @ wf - bf.T @ bf, 2)) <= float(wf.square().sum()) / 6
    with pytest.raises(RecipeError, match="keep=17"):
        filtersketch_weights(w, 17)


# --- haste -------------------------------------------------------------------------------------


def _with_duplicates() -> torch.Tensor:
    w = torch.randn(6, 3, 3, 3, generator=_gen(11))
    w[3] = w[0]  # an exact duplicate
    w[5] = 2.0 * w[1]  # the same filter, scaled: the same after normalisation
    return w


def test_haste_buckets_put_duplicates_together() -> None:
    buckets = haste_buckets(_with_duplicates(), 16, _gen(0))
    where = {i: k for k, b in enumerate(buckets) for i in b}
    assert where[0] == where[3] and where[1] == where[5]
    assert sorted(i for b in buckets for i in b) == list(range(6))
    assert haste_buckets(_with_duplicates(), 16, _gen(0)) == buckets  # seeded: reproducible


def test_haste_scores_one_representative_per_bucket() -> None:
    w = _with_duplicates()
    scores = CRITERIA.get("haste")(w, LayerStats(generator=_gen(0)))[:, 0, 0, 0]
    norms = w.reshape(6, -1).norm(dim=1)
    assert float(scores[5]) == pytest.approx(float(norms[5]))  # larger of the scaled pair
    assert float(scores[1]) < 1e-5 * float(norms[1])
    high = [i for i in (0, 3) if float(scores[i]) == pytest.approx(float(norms[i]))]
    assert len(high) == 1  # exactly one of the twins
    buckets = haste_buckets(w, 16, _gen(0))
    assert int((scores > 1e-5 * norms).sum()) == len(buckets)  # one high score per bucket


# --- collect_stats -----------------------------------------------------------------------------


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 3),
    )


@pytest.mark.parametrize("build, x_shape", [(_mlp, (20, 6)), (_cnn, (20, 1, 8, 8))])
def test_collect_stats_covers_every_layer(build, x_shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build().train()
    x, y = torch.randn(x_shape, generator=_gen(1)), torch.randint(0, 3, (20,), generator=_gen(2))
    st = collect_stats(
        model,
        x,
        y,
        needs={"grad", "hessian", "activations"},
        batch_size=8,
        batches=2,
        hutchinson_samples=2,
        generator=_gen(3),
    )
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    assert list(st) == list(layers)
    for name, mod in layers.items():
        s = st[name]
        assert s.name == name and s.generator is not None
        assert s.grad.shape == s.hessian.shape == mod.weight.shape
        assert s.activations.shape[:2] == (8, mod.weight.shape[0])
        assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
        assert mod.weight.grad is None
    assert all(m.training for m in model.modules())  # modes restored
    if build is _cnn:
        assert st["0"].activations.shape == (8, 4, 8, 8) and st["3"].activations.shape == (8, 6, 3, 3)


def test_collect_stats_on_masked_quantized_layers_uses_the_latent_weight() -> None:
    torch.manual_seed(0)
    model = _mlp()
    for lin in (model[0], model[3]):
        add_mask(lin)
        parametrize.register_parametrization(lin, "weight", FakeQuant(4))
    get_mask(model[0]).mask[:, 0] = 0.0
    x, y = torch.randn(16, 6, generator=_gen(1)), torch.randint(0, 3, (16,), generator=_gen(2))
    st = collect_stats(model, x, y, needs={"grad", "hessian", "activations"}, batch_size=8, batches=2)
    assert set(st) == {"0", "3"}
    assert st["0"].grad.shape == latent_weight(model[0]).shape
    assert torch.all(st["0"].grad[:, 0] == 0) and torch.all(st["0"].hessian[:, 0] == 0)  # pruned


def test_collect_stats_refuses_unknown_or_untracked_needs() -> None:
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    with pytest.raises(RecipeError, match=r"needs \['labels'\] unknown; allowed: activations, grad"):
        collect_stats(_mlp(), x, y, needs={"labels"})
    with pytest.raises(RecipeError, match="MomentumTracker"):
        collect_stats(_mlp(), x, y, needs={"momentum"})


def test_every_criterion_prunes_with_collected_stats() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(24, 6, generator=_gen(1)), torch.randint(0, 3, (24,), generator=_gen(2))
    for name in CRITERIA.names():
        model = _mlp()
        tracker = MomentumTracker(model)
        for lin in (model[0], model[3]):
            add_mask(lin)
        fit(model, x, y, x, y, spec=TrainSpec(epochs=1, batch_size=8), on_step=tracker)
        st = collect_stats(
            model, x, y, needs=CRITERIA.get(name).needs, batch_size=8, batches=2, generator=_gen(3), momentum=tracker
        )
        achieved = prune_to(model, 0.5, criterion=name, stats=st, allocation="uniform")
        assert achieved == {"0": 0.5, "3": 0.5}, name


# --- momentum ----------------------------------------------------------------------------------


def test_momentum_tracker_matches_a_hand_computed_ema() -> None:
    lin = nn.Linear(2, 2)
    tracker = MomentumTracker(lin, beta=0.5)
    for w in ([[1.0, -2.0], [0.0, 4.0]], [[3.0, 0.0], [-2.0, 2.0]], [[-1.0, 2.0], [2.0, 0.0]]):
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(w))
        tracker(lin)
    # m1 = [[1, 2], [0, 4]]; m2 = ½m1 + ½|w2| = [[2, 1], [1, 3]]; m3 = ½m2 + ½|w3|
    st = tracker.stats()
    assert tracker.steps == 3
    assert st[""].momentum.tolist() == [[1.5, 1.5], [1.5, 1.5]]
    assert CRITERIA.get("momentum")(lin.weight, st[""]).tolist() == [[1.5, 1.5], [1.5, 1.5]]
    with pytest.raises(RecipeError, match="beta 1.0 is not in"):
        MomentumTracker(lin, beta=1.0)


def test_momentum_tracker_runs_inside_fit() -> None:
    model = _mlp()
    tracker = MomentumTracker(model, beta=0.9)
    x, y = torch.randn(24, 6, generator=_gen(1)), torch.randint(0, 3, (24,), generator=_gen(2))
    fit(model, x, y, x, y, spec=TrainSpec(epochs=2, batch_size=8), on_step=tracker)
    assert tracker.steps == 6
    st = collect_stats(model, x, y, needs={"momentum"}, momentum=tracker)
    assert set(st) == {"0", "3"} and st["3"].momentum.shape == (3, 8)
    assert torch.all(st["0"].momentum >= 0)
