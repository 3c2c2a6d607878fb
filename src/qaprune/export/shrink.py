"""``shrink``: a model that really is smaller and faster, with the same outputs.

Pruned output channels that are exactly zero (weights, bias, batch norm; in every
residual-coupled layer; and at the next layers' inputs on the example) are removed with
torch-pruning's dependency graph. Then Linear layers whose zero pattern is a permuted block
diagonal (MPD) become ``BlockDiagonalLinear``; highly sparse ones become ``SparseLinear`` where
a quick measurement says the CSR kernel is faster. Every Linear/Conv layer ends up in
``removed``, ``converted`` or ``not_shrunk`` (with the reason).
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qaprune.param import WEIGHT_LAYERS
from qaprune.prune.groups import ChannelGroup, dependency_groups, member_zero, to_group, zero_channels

SPARSE_MODES = ("auto", "always", "never")


@dataclass
class ShrinkResult:
    """``model``: a new plain module (eval mode). ``removed``: output channels taken out per
    layer. ``not_shrunk``: layer → why nothing was taken out. ``converted``: layer → its new
    module. ``sparse_timings``: layer → ``{"dense_ms", "sparse_ms", "sparse"}`` (the decision)."""

    model: nn.Module
    removed: dict[str, int] = field(default_factory=dict)
    not_shrunk: dict[str, str] = field(default_factory=dict)
    converted: dict[str, str] = field(default_factory=dict)
    sparse_timings: dict[str, dict] = field(default_factory=dict)
    max_abs_diff: float = 0.0


def shrink(
    model: nn.Module,
    example_input: Tensor,
    *,
    sparse: str = "auto",
    sparse_min: float = 0.8,
    block_diagonal: bool = True,
    atol: float = 1e-5,
) -> ShrinkResult:
    """Bake a copy of ``model`` and physically remove its all-zero channels; ``model`` is kept.
    example_input (N, ...): a batch the model accepts (traced, checked, timed on).
    ``sparse``: "auto" (CSR where measured faster), "always" or "never", for Linear layers with
    at least ``sparse_min`` zero weights. Outputs of the result match the baked model within ``atol``
    with activation rounding off (``unrounded``: with it, float ties may round one step apart).

    Example:
        >>> from qaprune.models import build_model
        >>> from qaprune.prune.groups import channel_groups, mask_channels
        >>> m, x = build_model("mlp", input_shape=(16,), num_classes=5).eval(), torch.randn(4, 16)
        >>> g = [g for g in channel_groups(m, x) if g.root == "fc1"][0]
        >>> mask_channels(m, g, torch.arange(64) < 16)
        >>> r = shrink(m, x, sparse="never")
        >>> r.removed, r.model.fc1.out_features, torch.allclose(r.model(x), m(x), atol=1e-5)
        ({'fc1': 48}, 16, True)
    """
    if sparse not in SPARSE_MODES:
        raise ValueError(f"shrink: sparse={sparse!r}; allowed: {', '.join(SPARSE_MODES)}")
    from qaprune.param import bake

    net = bake(copy.deepcopy(model)).eval()
    with torch.no_grad(), unrounded(net):
        ref = net(example_input)
    plan, not_shrunk = _plan(net, example_input)
    out, removed = _remove_channels(net, example_input, [idxs for _, idxs in plan])
    if _max_diff(out, example_input, ref) > atol:  # an operation the plan does not model
        out, removed = _remove_safely(net, example_input, plan, ref, atol, not_shrunk)
    result = ShrinkResult(out, removed, not_shrunk)
    _convert_linears(result, example_input, sparse=sparse, sparse_min=sparse_min, block_diagonal=block_diagonal)
    result.max_abs_diff = _max_diff(out, example_input, ref)
    return result


def _plan(net: nn.Module, x: Tensor) -> tuple[list[tuple[ChannelGroup, tuple]], dict[str, str]]:
    """(group, (root name, channel indices to remove)) for each shrinkable group, and why the
    other layers are not shrunk."""
    _, groups = dependency_groups(net, x)
    seen = _observed_zero(net, x, [g for g, _ in groups])
    plan, reasons, covered = [], {}, set()
    for (g, _), obs in zip(groups, seen):
        covered.update(g.producers)
        if not g.prunable:
            reasons.update({p: g.reason for p in g.producers})
            continue
        drop = zero_channels(net, g) & obs
        if drop.all():  # keep one channel: a layer needs at least one output
            drop[0] = False
        if drop.any():
            plan.append((g, (g.root, drop.nonzero().flatten().tolist())))
        else:
            reasons.update({p: _why(net, g, p, obs) for p in g.producers})
    for name, mod in net.named_modules():
        if isinstance(mod, WEIGHT_LAYERS) and name not in covered:
            reasons[name] = "not in the dependency graph (not reached by the example input)"
    return plan, reasons


@torch.no_grad()
def _observed_zero(net: nn.Module, x: Tensor, groups: list[ChannelGroup]) -> list[Tensor]:
    """Per group, bool (size,): the channel is exactly zero at every consumer's input on ``x``."""
    zero: dict[str, Tensor] = {}

    def record(name: str, channel_dim: int):
        def hook(_mod, args):
            a = args[0].movedim(channel_dim, 0)
            z = (a.reshape(a.shape[0], -1) == 0).all(1)
            zero[name] = zero[name] & z if name in zero else z

        return hook

    names = {c.name for g in groups for c in g.members if c.role == "in"}
    hooks = [
        net.get_submodule(n).register_forward_pre_hook(
            record(n, -1 if isinstance(net.get_submodule(n), nn.Linear) else 1)
        )
        for n in names
    ]
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
    flags = []
    for g in groups:
        ok = torch.ones(g.size, dtype=torch.bool)
        for c in (c for c in g.members if c.role == "in"):
            ok &= to_group(c, zero[c.name], g.size) if c.name in zero else False
        flags.append(ok)
    return flags


def _why(net: nn.Module, g: ChannelGroup, name: str, observed: Tensor) -> str:
    w = net.get_submodule(name).weight
    if not (w == 0).any():
        return "dense: no zero weights"
    me = next(c for c in g.members if c.name == name and c.role == "out")
    rows = to_group(me, (w.flatten(1) == 0).all(1), g.size)
    if not rows.any():
        return f"unstructured sparsity: no whole channel is zero ({float((w == 0).float().mean()):.0%} zeros)"
    blockers = sorted(
        {
            c.name
            for c in g.members
            if c.role == "out" and not (to_group(c, member_zero(net.get_submodule(c.name), c), g.size)[rows]).any()
        }
    )
    if blockers:
        return (
            f"{int(rows.sum())} zero weight channels, but not zero in the coupled "
            f"{', '.join(blockers)} (bias, batch-norm shift or residual add)"
        )
    return (
        f"{int(rows.sum())} zero weight channels, but non-zero at the input of "
        f"{', '.join(g.consumers)} (an operation with f(0) != 0?)"
    )


def _remove_channels(net: nn.Module, x: Tensor, plan: list[tuple[str, list[int]]]) -> tuple[nn.Module, dict[str, int]]:
    """A deep copy of ``net`` with the planned output channels removed, and the count per layer."""
    import torch_pruning as tp

    out = copy.deepcopy(net)
    before = _widths(out)
    if plan:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(out, x, verbose=False)
        for root, idxs in plan:
            mod = out.get_submodule(root)
            fn = graph.get_pruner_of_module(mod).prune_out_channels
            graph.get_pruning_group(mod, fn, idxs).prune(record_history=False)
    after = _widths(out)
    return out.eval(), {n: before[n] - after[n] for n in before if after[n] < before[n]}


def _remove_safely(
    net: nn.Module, x: Tensor, plan: list, ref, atol: float, reasons: dict[str, str]
) -> tuple[nn.Module, dict[str, int]]:
    """Add the planned groups one at a time, keeping those that leave the outputs unchanged."""
    kept: list[tuple[str, list[int]]] = []
    for group, step in plan:
        trial, _ = _remove_channels(net, x, [*kept, step])
        if _max_diff(trial, x, ref) <= atol:
            kept.append(step)
        else:
            reasons.update(
                {
                    p: "removing its zero channels changed the outputs (an operation shrink does not model)"
                    for p in group.producers
                }
            )
    return _remove_channels(net, x, kept)


def _widths(model: nn.Module) -> dict[str, int]:
    return {n: m.weight.shape[0] for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}


@contextmanager
def unrounded(*models: nn.Module) -> Iterator[None]:
    """Within the block, the activation quantizers (``QuantReLU``) of ``models`` clip to their
    range without rounding. Removing channels changes the order of float summations, so a
    pre-activation within ~1e-7 of a rounding tie may round the other way, one step off, and that
    moves the outputs far beyond any float tolerance; without rounding, the shrunk model must
    equal the masked one to float precision exactly when the removal is right. Inputs are
    rounded as usual (the same operation on the same values in both models).

    Example:
        >>> from qaprune.quant.activations import QuantReLU
        >>> q = QuantReLU(bits=2, max_value=3.0)
        >>> with unrounded(q):
        ...     q(torch.tensor([-1.0, 0.4, 9.0])).tolist()
        [0.0, 0.4000000059604645, 3.0]
    """
    from qaprune.quant.activations import QuantReLU

    mods = [m for model in models for m in model.modules() if isinstance(m, QuantReLU)]
    for m in mods:
        m.forward = lambda x, top=m.max_value: x.clamp(0.0, top)
    try:
        yield
    finally:
        for m in mods:
            m.__dict__.pop("forward", None)


@torch.no_grad()
def _max_diff(model: nn.Module, x: Tensor, ref) -> float:
    with unrounded(model):
        out = model(x)
    outs, refs = (out, ref) if isinstance(out, (tuple, list)) else ((out,), (ref,))
    return max(float((o - r).abs().max()) if o.numel() else 0.0 for o, r in zip(outs, refs))


class BlockDiagonalLinear(nn.Module):
    """A Linear whose weight is block diagonal after permuting its rows and columns (MPD):
    k dense (block_out × block_in) products in one ``bmm``; blocks of unequal size are padded
    with zeros. x (..., in) -> (..., out); about 1/k of the weights and MACs.

    Example:
        >>> lin = nn.Linear(4, 4)
        >>> _ = lin.weight.data.mul_(torch.block_diag(torch.ones(2, 2), torch.ones(2, 2)))
        >>> blocks = [torch.tensor([0, 1]), torch.tensor([2, 3])]
        >>> bd = BlockDiagonalLinear.from_linear(lin, blocks, blocks)
        >>> x = torch.randn(3, 4); bool(torch.allclose(bd(x), lin(x), atol=1e-6)), bd.weight.shape
        (True, torch.Size([2, 2, 2]))
    """

    def __init__(
        self, in_features: int, out_features: int, *, k: int, block_out: int, block_in: int, bias: bool = True
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.k = in_features, out_features, k
        self.weight = nn.Parameter(torch.zeros(k, block_out, block_in))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        # input feature of each block slot (in_features: a zero row), and the slot of each output
        self.register_buffer("in_index", torch.full((k * block_in,), in_features))
        self.register_buffer("out_index", torch.zeros(out_features, dtype=torch.long))

    @classmethod
    @torch.no_grad()
    def from_linear(cls, lin: nn.Linear, row_blocks: list[Tensor], col_blocks: list[Tensor]) -> BlockDiagonalLinear:
        """``row_blocks[b]``/``col_blocks[b]``: the rows/columns of block b (see ``block_pattern``)."""
        k, bo, bi = len(row_blocks), max(map(len, row_blocks)), max(map(len, col_blocks))
        new = cls(lin.in_features, lin.out_features, k=k, block_out=bo, block_in=bi, bias=lin.bias is not None).to(
            lin.weight.device
        )
        for b, (r, c) in enumerate(zip(row_blocks, col_blocks)):
            new.weight[b, : len(r), : len(c)] = lin.weight[r][:, c]
            new.in_index[b * bi : b * bi + len(c)] = c
            new.out_index[r] = b * bo + torch.arange(len(r))
        if lin.bias is not None:
            new.bias.copy_(lin.bias)
        return new

    def forward(self, x: Tensor) -> Tensor:
        # Feature-major: gathers pick whole rows (fast in PyTorch and ONNX Runtime alike; a
        # gather along dim 1 is ~4x slower in ORT), and the bmm operands are contiguous.
        k, bo, bi = self.weight.shape
        xt = x.reshape(-1, self.in_features).T  # (in, N)
        if k * bi > self.in_features:  # some block slots read the zero row
            xt = F.pad(xt, (0, 0, 0, 1))
        xb = xt.index_select(0, self.in_index).reshape(k, bi, -1)  # (k, block_in, N)
        y = torch.bmm(self.weight, xb).reshape(k * bo, -1)  # (k·block_out, N)
        y = y.index_select(0, self.out_index).T  # (N, out)
        y = y + self.bias if self.bias is not None else y
        return y.reshape(*x.shape[:-1], self.out_features)


class SparseLinear(nn.Module):
    """A Linear with a CSR weight, sparse on the left: ``y = (W_csr @ xᵀ)ᵀ + b``, the fast
    sparse path on CPU. The CSR parts are plain buffers (deep-copyable, state_dict-friendly).
    x (..., in) -> (..., out).

    Example:
        >>> lin = nn.Linear(8, 4); _ = lin.weight.data[:, 2:].zero_()
        >>> x = torch.randn(3, 8); bool(torch.allclose(SparseLinear.from_linear(lin)(x), lin(x), atol=1e-6))
        True
    """

    def __init__(
        self, in_features: int, out_features: int, crow: Tensor, col: Tensor, values: Tensor, bias: Tensor | None
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("crow_indices", crow)
        self.register_buffer("col_indices", col)
        self.values = nn.Parameter(values)
        self.bias = nn.Parameter(bias) if bias is not None else None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, lin: nn.Linear) -> SparseLinear:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            csr = lin.weight.detach().to_sparse_csr()
        bias = lin.bias.detach().clone() if lin.bias is not None else None
        return cls(lin.in_features, lin.out_features, csr.crow_indices(), csr.col_indices(), csr.values().clone(), bias)

    def forward(self, x: Tensor) -> Tensor:
        w = torch.sparse_csr_tensor(
            self.crow_indices,
            self.col_indices,
            self.values,
            (self.out_features, self.in_features),
            check_invariants=False,
        )
        y = torch.sparse.mm(w, x.reshape(-1, self.in_features).T).T
        y = y + self.bias if self.bias is not None else y
        return y.reshape(*x.shape[:-1], self.out_features)


def block_pattern(weight: Tensor, *, max_fraction: float = 0.75) -> tuple[list[Tensor], list[Tensor]] | None:
    """Detect a permuted block-diagonal zero pattern (MPD) in ``weight`` (out, in) alone:
    -> (rows of each block, columns of each block), k ≥ 2 blocks, or None. Blocks are the
    connected components of rows and columns joined by non-zero weights; all-zero rows and
    columns fill the smallest blocks. None also when the padded blocks would hold more than
    ``max_fraction`` of the dense weight count."""
    nz = (weight != 0).cpu()
    n_out, n_in = nz.shape
    big = n_out + n_in
    r_lab = torch.arange(n_out)
    while True:  # label propagation: each row and column ends up with its component's min row
        c_lab = torch.where(nz, r_lab[:, None], big).amin(0)
        new = torch.minimum(r_lab, torch.where(nz, c_lab[None, :], big).amin(1))
        if torch.equal(new, r_lab):
            break
        r_lab = new
    used = nz.any(1)
    labels = torch.unique(r_lab[used]).tolist()
    if len(labels) < 2:
        return None
    rows = _spread([torch.nonzero((r_lab == lab) & used).flatten() for lab in labels], ~used)
    cols = _spread([torch.nonzero(c_lab == lab).flatten() for lab in labels], ~nz.any(0))
    padded = len(labels) * max(map(len, rows)) * max(map(len, cols))
    return (rows, cols) if padded <= max_fraction * n_out * n_in else None


def _spread(blocks: list[Tensor], free: Tensor) -> list[Tensor]:
    """Give each free (all-zero) index to the block that is currently the smallest."""
    out = [b.tolist() for b in blocks]
    for i in torch.nonzero(free).flatten().tolist():
        min(out, key=len).append(i)
    return [torch.tensor(sorted(b), dtype=torch.long) for b in out]


def _convert_linears(result: ShrinkResult, x: Tensor, *, sparse: str, sparse_min: float, block_diagonal: bool) -> None:
    model, inputs = result.model, _linear_inputs(result.model, x)
    for name, inp in inputs.items():
        lin = model.get_submodule(name)
        pattern = block_pattern(lin.weight) if block_diagonal else None
        new: nn.Module | None = None
        if pattern is not None:
            new = BlockDiagonalLinear.from_linear(lin, *pattern)
            result.converted[name] = f"BlockDiagonalLinear(k={len(pattern[0])})"
        elif sparse != "never" and float((lin.weight == 0).float().mean()) >= sparse_min:
            new = _sparse_choice(result, name, lin, inp, sparse)
        if new is not None:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, new)
            result.not_shrunk.pop(name, None)


def _sparse_choice(result: ShrinkResult, name: str, lin: nn.Linear, inp: Tensor, sparse: str) -> nn.Module | None:
    new = SparseLinear.from_linear(lin)
    if sparse == "auto":
        dense_ms, sparse_ms = _time_ms(lin, inp), _time_ms(new, inp)
        faster = sparse_ms < dense_ms
        result.sparse_timings[name] = {"dense_ms": dense_ms, "sparse_ms": sparse_ms, "sparse": faster}
        if not faster:
            if name in result.not_shrunk:
                result.not_shrunk[name] += (
                    f"; CSR kernel not faster on the example ({sparse_ms:.3f} ms vs dense {dense_ms:.3f} ms)"
                )
            return None
    result.converted[name] = f"SparseLinear({float((lin.weight == 0).float().mean()):.0%} zeros)"
    return new


@torch.no_grad()
def _linear_inputs(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """The input of every plain ``nn.Linear`` on ``x`` (first call), by name."""
    seen: dict[str, Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda _m, a, n=n: seen.setdefault(n, a[0]))
        for n, m in model.named_modules()
        if type(m) is nn.Linear
    ]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _time_ms(mod: nn.Module, x: Tensor, *, warmup: int = 3, repeats: int = 15) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            mod(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            mod(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3
