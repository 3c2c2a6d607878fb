"""Weight clustering: exact 1-D k-means against brute force and Lloyd, the Cluster parametrization
on its own and on the Mask → Cluster → FakeQuant chain, cluster_model, the regularizer."""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

import qaprune.quant.cluster as cluster_mod
from qaprune.compress import attach, cluster_k, recipe_clusters
from qaprune.errors import RecipeError
from qaprune.models import build_model
from qaprune.param import Mask, bake, get_mask
from qaprune.prune.pruner import prune_to
from qaprune.quant.cluster import (
    Cluster,
    ClusterPull,
    cluster_centres,
    cluster_model,
    cluster_penalty,
    clusters_from_state,
    kmeans_1d,
    nearest,
)
from qaprune.quant.fake_quant import FakeQuant
from qaprune.recipe import Recipe
from qaprune.train import fit


def _sse(v: np.ndarray) -> float:
    return float(((v - v.mean()) ** 2).sum()) if v.size else 0.0


def brute_force(values: list[float], k: int) -> float:
    """Least SSE over every partition of the sorted values into at most k contiguous runs."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    best = np.inf
    for cuts in range(min(k, x.size)):
        for inner in itertools.combinations(range(1, x.size), cuts):
            bounds = (0, *inner, x.size)
            best = min(best, sum(_sse(x[a:b]) for a, b in zip(bounds, bounds[1:])))
    return best


def reference_dp(x: np.ndarray, k: int) -> float:
    """The plain O(k·n²) dynamic programme over sorted values (no dedup, no divide and conquer)."""
    x = np.sort(x.astype(np.float64))
    n = x.size
    s1, s2, cnt = (np.concatenate(([0.0], np.cumsum(v))) for v in (x, x * x, np.ones(n)))
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = np.where(i < j, s2[j] - s2[i] - (s1[j] - s1[i]) ** 2 / (cnt[j] - cnt[i]), np.inf)
    d = cost[0].copy()
    for _ in range(min(k, n) - 1):
        d = np.min(d[:, None] + cost, axis=0)
    return float(d[n])


def _assert_sse(got: float, want: float) -> None:
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


# --- kmeans_1d ---------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.integers(-6, 6).map(lambda v: v / 4), st.floats(-10, 10, allow_nan=False, allow_infinity=False)),
        min_size=1,
        max_size=9,
    ),
    k=st.integers(1, 10),
)
def test_dp_equals_brute_force(values, k):
    c, a, sse = kmeans_1d(torch.tensor(values, dtype=torch.float64), k)
    _assert_sse(sse, brute_force(values, k))
    assert c.numel() == min(k, len(set(values))) and a.shape == (len(values),)
    assert torch.all(c[1:] > c[:-1])


@pytest.mark.parametrize("seed", range(25))
def test_dp_equals_brute_force_random(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(1, 12)), int(rng.integers(1, 6))
    values = rng.choice(rng.normal(size=n), size=n)  # with duplicates
    _assert_sse(kmeans_1d(torch.from_numpy(values), k)[2], brute_force(list(values), k))


@pytest.mark.parametrize("chunk", [3, 64, 32768])
@pytest.mark.parametrize("k", [2, 3, 7, 20])
def test_dp_equals_reference_dp_on_larger_inputs(monkeypatch, chunk, k):
    """Several recursion levels and, with small chunks, blocks split across chunks."""
    monkeypatch.setattr(cluster_mod, "CHUNK", chunk)
    rng = np.random.default_rng(k)
    x = np.round(rng.laplace(size=300), 2)  # duplicates too
    _assert_sse(kmeans_1d(torch.from_numpy(x), k)[2], reference_dp(x, k))


def test_outputs_are_consistent():
    x = torch.distributions.Laplace(0.0, 0.1).sample((2, 500)).float()
    c, a, sse = kmeans_1d(x, 8)
    assert c.dtype == torch.float32 and a.dtype == torch.long and a.shape == (1000,)
    err = (x.reshape(-1).double() - c.double()[a]) ** 2
    assert sse == pytest.approx(float(err.sum()), rel=1e-9)
    # optimal clusters are Voronoi cells: each entry sits with (one of) its nearest centroids
    dist = (x.reshape(-1, 1).double() - c.double()).abs()
    assert torch.allclose(dist.gather(1, a[:, None]).squeeze(1), dist.min(1).values, atol=1e-7)


def test_fewer_distinct_values_than_k():
    x = torch.tensor([3.0, 1.0, 3.0, 2.0, 1.0])
    c, a, sse = kmeans_1d(x, 16)
    assert c.tolist() == [1.0, 2.0, 3.0] and a.tolist() == [2, 0, 2, 1, 0] and sse == 0.0
    assert kmeans_1d(torch.full((7,), 0.5), 3)[0].tolist() == [0.5]
    c, a, sse = kmeans_1d(torch.zeros(0), 4)
    assert c.numel() == 0 and a.numel() == 0 and sse == 0.0
    assert kmeans_1d(torch.tensor([1, 2, 10]), 2)[0].dtype == torch.float64  # integers → float64


@pytest.mark.parametrize("k", [0, -1, 2**16 + 1, 2.5, True, "4"])
def test_bad_k_refused(k):
    with pytest.raises(ValueError, match="kmeans_1d: k"):
        kmeans_1d(torch.randn(10), k)


def test_non_finite_refused():
    with pytest.raises(ValueError, match="finite"):
        kmeans_1d(torch.tensor([0.0, float("nan")]), 2)


@pytest.mark.parametrize("dist", ["uniform", "gaussian", "laplace"])
@pytest.mark.parametrize("k", [2, 5, 16])
def test_never_worse_than_lloyd(dist, k):
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(k)
    x = {
        "uniform": rng.uniform(-1, 1, 3000),
        "gaussian": rng.normal(0, 0.05, 3000),
        "laplace": rng.laplace(0, 0.05, 3000),
    }[dist]
    sse = kmeans_1d(torch.from_numpy(x), k)[2]
    for n_init in (1, 4):
        km = KMeans(n_clusters=k, n_init=n_init, random_state=0).fit(x[:, None])
        lloyd = float(((x - km.cluster_centers_[km.labels_, 0]) ** 2).sum())
        assert sse <= lloyd * (1 + 1e-9)


# --- Cluster -----------------------------------------------------------------------------------
def _clustered_linear(k: int = 4) -> tuple[nn.Linear, Cluster]:
    torch.manual_seed(0)
    lin = nn.Linear(12, 6)
    with torch.no_grad():
        lin.weight[:, :3] = 0  # "pruned"
    cl = Cluster.fit(lin.weight, k)
    parametrize.register_parametrization(lin, "weight", cl)
    return lin, cl


def test_cluster_values_and_codes():
    lin, cl = _clustered_linear(4)
    w = lin.weight
    assert len(torch.unique(w)) <= 4 + 1 and bool((w[:, :3] == 0).all())
    assert torch.equal(cl.codebook()[cl.codes()], w)
    assert cl.codebook().shape == (5,) and cl.codes().shape == w.shape
    assert cl.codes().max() == 4 and bool((cl.codes()[:, :3] == 4).all())


def test_centroid_gradient_is_sum_of_weight_gradients():
    lin, cl = _clustered_linear(4)
    x = torch.randn(32, 12)
    with parametrize.cached():
        w = lin.weight
        w.retain_grad()
        F.linear(x, w, lin.bias).pow(2).sum().backward()
    want = torch.zeros(4).index_add_(0, cl.assign[~cl.zero], w.grad[~cl.zero])
    assert torch.allclose(cl.centroids.grad, want, rtol=1e-5, atol=1e-6)


def test_pinned_zeros_survive_training():
    lin, cl = _clustered_linear(4)
    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    before = cl.centroids.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        lin(torch.randn(16, 12)).pow(2).mean().backward()
        opt.step()
    assert not torch.equal(before, cl.centroids.detach())
    assert bool((lin.weight[:, :3] == 0).all()) and len(torch.unique(lin.weight)) <= 5


def test_cluster_refuses_bad_shapes():
    with pytest.raises(ValueError, match="centroids"):
        Cluster(torch.zeros(0), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="assign"):
        Cluster(torch.zeros(2), torch.tensor([0, 2]))


def test_all_zero_weight():
    cl = Cluster.fit(torch.zeros(3, 4), 4)
    assert torch.equal(cl(torch.zeros(3, 4)), torch.zeros(3, 4))
    assert torch.equal(cl.codebook()[cl.codes()], torch.zeros(3, 4))


# --- on a model: Mask → Cluster → FakeQuant, bake ---------------------------------------------
def _qap_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model("mlp", input_shape=(16,), num_classes=5)
    attach(model, Recipe(quant={"weight_bits": 6}, prune={"sparsity": 0.5}))
    prune_to(model, 0.5)
    return model


def test_cluster_model_on_masked_quantized_mlp():
    model = _qap_mlp()
    masks = {n: get_mask(m).mask.clone() for n, m in model.named_modules() if get_mask(m)}
    out = cluster_model(model, 8)
    assert list(out) == ["fc1", "fc2", "fc3", "fc4"]
    for name, mod in model.named_modules():
        if name not in out:
            continue
        chain = [type(p) for p in mod.parametrizations["weight"]]
        assert chain == [Mask, Cluster, FakeQuant]
        w = mod.weight
        assert bool((w[masks[name] == 0] == 0).all()) and len(torch.unique(w)) <= 8 + 1
    x, y = torch.randn(64, 16), torch.randint(0, 5, (64,))
    centroids = out["fc2"].centroids.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert not torch.equal(centroids, out["fc2"].centroids.detach())
    for name in out:
        w = getattr(model, name).weight
        assert bool((w[masks[name] == 0] == 0).all()) and len(torch.unique(w)) <= 9
    model.eval()
    with torch.no_grad():
        before, weights = model(x), {n: getattr(model, n).weight.clone() for n in out}
    bake(model)
    assert not parametrize.is_parametrized(model.fc1)
    assert all(torch.equal(getattr(model, n).weight, w) for n, w in weights.items())
    assert torch.allclose(model(x), before)


def test_state_dict_round_trip():
    model = _qap_mlp()
    cluster_model(model, {"fc1": 8, "fc4": 3})
    model.eval()
    x = torch.randn(8, 16)
    fresh = _qap_mlp(seed=1)
    made = clusters_from_state(fresh, model.state_dict())
    assert sorted(made) == ["fc1", "fc4"] and made["fc4"].centroids.numel() == 3
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    assert torch.equal(fresh(x), model(x))
    assert [type(p) for p in fresh.fc1.parametrizations["weight"]] == [Mask, Cluster, FakeQuant]


def test_cluster_sees_the_masked_weight():
    model = _qap_mlp()
    cl = cluster_model(model, {"fc1": 4}, layers=["fc1"])["fc1"]
    assert torch.equal(cl.zero, get_mask(model.fc1).mask == 0)
    assert cl.centroids.numel() == 4


def test_plain_model_and_per_layer_k():
    m = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(16, 3))
    out = cluster_model(m, {"0": 3, "2": 2})
    assert [c.centroids.numel() for c in out.values()] == [3, 2]
    assert len(torch.unique(m[0].weight)) == 3 and m(torch.randn(1, 2, 4, 4)).shape == (1, 3)


@pytest.mark.parametrize("k", [1, 2**16 + 1, 0, True])
def test_bad_k_names_the_layer(k):
    model = _qap_mlp()
    with pytest.raises(RecipeError, match="fc3"):
        cluster_model(model, {"fc1": 4, "fc3": k})
    assert not any(isinstance(p, Cluster) for p in model.fc1.parametrizations["weight"])


def test_unknown_and_repeated_layers_refused():
    model = _qap_mlp()
    with pytest.raises(RecipeError, match="fc9"):
        cluster_model(model, 4, layers=["fc9"])
    with pytest.raises(RecipeError, match="fc2"):
        cluster_model(model, {"fc1": 4}, layers=["fc2"])
    cluster_model(model, 4, layers=["fc1"])
    with pytest.raises(RecipeError, match="already clustered"):
        cluster_model(model, 4, layers=["fc1"])


def test_cluster_k_from_recipe():
    r = Recipe(quant={"clusters": 16}, layers={"fc4": {"clusters": 4}})
    assert cluster_k(r, "fc1") == 16 and cluster_k(r, "fc4") == 4
    assert cluster_k(Recipe(), "fc1") is None
    model = build_model("mlp", input_shape=(16,), num_classes=5)
    assert recipe_clusters(model, r) == {"fc1": 16, "fc2": 16, "fc3": 16, "fc4": 4}
    assert recipe_clusters(model, Recipe(layers={"fc2": {"clusters": 8}})) == {"fc2": 8}


# --- the regularizer ---------------------------------------------------------------------------
def test_penalty_is_zero_on_centres_and_decreases_toward_them():
    torch.manual_seed(0)
    lin = nn.Linear(20, 10)
    centres = cluster_centres(lin, 4, layers=[""])
    p0 = cluster_penalty(lin, 4, layers=[""])
    assert p0.item() > 0
    w = lin.weight.detach()
    target = nearest(w, centres[""])
    with torch.no_grad():
        lin.weight.copy_(w + 0.5 * (target - w))
    p1 = cluster_penalty(lin, 4, centres=centres, layers=[""])
    assert p1.item() == pytest.approx(p0.item() / 4, rel=1e-4)
    with torch.no_grad():
        lin.weight.copy_(target)
    assert cluster_penalty(lin, 4, layers=[""]).item() == 0.0


def test_penalty_gradient_and_masked_entries():
    model = _qap_mlp()
    pull = ClusterPull({"fc1": 4}, strength=2.0)
    loss = pull.penalty(model)
    loss.backward()
    w = model.fc1.parametrizations["weight"].original
    mask = get_mask(model.fc1).mask
    eff = (w * mask).detach()
    want = 2.0 * (eff - nearest(eff, pull.centres(model)["fc1"])) * mask
    assert torch.allclose(w.grad, want, atol=1e-6)
    assert bool((w.grad[mask == 0] == 0).all())


def test_pull_as_fit_hook():
    model = _qap_mlp()
    before = cluster_penalty(model, 8).item()
    masks = {n: get_mask(getattr(model, n)).mask.clone() for n in ("fc1", "fc2", "fc3", "fc4")}
    x, y = torch.randn(128, 16), torch.randint(0, 5, (128,))
    pull = ClusterPull(8, strength=20.0, lr=1e-2, every=4)
    fit(model, x, y, x, y, spec=Recipe(train={"epochs": 3, "batch_size": 32}).train, on_step=pull)
    assert pull.calls == 12 and cluster_penalty(model, 8).item() < before / 2
    assert all(bool((getattr(model, n).weight[m == 0] == 0).all()) for n, m in masks.items())
    out = cluster_model(model, 8)  # hard clustering after the pull
    assert len(out) == 4


def test_pull_refuses_bad_options():
    with pytest.raises(ValueError, match="ClusterPull"):
        ClusterPull(4, strength=-1.0)


def test_docstring_examples():
    result = doctest.testmod(cluster_mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
