"""Weight clustering (weight sharing): exact 1-D k-means and the ``Cluster`` parametrization.

``kmeans_1d`` is the optimal (not Lloyd's local) k-means of a set of numbers: a dynamic
programme over the sorted distinct values, ``D[l][j] = min_i D[l-1][i] + sse(i, j)``, where
``sse`` of a run of values comes in O(1) from weighted prefix sums and the optimal split ``i``
is monotone in ``j`` (the cost is Monge), so each of the ``k`` rows is filled by divide and
conquer in O(n log n) time; back-pointers take (k − 2)·n int32. Every recursion level is one
vectorized numpy pass over the candidate splits, taken in cache-sized chunks: 10^6 distinct
float32 weights take about 5 s of one CPU core at k = 16 (``bench/cluster_dp.py``).

``Cluster`` is Deep Compression's weight sharing as a parametrization on the chain
``weight = quant(cluster(mask · w))``: each entry reads one of ``k`` shared, trainable values,
whose gradient is the sum of the gradients of the entries that share it. Entries that were
exactly zero when the layer was clustered (pruned by a ``Mask``) stay zero. ``ClusterPull``
is the clustering-friendly regularizer that pulls weights toward their centres beforehand.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from qaprune.errors import RecipeError
from qaprune.param import WEIGHT_LAYERS, find, get_mask, latent_weight, place

CHUNK = 32768  # candidate splits per vectorized pass (fits the L2 cache)
MAX_CLUSTERS = 2**16  # the most shared values per layer
MAX_TABLE_BYTES = 2**32  # the DP's back-pointer table: (k - 2) · (distinct + 1) int32


# --- optimal 1-D k-means ------------------------------------------------------------------------
def kmeans_1d(values: Tensor, k: int) -> tuple[Tensor, Tensor, float]:
    """Exact k-means of the entries of ``values`` (any shape, n entries, finite).

    Returns ``(centroids, assign, sse)``: centroids (k',) ascending, k' = min(k, number of
    distinct values), in the dtype of ``values`` (float64 for integers); assign (n,) int64, the
    cluster of each entry in input order (flattened); sse, the float64 sum of squared distances
    of the entries to the returned centroids, the least any k clusters can reach.

    Example:
        >>> c, a, sse = kmeans_1d(torch.tensor([9.0, 0.0, 5.2, 0.1, 5.0], dtype=torch.float64), 3)
        >>> c.tolist(), a.tolist(), round(sse, 4)
        ([0.05, 5.1, 9.0], [2, 0, 1, 0, 1], 0.025)
    """
    k = _check_k(k, low=1, where="kmeans_1d: k")
    x = values.detach().reshape(-1).to("cpu", torch.float64).numpy()
    dtype = values.dtype if values.is_floating_point() else torch.float64
    if not np.isfinite(x).all():
        raise ValueError("kmeans_1d: values must be finite (found NaN or Inf)")
    if x.size == 0:
        return values.new_zeros(0, dtype=dtype), torch.zeros(0, dtype=torch.long, device=values.device), 0.0
    uniq, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    starts = optimal_splits(uniq, counts.astype(np.float64), min(k, uniq.size))
    means = np.add.reduceat(uniq * counts, starts) / np.add.reduceat(counts, starts)
    centroids = torch.from_numpy(means).to(dtype)
    labels = np.repeat(np.arange(starts.size), np.diff(np.append(starts, uniq.size)))
    c64 = centroids.to(torch.float64).numpy()
    sse = float(np.sum(counts * (uniq - c64[labels]) ** 2))
    assign = torch.from_numpy(labels[inverse.reshape(-1)]).to(values.device)
    return centroids.to(values.device), assign, sse


def optimal_splits(x: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """First index of each of the ``k`` clusters of the optimal weighted k-means of sorted,
    distinct ``x`` (m,) with weights ``w`` (m,) > 0; 1 <= k <= m. Returns (k,) int64, [0, ...]."""
    m = x.size
    if k == 1 or k == m:
        return np.arange(k, dtype=np.int64) if k == m else np.zeros(1, dtype=np.int64)
    if (k - 2) * (m + 1) * 4 > MAX_TABLE_BYTES:
        raise ValueError(
            f"kmeans_1d: k={k} over {m} distinct values needs a "
            f"{(k - 2) * (m + 1) * 4 / 2**30:.1f} GiB table; use a smaller k"
        )
    centred = x - np.dot(w, x) / w.sum()  # prefix sums of centred values lose less to cancellation
    W, S1, S2 = (np.concatenate(([0.0], np.cumsum(v))) for v in (w, w * centred, w * centred**2))
    with np.errstate(divide="ignore", invalid="ignore"):
        D = S2 - S1**2 / W  # one cluster: the SSE of the first j values (D[0] is never read)
    back = []
    for layer in range(2, k):  # D[j]: the least SSE of the first j values in `layer` clusters
        D, opt = _fill_row(D - S2, S1, W, S2, layer, m - (k - layer))
        back.append(opt)
    _, arg = _row_minima(D - S2, S1, W, np.array([m]), np.array([k - 1]), np.array([m - 1]))
    starts = [int(arg[0])]
    for opt in reversed(back):
        starts.append(int(opt[starts[-1]]))
    return np.array([0, *reversed(starts)], dtype=np.int64)


def _fill_row(
    A: np.ndarray, S1: np.ndarray, W: np.ndarray, S2: np.ndarray, lo: int, hi: int
) -> tuple[np.ndarray, np.ndarray]:
    """One DP row for j in [lo, hi] with candidate splits i in [lo - 1, j - 1], A = D_prev − S2.
    Divide and conquer, one vectorized pass per level over all midpoints, kept in j order."""
    D, opt = np.full(A.size, np.inf), np.zeros(A.size, dtype=np.int32)
    lo_, hi_, o_lo, o_hi = (np.array([v]) for v in (lo, hi, lo - 1, hi - 1))
    while lo_.size:
        mid = (lo_ + hi_) // 2
        best, arg = _row_minima(A, S1, W, mid, o_lo, np.minimum(o_hi, mid - 1))
        D[mid], opt[mid] = best + S2[mid], arg
        keep = np.stack((lo_ < mid, mid < hi_), 1).ravel()  # left child, then right child
        lo_, hi_, o_lo, o_hi = (
            np.stack(p, 1).ravel()[keep] for p in ((lo_, mid + 1), (mid - 1, hi_), (o_lo, arg), (arg, o_hi))
        )
    return D, opt


def _row_minima(
    A: np.ndarray, S1: np.ndarray, W: np.ndarray, mid: np.ndarray, o_lo: np.ndarray, o_hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """min and argmin over i in [o_lo, o_hi] of A[i] − (S1[j] − S1[i])² / (W[j] − W[i]) for each
    j = mid (ascending; ranges ascending, consecutive ones sharing at most an end). Row s scans
    the block (o_hi[s-1], o_hi[s]], its splits below o_lo[s] masked: the blocks tile one run, read
    as slices. A start shared with the row before is evaluated on its own."""
    prev = np.concatenate(([o_lo[0] - 1], o_hi[:-1]))
    best, arg = np.full(mid.size, np.inf), o_lo.copy()
    shared = np.flatnonzero(o_lo <= prev)
    if shared.size:
        i, j = o_lo[shared], mid[shared]
        best[shared] = A[i] - (S1[j] - S1[i]) ** 2 / (W[j] - W[i])
    rows = np.flatnonzero(o_hi > prev)
    first, end = prev[rows] + 1, o_hi[rows] + 1
    for t0 in range(int(first[0]), int(end[-1]), CHUNK):
        t1 = min(t0 + CHUNK, int(end[-1]))
        seg = rows[np.searchsorted(end, t0, "right") : np.searchsorted(first, t1, "left")]
        lo = np.maximum(prev[seg] + 1, t0)
        count = np.minimum(o_hi[seg] + 1, t1) - lo
        b, a = _block_minima(A, S1, W, t0, mid[seg], count, np.clip(o_lo[seg] - lo, 0, count))
        better = b < best[seg]
        best[seg[better]], arg[seg[better]] = b[better], a[better]
    return best, arg


def _block_minima(
    A: np.ndarray, S1: np.ndarray, W: np.ndarray, t0: int, mid: np.ndarray, count: np.ndarray, skip: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Minima over consecutive blocks of ``count`` (>= 1) splits from t0, one per j = mid; the
    first ``skip`` splits of each block are not candidates (an all-skipped block gives inf)."""
    local = np.cumsum(count) - count
    t1 = t0 + int(local[-1] + count[-1])
    s = np.repeat(S1[mid], count)
    np.subtract(s, S1[t0:t1], out=s)
    np.multiply(s, s, out=s)
    d = np.repeat(W[mid], count)
    np.subtract(d, W[t0:t1], out=d)
    np.divide(s, d, out=s)
    v = np.subtract(A[t0:t1], s, out=s)
    if skip.any():
        v[np.repeat(local - np.cumsum(skip) + skip, skip) + np.arange(skip.sum())] = np.inf
    b = np.minimum.reduceat(v, local)
    hit = np.flatnonzero(v == np.repeat(b, count))
    return b, t0 + hit[np.searchsorted(hit, local)]


def _check_k(k: object, *, low: int, where: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not low <= k <= MAX_CLUSTERS:
        raise RecipeError(f"{where}: {k!r} clusters is not supported; allowed: {low}..{MAX_CLUSTERS}")
    return int(k)


# --- the parametrization -----------------------------------------------------------------------
class Cluster(nn.Module):
    """Weight-sharing parametrization. w (out, ...) -> centroids[assign], same shape.

    ``centroids`` (k,) is a trainable ``nn.Parameter``; ``assign`` (weight shape, int64) and
    ``zero`` (weight shape, bool: entries pinned to 0, e.g. pruned) are buffers. The input is not
    read: the weight is the shared values. Build one with ``Cluster.fit(weight, k)``.

    Example:
        >>> lin = nn.Linear(8, 4)
        >>> with torch.no_grad(): lin.weight[0] = 0
        >>> cl = Cluster.fit(lin.weight, 3)
        >>> from qaprune.param import place
        >>> _ = place(lin, "weight", cl)
        >>> len(torch.unique(lin.weight)) <= 3 + 1, bool((lin.weight[0] == 0).all())
        (True, True)
        >>> torch.equal(cl.codebook()[cl.codes()], lin.weight)
        True
    """

    stage = "share"  # qaprune.param: after the mask, before the quantizer

    def __init__(self, centroids: Tensor, assign: Tensor, *, zero: Tensor | None = None) -> None:
        super().__init__()
        if centroids.dim() != 1 or centroids.numel() == 0:
            raise ValueError(f"Cluster: centroids must have shape (k,), k >= 1; got {tuple(centroids.shape)}")
        if assign.numel() and not 0 <= int(assign.min()) <= int(assign.max()) < centroids.numel():
            raise ValueError(f"Cluster: assign must lie in [0, {centroids.numel()})")
        self.centroids = nn.Parameter(centroids.detach().clone())
        self.register_buffer("assign", assign.detach().long().clone())
        self.register_buffer(
            "zero", torch.zeros_like(self.assign, dtype=torch.bool) if zero is None else zero.detach().bool().clone()
        )

    @classmethod
    @torch.no_grad()
    def fit(cls, weight: Tensor, k: int) -> Cluster:
        """Optimal ``k``-means of the non-zero entries of ``weight``; its zeros are pinned."""
        zero = weight == 0
        centroids, codes, _ = kmeans_1d(weight[~zero], k)
        assign = torch.zeros(weight.shape, dtype=torch.long, device=weight.device)
        assign[~zero] = codes
        if centroids.numel() == 0:  # every entry is zero
            centroids = weight.new_zeros(1)
        return cls(centroids, assign, zero=zero)

    def forward(self, w: Tensor) -> Tensor:
        return torch.where(self.zero, 0.0, self.centroids[self.assign])

    @torch.no_grad()
    def codebook(self) -> Tensor:
        """Every value the weight can take: the centroids (k,), then 0 when some entry is pinned."""
        c = self.centroids.detach()
        return torch.cat([c, c.new_zeros(1)]) if bool(self.zero.any()) else c.clone()

    def codes(self) -> Tensor:
        """Index of each entry in ``codebook()`` (weight shape, int64)."""
        return torch.where(self.zero, self.centroids.numel(), self.assign)

    def extra_repr(self) -> str:
        return f"k={self.centroids.numel()}, pinned_zeros={int(self.zero.sum())}"


# --- models ------------------------------------------------------------------------------------
def cluster_model(
    model: nn.Module, k: int | dict[str, int], *, layers: Iterable[str] | None = None
) -> dict[str, Cluster]:
    """Cluster the weight of every Linear/Conv layer of ``model`` in place (or those in
    ``layers``, or the keys of ``k`` when it maps layer names to k). Each gets a ``Cluster``
    fitted to its non-zero pre-quantizer weight (``mask · w``), right after its ``Mask`` and
    before any quantizer: ``weight = quant(cluster(mask · w))``. A k outside 2..65536 or an
    unknown layer raises a ``RecipeError`` naming the layer, before any layer changes.

    Example:
        >>> m = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> cl = cluster_model(m, {"0": 4, "2": 2})
        >>> [len(torch.unique(m[i].weight)) for i in (0, 2)]
        [4, 2]
    """
    targets = _targets(model, k, layers)
    for name, (mod, _) in targets.items():
        if _find_cluster(mod) is not None:
            raise RecipeError(f"clusters: layer {name!r} is already clustered")
    out = {name: Cluster.fit(pre_cluster_weight(mod), n) for name, (mod, n) in targets.items()}
    for name, cl in out.items():
        place(targets[name][0], "weight", cl)  # after a Mask, before quantizers
    return out


def clusters_from_state(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Cluster]:
    """Put an empty ``Cluster`` wherever ``state`` (a clustered model's ``state_dict``) has one,
    shaped as there, so that ``model.load_state_dict(state)`` then fits. Masks and quantizers
    must already be attached (``attach``)."""
    suffix = ".parametrizations.weight.1.centroids", ".parametrizations.weight.0.centroids"
    out = {}
    for key, centroids in state.items():
        name = next((key[: -len(s)] for s in suffix if key.endswith(s)), None)
        if name is not None:
            mod = model.get_submodule(name)
            shape = state[key.replace(".centroids", ".assign")].shape
            out[name] = Cluster(torch.zeros_like(centroids), torch.zeros(shape, dtype=torch.long))
            place(mod, "weight", out[name])
    return out


@torch.no_grad()
def pre_cluster_weight(module: nn.Module) -> Tensor:
    """What a ``Cluster`` on ``module.weight`` reads: ``mask · w`` under a ``Mask``, else the
    latent weight (detached, weight shape)."""
    mask, w = get_mask(module), latent_weight(module)
    return (mask(w) if mask is not None else w).detach()


def _find_cluster(module: nn.Module) -> Cluster | None:
    found = find(module, "weight", Cluster)
    return found if isinstance(found, Cluster) else None


def _targets(
    model: nn.Module, k: int | dict[str, int], layers: Iterable[str] | None
) -> dict[str, tuple[nn.Module, int]]:
    found = {n: m for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}
    names = list(layers) if layers is not None else list(k) if isinstance(k, dict) else list(found)
    out = {}
    for name in names:
        if name not in found:
            raise RecipeError(f"clusters: no Linear/Conv layer named {name!r}; known: {', '.join(found)}")
        if isinstance(k, dict) and name not in k:
            raise RecipeError(f"clusters: layer {name!r} has no k; given for: {', '.join(k)}")
        n_clusters = k[name] if isinstance(k, dict) else k
        out[name] = (found[name], _check_k(n_clusters, low=2, where=f"clusters of layer {name!r}"))
    return out


# --- clustering-friendly regularizer -----------------------------------------------------------
@torch.no_grad()
def cluster_centres(
    model: nn.Module, k: int | dict[str, int], *, layers: Iterable[str] | None = None
) -> dict[str, Tensor]:
    """The optimal centres (k',) of each target layer's non-zero pre-quantizer weight."""
    out = {}
    for name, (mod, n_clusters) in _targets(model, k, layers).items():
        w = pre_cluster_weight(mod)
        out[name] = kmeans_1d(w[w != 0], n_clusters)[0]
    return out


def nearest(w: Tensor, centres: Tensor) -> Tensor:
    """The nearest of the ascending ``centres`` (k,) to each entry of ``w`` (any shape)."""
    c = centres.detach().to(w.dtype)
    return c[torch.bucketize(w.detach(), (c[1:] + c[:-1]) / 2)]


def cluster_penalty(
    model: nn.Module,
    k: int | dict[str, int],
    *,
    centres: dict[str, Tensor] | None = None,
    layers: Iterable[str] | None = None,
) -> Tensor:
    """Σ over the target layers' non-zero pre-quantizer weights of (w − nearest centre)², a
    scalar that is differentiable in the latent weights; ``centres`` (name -> (k,)) default to
    ``cluster_centres``. Layers already clustered are skipped (their weights sit on centres).

    Example:
        >>> lin = nn.Linear(4, 4)
        >>> cluster_penalty(lin, 16).item() == 0.0, cluster_penalty(lin, 2).item() > 0
        (True, True)
    """
    targets = {n: t for n, t in _targets(model, k, layers).items() if _find_cluster(t[0]) is None}
    if centres is None:
        centres = cluster_centres(model, {n: t[1] for n, t in targets.items()}, layers=list(targets))
    terms = []
    for name, (mod, _) in targets.items():
        mask = get_mask(mod)
        w = mask(latent_weight(mod)) if mask is not None else latent_weight(mod)
        if centres[name].numel():
            terms.append((((w - nearest(w, centres[name])) * (w != 0)) ** 2).sum())
    return torch.stack(terms).sum() if terms else torch.zeros(())


class ClusterPull:
    """Soft weight sharing before hard clustering: pulls every non-zero weight toward its
    nearest centre, the centres being re-fitted (``kmeans_1d``) every ``every`` calls.

    Two ways to use it (pick one per training run):
    - ``fit(..., on_step=pull)``: after each optimizer step, the decoupled step
      ``w ← w − lr · strength · (w − c(w))`` (AdamW-style; rate clipped to 1);
    - ``loss + pull.penalty(model)`` in your own loop: ``strength / 2 · Σ (w − c(w))²``.

    Example:
        >>> lin = nn.Linear(16, 16)
        >>> pull = ClusterPull(4, strength=10.0, lr=0.05)
        >>> before = cluster_penalty(lin, 4).item(); pull(lin)
        >>> cluster_penalty(lin, 4).item() < before
        True
    """

    def __init__(
        self,
        k: int | dict[str, int],
        *,
        strength: float,
        lr: float = 1e-3,
        every: int = 100,
        layers: Iterable[str] | None = None,
    ) -> None:
        if strength < 0 or lr <= 0 or every < 1:
            raise ValueError(f"ClusterPull: need strength >= 0, lr > 0, every >= 1; got {strength}, {lr}, {every}")
        self.k, self.strength, self.lr, self.every = k, strength, lr, every
        self.layers = list(layers) if layers is not None else None
        self.calls, self._centres = 0, None

    def centres(self, model: nn.Module) -> dict[str, Tensor]:
        """The current centres, re-fitted on the first call and then every ``every`` calls."""
        if self._centres is None or self.calls % self.every == 0:
            self._centres = cluster_centres(model, self.k, layers=self.layers)
        self.calls += 1
        return self._centres

    def penalty(self, model: nn.Module) -> Tensor:
        """``strength / 2 · cluster_penalty``, differentiable in the latent weights."""
        return self.strength / 2 * cluster_penalty(model, self.k, centres=self.centres(model), layers=self.layers)

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> None:
        rate, centres = min(1.0, self.lr * self.strength), self.centres(model)
        for name, (mod, _) in _targets(model, self.k, self.layers).items():
            if _find_cluster(mod) is None and centres[name].numel():
                w = pre_cluster_weight(mod)
                latent_weight(mod).sub_(rate * (w - nearest(w, centres[name])) * (w != 0))
