"""Composable compression schemes with Condensa's interface: ``pi`` / ``apply`` / ``restore``.

A scheme is a projection Π on the float weights of a model's Linear/Conv layers (the latent
weight when a layer is parametrized): ``project({name: w}) -> {name: Π(w)}`` is pure, and
- ``pi(model)`` overwrites the weights with their projection, in place;
- ``apply(model)`` does the same but first keeps the uncompressed weights (once: applying again
  projects those again, so ``apply`` is idempotent);
- ``restore(model)`` puts the kept weights back, bit for bit.

Schemes: ``Prune`` (qaprune.prune's criteria, structures and allocations), ``Quantize``
(``FakeQuant``'s rule: symmetric, max-scaled integer levels), ``Cluster`` (weight sharing by
exact 1-D k-means), ``Unify`` (micro-structured unification, ``qaprune.quant.unify``) and
``Compose([...])``, which projects with each in turn. Each scheme acts on every Linear/Conv
layer, or on ``layers=[...]`` only. ``qaprune.lc.lc_compress`` trains toward any scheme.

Example:
    >>> model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    >>> before = model[0].weight.detach().clone()
    >>> scheme = Compose([Prune(0.5), Quantize(4)])
    >>> _ = scheme.apply(model)
    >>> float((model[0].weight == 0).float().mean()) >= 0.25, len(model[0].weight.unique()) <= 15
    (True, True)
    >>> _ = scheme.restore(model)
    >>> torch.equal(model[0].weight, before)
    True
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from qaprune.errors import RecipeError
from qaprune.param import latent_weight
from qaprune.quant.unify import check_options, unify_project, weight_layers

Weights = dict[str, Tensor]


class Scheme:
    """Base class: subclasses implement ``_project_layer`` (one weight) or ``project`` (all)."""

    def __init__(self, *, layers: Sequence[str] | None = None) -> None:
        self.layers = list(layers) if layers is not None else None
        self._kept: weakref.WeakKeyDictionary[nn.Module, Weights] = weakref.WeakKeyDictionary()

    def weights(self, model: nn.Module) -> dict[str, Tensor]:
        """The float weights this scheme compresses (the parameters themselves), by layer name."""
        layers = weight_layers(model, self.layers, field_name=self._field("layers"))
        return {n: latent_weight(m) for n, m in layers.items()}

    def project(self, weights: Weights) -> Weights:
        """Π of the weights of ``self.layers`` (all when None); others pass through. Pure:
        the result holds new tensors for the projected layers. {name: (out, ...)} -> same."""
        names = self._names(weights)
        return {n: self._project_layer(w.detach(), n) if n in names else w for n, w in weights.items()}

    def _names(self, weights: Weights) -> list[str]:
        names = self.layers if self.layers is not None else list(weights)
        missing = [n for n in names if n not in weights]
        if missing:
            raise RecipeError(f"{self._field('layers')}: {missing} not among the weights: {', '.join(weights)}")
        return names

    def _project_layer(self, w: Tensor, layer: str) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def pi(self, model: nn.Module) -> nn.Module:
        """Compress ``model`` in place (its weights become their projection); nothing is kept."""
        params = self.weights(model)
        for name, value in self.project({n: p.detach() for n, p in params.items()}).items():
            params[name].copy_(value)
        return model

    @torch.no_grad()
    def apply(self, model: nn.Module) -> nn.Module:
        """Like ``pi``, keeping the uncompressed weights for ``restore``; applying twice
        projects the kept weights again, so the result is the same."""
        if model in self._kept:
            self._copy_back(model, self._kept[model])
        else:
            self._kept[model] = {n: p.detach().clone() for n, p in self.weights(model).items()}
        return self.pi(model)

    @torch.no_grad()
    def restore(self, model: nn.Module) -> nn.Module:
        """Undo ``apply``: the uncompressed weights back, bit for bit."""
        if model not in self._kept:
            raise RecipeError(f"{self._field('restore')}: this scheme was not applied to the model")
        self._copy_back(model, self._kept.pop(model))
        return model

    def _copy_back(self, model: nn.Module, kept: Weights) -> None:
        params = self.weights(model)
        for name, value in kept.items():
            params[name].copy_(value)

    def _field(self, what: str) -> str:
        return f"scheme {type(self).__name__}.{what}"

    def _layers_repr(self) -> str:
        return f", layers={self.layers}" if self.layers is not None else ""


class Prune(Scheme):
    """Zero a ``sparsity`` fraction of the weights (or keep a ``density`` fraction, Condensa's
    argument) with qaprune.prune: ``criterion`` scores, ``allocation`` spreads the sparsity over
    layers ("global": one ranking of all layers), ``structure`` (+ ``structure_args``) picks the
    pattern. Data-dependent criteria read ``stats`` (layer name -> LayerStats).

    Example:
        >>> w = Prune(0.5).project({"fc": torch.tensor([[0.1, -2.0, 0.3, 4.0]])})["fc"]
        >>> w.tolist()
        [[0.0, -2.0, 0.0, 4.0]]
    """

    def __init__(
        self,
        sparsity: float | None = None,
        *,
        density: float | None = None,
        criterion: str = "magnitude",
        structure: str = "unstructured",
        allocation: str = "global",
        structure_args: dict | None = None,
        stats: dict | None = None,
        layers: Sequence[str] | None = None,
    ) -> None:
        super().__init__(layers=layers)
        if (sparsity is None) == (density is None):
            raise RecipeError("scheme Prune: give exactly one of sparsity or density")
        self.sparsity = float(sparsity if sparsity is not None else 1.0 - density)
        if not 0.0 <= self.sparsity < 1.0:
            raise RecipeError(f"scheme Prune.sparsity: {self.sparsity} is not in [0, 1)")
        self.criterion, self.structure, self.allocation = criterion, structure, allocation
        self.structure_args, self.stats = dict(structure_args or {}), stats

    def project(self, weights: Weights) -> Weights:
        from qaprune.param import get_mask
        from qaprune.prune.pruner import prune_to

        names = self._names(weights)
        root = _mask_holders({n: weights[n] for n in names})
        prune_to(
            root,
            self.sparsity,
            criterion=self.criterion,
            structure=self.structure,
            allocation=self.allocation,
            stats=self.stats,
            structure_args=self.structure_args,
        )
        holders = dict(root.named_modules())
        return {
            n: (w.detach() * get_mask(holders[n]).mask).to(w.dtype) if n in names else w for n, w in weights.items()
        }

    def __repr__(self) -> str:
        return (
            f"Prune({self.sparsity}, criterion={self.criterion!r}, structure={self.structure!r}, "
            f"allocation={self.allocation!r}{self._layers_repr()})"
        )


def _mask_holders(weights: Weights) -> nn.Module:
    """A module tree with one masked weight per name (nested so that ``named_modules`` gives
    the same names), for ``prune_to``."""
    from qaprune.param import add_mask

    root = nn.Module()
    for name, w in weights.items():
        node = root
        for part in name.split("."):
            if part not in node._modules:
                node.add_module(part, nn.Module())
            node = node._modules[part]
        node.weight = nn.Parameter(w.detach().clone(), requires_grad=False)
        add_mask(node)
    return root


class Quantize(Scheme):
    """``FakeQuant``'s rule as a projection (symmetric integer levels times a max-based scale;
    FakeQuant's own rules at the widths where it has them), per tensor or per output channel:
    at most 2^bits − 1 levels per tensor (or channel), zero kept at zero. ``bits``: any width
    FakeQuant takes; 32 (float) is a no-op.

    Example:
        >>> Quantize(3).project({"fc": torch.tensor([[0.1, -0.9, 0.5, 3.0]])})["fc"].tolist()
        [[0.0, -1.0, 0.0, 3.0]]
    """

    def __init__(self, bits: int, *, per_channel: bool = False, layers: Sequence[str] | None = None) -> None:
        from qaprune.quant.bits import FLOAT_BITS
        from qaprune.quant.fake_quant import FakeQuant

        super().__init__(layers=layers)
        self.bits, self.per_channel = bits, per_channel
        try:
            self._quant = None if bits == FLOAT_BITS else FakeQuant(bits, per_channel=per_channel)
        except RecipeError as exc:
            raise RecipeError(f"scheme Quantize.{exc}") from None

    def _project_layer(self, w: Tensor, layer: str) -> Tensor:
        if self._quant is None:
            return w.clone()
        with torch.no_grad():
            return self._quant(w)

    def __repr__(self) -> str:
        return f"Quantize({self.bits}, per_channel={self.per_channel}{self._layers_repr()})"


class Cluster(Scheme):
    """Weight sharing: each layer's weights replaced by the nearest of ``k`` centroids found by
    exact 1-D k-means (``qaprune.quant.cluster.kmeans_1d``). With ``keep_zeros`` (default) exact
    zeros stay 0 and only the others are clustered, so Cluster composes after Prune (k + 1
    values at most); otherwise everything is clustered (k values at most).

    Example:
        >>> w = torch.tensor([[0.0, 1.0, 1.1, 5.0, 5.2]])
        >>> Cluster(2).project({"fc": w})["fc"].tolist()
        [[0.0, 1.0499999523162842, 1.0499999523162842, 5.099999904632568, 5.099999904632568]]
    """

    def __init__(self, k: int, *, keep_zeros: bool = True, layers: Sequence[str] | None = None) -> None:
        super().__init__(layers=layers)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise RecipeError(f"scheme Cluster.k: {k!r} is not a positive integer")
        self.k, self.keep_zeros = k, keep_zeros

    def _project_layer(self, w: Tensor, layer: str) -> Tensor:
        from qaprune.quant.cluster import kmeans_1d

        flat = w.reshape(-1)
        live = flat != 0 if self.keep_zeros else torch.ones_like(flat, dtype=torch.bool)
        out = torch.zeros_like(flat)
        if bool(live.any()):
            centroids, assign, _ = kmeans_1d(flat[live], self.k)
            out[live] = centroids.to(flat.dtype)[assign]
        return out.view_as(w)

    def __repr__(self) -> str:
        return f"Cluster({self.k}, keep_zeros={self.keep_zeros}{self._layers_repr()})"


class Unify(Scheme):
    """Micro-structured unification (``qaprune.quant.unify.unify_project``): a ``ratio`` of the
    r×c ``block``s of each layer's (out, in) view share one magnitude, signs kept; a ``prune``
    fraction of the blocks (counted among the unified) becomes 0.

    Example:
        >>> Unify((1, 2), 0.5).project({"fc": torch.tensor([[1.0, -3.0, 2.0, 2.5]])})["fc"].tolist()
        [[1.0, -3.0, 2.25, 2.25]]
    """

    def __init__(
        self,
        block: Sequence[int] = (1, 4),
        ratio: float = 0.5,
        *,
        prune: float = 0.0,
        layers: Sequence[str] | None = None,
    ) -> None:
        super().__init__(layers=layers)
        check_options(block, ratio, prune=prune, layer="(every)")
        self.block, self.ratio, self.prune = tuple(block), ratio, prune

    def _project_layer(self, w: Tensor, layer: str) -> Tensor:
        return unify_project(w, self.block, self.ratio, prune=self.prune, layer=layer)

    def __repr__(self) -> str:
        return f"Unify({list(self.block)}, {self.ratio}, prune={self.prune}{self._layers_repr()})"


class Compose(Scheme):
    """The schemes in order: ``Compose([Prune(0.8), Quantize(4)]).project(w)`` quantizes the
    pruned weights (zeros stay 0, at most 15 levels). ``layers`` of each part apply as given.

    Example:
        >>> w = {"fc": torch.tensor([[0.1, -4.0, 0.3, 6.0]])}
        >>> Compose([Prune(0.5), Quantize(3)]).project(w)["fc"].tolist()  # levels: 2·{-3..3}
        [[0.0, -4.0, 0.0, 6.0]]
    """

    def __init__(self, schemes: Sequence[Scheme]) -> None:
        super().__init__()
        schemes = list(schemes)
        if not schemes or not all(isinstance(s, Scheme) for s in schemes):
            raise RecipeError(f"scheme Compose: need a non-empty list of schemes, got {schemes!r}")
        self.schemes = schemes

    def project(self, weights: Weights) -> Weights:
        for scheme in self.schemes:
            weights = scheme.project(weights)
        return weights

    def __repr__(self) -> str:
        return f"Compose({self.schemes!r})"
