"""Sparse optimizers that put exact zeros into weights while training, and ``groups_to_masks``
that freezes those zeros as ``Mask``s for the QAP training that follows.

- ``HSPG`` (Chen et al., "Half-Space Proximal Stochastic Gradient Method for Group-Sparsity
  Regularized Problem"): min f(x) + λ·Σ_g ‖x_g‖₂, whole groups (rows, columns, tensor) go to 0.
- ``OBProxSG`` (Chen et al., "Orthant Based Proximal Stochastic Gradient Method for
  ℓ1-Regularized Optimization"): min f(x) + λ·‖x‖₁, single entries go to 0.

A param group's ``groups`` says how its tensor splits: "rows" (x[i, ...], one per output
channel), "columns" (x[:, j, ...], one per input channel) or "all" (one group); OBProx-SG uses
"elements". A group with ``lam == 0`` is plain SGD (with momentum): no prox, no projection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from qaprune.errors import RecipeError
from qaprune.param import add_mask, get_mask

GROUPINGS = ("rows", "columns", "all")


def _group_dims(x: Tensor, groups: str) -> tuple[int, ...]:
    """The dims a group spans: summing over them leaves one value per group."""
    if groups == "columns" and x.ndim < 2:
        raise RecipeError(f"groups: 'columns' needs a tensor of 2+ dims, got shape {tuple(x.shape)}")
    keep = {"rows": (0,), "columns": (1,), "all": (), "elements": tuple(range(x.ndim))}[groups]
    return tuple(d for d in range(x.ndim) if d not in keep)


def _group_sum(x: Tensor, groups: str) -> Tensor:
    dims = _group_dims(x, groups)
    return x.sum(dim=dims, keepdim=True) if dims else x


def group_norms(x: Tensor, groups: str) -> Tensor:
    """‖x_g‖₂ of every group, broadcastable against x.
    x (out, in, ...) -> (out, 1, ...) for "rows", (1, in, 1, ...) for "columns", (1, ...) for
    "all", |x| for "elements".

    Example:
        >>> group_norms(torch.tensor([[3.0, 4.0], [0.0, 1.0]]), "rows").flatten().tolist()
        [5.0, 1.0]
    """
    return _group_sum(x * x, groups).sqrt()


def group_soft_threshold(x: Tensor, tau: float, groups: str) -> Tensor:
    """prox of τ·Σ_g ‖x_g‖₂: x_g · max(0, 1 − τ/‖x_g‖). x (out, ...) -> same shape.

    Example:
        >>> group_soft_threshold(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), 1.0, "rows").tolist()
        [[2.4000000953674316, 3.200000047683716], [0.0, 0.0]]
    """
    norms = group_norms(x, groups)
    return x * (1 - tau / _nonzero(norms)).clamp_min(0)


def _nonzero(norms: Tensor) -> Tensor:
    return norms.clamp_min(torch.finfo(norms.dtype).tiny)


def _half_space(x: Tensor, d: Tensor, lr: float, lam: float, eps: float, groups: str) -> Tensor:
    """HSPG's half-space step: a gradient step on the non-zero groups, then every group that
    left the half-space {y: yᵀx_g ≥ ε‖x_g‖²} is projected to zero; zero groups stay zero."""
    norms = group_norms(x, groups)
    x_hat = x - lr * (d + lam * x / _nonzero(norms))
    drop = (_group_sum(x_hat * x, groups) < eps * norms * norms) | (norms == 0)
    return x_hat.masked_fill(drop, 0.0)


def _orthant(x: Tensor, d: Tensor, lr: float, lam: float) -> Tensor:
    """OBProx-SG's orthant step: step with ∇f + λ·sign(x), project onto the orthant face of
    sign(x): entries that changed sign become 0, zeros stay 0."""
    sign = x.sign()
    x_hat = x - lr * (d + lam * sign)
    return x_hat.masked_fill(x_hat.sign() != sign, 0.0)


class _SparseOptimizer(Optimizer):
    """What HSPG and OBProx-SG share: option checks, momentum, the step loop, zero groups."""

    _groupings: tuple[str, ...] = GROUPINGS

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group, name = self.param_groups[-1], type(self).__name__
        if group["groups"] not in self._groupings:
            raise RecipeError(f"{name} groups: {group['groups']!r}; allowed: {', '.join(self._groupings)}")
        for key in ("lr", "lam", "n_p"):
            if group[key] < 0:
                raise RecipeError(f"{name} {key}: {group[key]} is not >= 0")
        for key in ("momentum", "epsilon"):
            if not 0 <= group.get(key, 0.0) < 1:
                raise RecipeError(f"{name} {key}: {group[key]} is not in [0, 1)")
        n_o = group.get("n_o")
        if n_o is not None and (n_o < 0 or n_o + group["n_p"] == 0):
            raise RecipeError(f"{name} n_o: {n_o}; needs n_o >= 0 and n_p + n_o > 0, or None")
        for p in group["params"]:
            _group_dims(p, group["groups"])

    def _direction(self, p: Tensor, momentum: float) -> Tensor:
        """∇f, or SGD's momentum buffer (torch.optim.SGD's update, dampening 0)."""
        if momentum == 0:
            return p.grad
        buf = self.state[p].get("momentum_buffer")
        if buf is None:
            buf = self.state[p]["momentum_buffer"] = p.grad.detach().clone()
        else:
            buf.mul_(momentum).add_(p.grad)
        return buf

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every parameter that has a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    d = self._direction(p, group.get("momentum", 0.0))
                    if group["lam"] == 0:
                        p.add_(d, alpha=-group["lr"])
                    else:
                        p.copy_(self._update(p, d, group))
            group["step"] += 1
        return loss

    def _update(self, p: Tensor, d: Tensor, group: dict[str, Any]) -> Tensor:
        raise NotImplementedError

    def _named(self) -> Iterator[tuple[str | int, Tensor, dict[str, Any]]]:
        """(name or global index, param, group) of every regularized (lam > 0) parameter."""
        index = 0
        for group in self.param_groups:
            names = group.get("param_names") or [None] * len(group["params"])
            for name, p in zip(names, group["params"]):
                if group["lam"] > 0:
                    yield (index if name is None else name), p, group
                index += 1

    @torch.no_grad()
    def zero_groups(self) -> dict[str | int, Tensor]:
        """Which groups are exactly zero, per regularized parameter (by name when the optimizer
        was given ``named_parameters()``, else by index): a BoolTensor (n_groups,) for "rows" /
        "columns" / "all", of the parameter's shape for "elements"."""
        out: dict[str | int, Tensor] = {}
        for key, p, group in self._named():
            zero = group_norms(p, group["groups"]) == 0
            out[key] = zero if group["groups"] == "elements" else zero.flatten()
        return out


class HSPG(_SparseOptimizer):
    """Half-Space Proximal SG for min f(x) + λ·Σ_g ‖x_g‖₂ (group lasso on rows/columns/all).

    Steps 0 … n_p−1 (per param group) are Prox-SG: x ← prox_{lr·λ‖·‖₂}(x − lr·d) group-wise;
    later steps are half-space steps (``_half_space``): x̂ = x − lr·(d + λ·x_g/‖x_g‖) on
    non-zero groups, a group with x̂_gᵀx_g < ε‖x_g‖² goes to 0, zero groups stay 0. d is ∇f or
    its momentum buffer. A param group may override lr, lam, epsilon, n_p, momentum, groups.

    Example:
        >>> lin = nn.Linear(3, 4, bias=False)
        >>> opt = HSPG([{"params": [lin.weight], "groups": "rows"}], lr=0.1, lam=100.0, n_p=1)
        >>> lin(torch.randn(8, 3)).square().mean().backward(); _ = opt.step()
        >>> opt.zero_groups()[0].tolist()
        [True, True, True, True]
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        lam: float,
        *,
        epsilon: float = 0.0,
        n_p: int = 100,
        momentum: float = 0.0,
        groups: str = "rows",
    ) -> None:
        defaults = dict(lr=lr, lam=lam, epsilon=epsilon, n_p=n_p, momentum=momentum, groups=groups, step=0)
        super().__init__(params, defaults)

    def _update(self, p: Tensor, d: Tensor, group: dict[str, Any]) -> Tensor:
        lr, lam, how = group["lr"], group["lam"], group["groups"]
        if group["step"] < group["n_p"]:
            return group_soft_threshold(p - lr * d, lr * lam, how)
        return _half_space(p, d, lr, lam, group["epsilon"], how)


class OBProxSG(_SparseOptimizer):
    """Orthant-Based Proximal SG for min f(x) + λ·‖x‖₁ (zeros are exact).

    Step k is a Prox-SG step (soft-thresholding) when k mod (n_p + n_o) < n_p, else an orthant
    step (``_orthant``). ``n_o=None``: n_p Prox-SG steps, then orthant steps for good
    (the paper's OBProx-SG+).

    Example:
        >>> w = nn.Parameter(torch.tensor([0.05, -2.0]))
        >>> opt = OBProxSG([w], lr=1.0, lam=0.1, n_p=1, n_o=1)
        >>> w.grad = torch.zeros(2); _ = opt.step(); w.tolist()
        [0.0, -1.899999976158142]
    """

    _groupings = ("elements",)

    def __init__(self, params: Iterable[Any], lr: float, lam: float, *, n_p: int = 100, n_o: int | None = 100) -> None:
        defaults = dict(lr=lr, lam=lam, n_p=n_p, n_o=n_o, groups="elements", step=0)
        super().__init__(params, defaults)

    def _update(self, p: Tensor, d: Tensor, group: dict[str, Any]) -> Tensor:
        k, n_p, n_o = group["step"], group["n_p"], group["n_o"]
        if (k < n_p) if n_o is None else (k % (n_p + n_o) < n_p):
            return group_soft_threshold(p - group["lr"] * d, group["lr"] * group["lam"], "elements")
        return _orthant(p, d, group["lr"], group["lam"])


def _weight_owner(param_name: str) -> str | None:
    """ "fc.weight" or "fc.parametrizations.weight.original" -> "fc"; None for other tensors."""
    full = "." + param_name
    for suffix in (".parametrizations.weight.original", ".weight"):
        if full.endswith(suffix):
            return full[: -len(suffix)][1:]
    return None


@torch.no_grad()
def groups_to_masks(model: nn.Module, optimizer: Optimizer) -> dict[str, Tensor]:
    """Freeze the optimizer's zero groups as ``Mask``s: for every weight it regularizes
    (lam > 0), a 0/1 mask of the weight's shape (0 on exactly-zero groups) is added with
    ``add_mask``, or multiplied into the layer's mask when it has one. Biases are skipped.
    Returns the masks built, by module name.

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> with torch.no_grad(): lin.weight[1] = 0
        >>> masks = groups_to_masks(lin, HSPG([lin.weight], lr=0.1, lam=0.1))
        >>> masks[""].tolist(), lin.parametrizations.weight[0].mask.tolist()
        ([[1.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]])
    """
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, Tensor] = {}
    for group in optimizer.param_groups:
        if "groups" not in group or "lam" not in group:
            raise RecipeError(f"groups_to_masks: {type(optimizer).__name__} is not HSPG/OBProxSG")
        for p in group["params"] if group["lam"] > 0 else []:
            if id(p) not in names:
                raise RecipeError(f"groups_to_masks: an optimizer tensor {tuple(p.shape)} is not in the model")
            owner = _weight_owner(names[id(p)])
            if owner is None:
                continue
            module = model.get_submodule(owner)
            keep = (group_norms(p, group["groups"]) != 0).expand(p.shape).to(p.dtype)
            mask = get_mask(module)
            mask = add_mask(module) if mask is None else mask
            mask.mask.mul_(keep.to(mask.mask))
            out[owner] = keep
    return out
