"""Channel dependency groups: which tensors must lose the same output channels together.

One ``ChannelGroup`` is one prunable set of output channels, found by torch-pruning's
``DependencyGraph`` on the baked structure: the Linear/Conv rows (and biases) that produce it,
the batch norms that follow, residual-coupled producers, and the input columns of the layers
that consume it. ``mask_channels`` zeroes a group's removed channels *exactly* in a masked
(not yet shrunk) model, so that ``qaprune.export.shrink`` can later take them out without
changing the outputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from qaprune.param import WEIGHT_LAYERS, ChannelMask, Mask, add_mask, bake, find, get_mask, place

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class Coupled:
    """One member of a group: ``role`` "out" (its output channels ``idxs`` are the group's) or
    "in" (its input columns ``idxs`` read the group); ``root_idxs[i]`` is the group channel of
    ``idxs[i]`` (a Linear after a flatten reads one channel through several columns)."""

    name: str
    kind: str  # "linear" | "conv" | "bn" | another module class name
    role: str  # "out" | "in"
    idxs: list[int]
    root_idxs: list[int]


@dataclass
class ChannelGroup:
    """A set of ``size`` coupled output channels, named after its ``root`` layer.

    ``prunable`` is False (with a ``reason``) when the channels cannot be removed, for example
    because they are the model's outputs.
    """

    root: str
    size: int
    members: list[Coupled] = field(default_factory=list)
    prunable: bool = True
    reason: str = ""

    @property
    def producers(self) -> list[str]:
        """Linear/Conv layers whose output channels are this group's."""
        return [c.name for c in self.members if c.role == "out" and c.kind in ("linear", "conv")]

    @property
    def consumers(self) -> list[str]:
        return [c.name for c in self.members if c.role == "in"]


def channel_groups(model: nn.Module, example_input: Tensor) -> list[ChannelGroup]:
    """The channel groups of ``model`` (plain or parametrized: a baked copy is traced).
    example_input (N, ...): one batch the model accepts.

    Example:
        >>> from qaprune.models import build_model
        >>> m = build_model("mlp", input_shape=(16,), num_classes=5)
        >>> [(g.root, g.size, g.prunable) for g in channel_groups(m, torch.zeros(2, 16))][:2]
        [('fc4', 5, False), ('fc3', 32, True)]
    """

    plain = bake(copy.deepcopy(model))
    return [g for g, _ in dependency_groups(plain, example_input)[1]]


def dependency_groups(plain: nn.Module, example_input: Tensor) -> tuple[object, list[tuple]]:
    """Trace a plain (baked) model: the torch-pruning ``DependencyGraph`` and, per group,
    ``(ChannelGroup, torch-pruning group)``. Leaves ``plain`` in eval mode."""
    import torch_pruning as tp

    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(plain, example_input, verbose=False)
    names = {m: n for n, m in plain.named_modules()}
    outputs = _output_layers(graph)
    groups = []
    for tp_group in graph.get_all_groups():
        root = tp_group[0].dep.target.module
        group = ChannelGroup(root=names[root], size=len(tp_group[0].idxs))
        for item in tp_group:
            _add_member(group, item, names, graph, outputs)
        groups.append((group, tp_group))
    return graph, groups


def _add_member(group: ChannelGroup, item, names: dict, graph, outputs: set) -> None:
    mod = item.dep.target.module
    out = graph.is_out_channel_pruning_fn(item.dep.handler)
    if isinstance(mod, nn.Parameter):
        return _refuse(group, "depends on a free parameter that shrink cannot prune safely")
    if mod not in names:
        return  # an operation (ReLU, add, flatten…): no tensor of its own
    kind = _kind(mod)
    group.members.append(
        Coupled(names[mod], kind, "out" if out else "in", [int(i) for i in item.idxs], [int(i) for i in item.root_idxs])
    )
    if out and mod in outputs:
        what = "model output" if names[mod] == group.root else f"depends on {names[mod]}, the model output"
        _refuse(group, f"{what}: its channels are the model's outputs")
    elif out and kind not in ("linear", "conv", "bn") and any(True for _ in mod.parameters()):
        _refuse(group, f"depends on {names[mod]} ({type(mod).__name__}), which cannot be pruned exactly")


def _refuse(group: ChannelGroup, reason: str) -> None:
    if group.prunable:
        group.prunable, group.reason = False, reason


def _kind(mod: nn.Module) -> str:
    if isinstance(mod, nn.Linear):
        return "linear"
    if isinstance(mod, WEIGHT_LAYERS[1:]):
        return "conv"
    return "bn" if isinstance(mod, NORMS) else type(mod).__name__


def _output_layers(graph) -> set:
    """Linear/Conv modules whose output reaches the model output without another such layer."""
    stack = [n for n in graph.module2node.values() if not n.outputs]
    seen, found = set(), set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, WEIGHT_LAYERS):
            found.add(node.module)
        else:
            stack.extend(node.inputs)
    return found


@torch.no_grad()
def zero_channels(model: nn.Module, group: ChannelGroup) -> Tensor:
    """Group channels that every producer outputs as exactly zero (weights, bias, batch norm).
    -> bool (group.size,). Works on plain and parametrized models."""
    zero = torch.ones(group.size, dtype=torch.bool)
    for c in (c for c in group.members if c.role == "out"):
        zero &= to_group(c, member_zero(model.get_submodule(c.name), c), group.size)
    return zero


def to_group(c: Coupled, flags: Tensor, size: int) -> Tensor:
    """Per-index flags of a member (bool, indexed by ``c.idxs``) -> bool (size,): a group
    channel is True when all of its indices are."""
    out = torch.ones(size, dtype=torch.bool)
    idxs, roots = torch.tensor(c.idxs, dtype=torch.long), torch.tensor(c.root_idxs, dtype=torch.long)
    out[roots[~flags.cpu()[idxs]]] = False
    return out


def member_zero(mod: nn.Module, c: Coupled) -> Tensor:
    """bool (channels,): the member's output channel is exactly zero when its input is."""
    if c.kind in ("linear", "conv"):
        z = (mod.weight.flatten(1) == 0).all(1)
        return z & (mod.bias == 0) if mod.bias is not None else z
    if c.kind == "bn":
        mean = mod.running_mean if mod.running_mean is not None else torch.zeros(mod.num_features)
        if not mod.affine:
            return mean == 0
        return (mod.bias == 0) & ((mod.weight == 0) | (mean == 0))
    return torch.full((max(c.idxs) + 1,), not any(True for _ in mod.parameters()))


@torch.no_grad()
def mask_channels(model: nn.Module, group: ChannelGroup, keep: Tensor) -> None:
    """Zero the channels of ``group`` where ``keep`` (bool, (group.size,)) is False, in place:
    weight rows through the layer's ``Mask``, biases and batch-norm affine parameters through
    ``ChannelMask``, the running mean of batch norms without affine parameters. The removed
    channels then contribute exactly nothing, also after fake quantization and training.

    Example:
        >>> from qaprune.models import build_model
        >>> m = build_model("mlp", input_shape=(16,), num_classes=5).eval()
        >>> g = [g for g in channel_groups(m, torch.zeros(2, 16)) if g.root == "fc1"][0]
        >>> keep = torch.arange(64) % 2 == 0
        >>> mask_channels(m, g, keep)
        >>> bool((m.act1(m.bn1(m.fc1(torch.randn(4, 16))))[:, ~keep] == 0).all())
        True
    """
    if not group.prunable:
        raise ValueError(f"mask_channels: group {group.root!r} cannot be pruned ({group.reason})")
    if keep.shape != (group.size,):
        raise ValueError(f"mask_channels: keep has shape {tuple(keep.shape)}, expected ({group.size},)")
    drop = ~keep.bool().cpu()
    for c in (c for c in group.members if c.role == "out"):
        rows = [i for i, r in zip(c.idxs, c.root_idxs) if drop[r]]
        if rows:
            _zero_member(model.get_submodule(c.name), c.kind, torch.tensor(rows))


def _zero_member(mod: nn.Module, kind: str, rows: Tensor) -> None:
    if kind in ("linear", "conv"):
        _weight_mask(mod).mask[rows] = 0
        if mod.bias is not None:
            _channel_mask(mod, "bias").keep[rows] = 0
    elif kind == "bn" and mod.affine:
        _channel_mask(mod, "weight").keep[rows] = 0
        _channel_mask(mod, "bias").keep[rows] = 0
    elif kind == "bn" and mod.running_mean is not None:
        mod.running_mean[rows] = 0


def _weight_mask(mod: nn.Module) -> Mask:
    """The layer's ``Mask``; one is placed first in line when there is none."""
    mask = get_mask(mod)
    return mask if mask is not None else add_mask(mod)


def _channel_mask(mod: nn.Module, name: str) -> ChannelMask:
    existing = find(mod, name, ChannelMask)
    if isinstance(existing, ChannelMask):
        return existing
    cm = place(mod, name, ChannelMask(getattr(mod, name).shape[0]))
    assert isinstance(cm, ChannelMask)
    return cm


def restore_channel_masks(model: nn.Module, keys) -> None:
    """Re-create the ``ChannelMask`` parametrizations a saved state dict holds (keys ending in
    ``.parametrizations.<tensor>.0.keep``), so that it loads into a freshly built model."""
    for key in keys:
        parts = key.split(".")
        if len(parts) < 4 or parts[-1] != "keep" or parts[-2] != "0" or parts[-4] != "parametrizations":
            continue
        mod = model.get_submodule(".".join(parts[:-4]))
        _channel_mask(mod, parts[-3])
