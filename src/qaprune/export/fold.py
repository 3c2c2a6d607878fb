"""``fold_batchnorm``: fold eval-mode batch norms into the Linear/Conv layer before them.

The deployment form of a model: ONNX Runtime does this itself; for PyTorch eager it removes one
pass over every feature map. The outputs stay the same up to float rounding.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

_PAIRS = (
    (nn.Conv1d, nn.BatchNorm1d),
    (nn.Conv2d, nn.BatchNorm2d),
    (nn.Conv3d, nn.BatchNorm3d),
    (nn.Linear, nn.BatchNorm1d),
)


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of a plain (baked) ``model`` in eval mode with every batch norm that directly follows
    a Linear/Conv (and is its only reader) folded into it -> (model, folded batch-norm names).
    A model that torch.fx cannot trace comes back as an unchanged copy with an empty list.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
        >>> f, names = fold_batchnorm(m)
        >>> names, torch.allclose(f(torch.ones(1, 1, 5, 5)), m(torch.ones(1, 1, 5, 5)), atol=1e-5)
        (['1'], True)
    """
    model = copy.deepcopy(model).eval()
    try:
        graph = fx.symbolic_trace(model)
    except Exception:
        return model, []
    modules, folded = dict(graph.named_modules()), []
    for node in list(graph.graph.nodes):
        prev = node.args[0] if node.op == "call_module" and node.args else None
        if not _foldable(node, prev, modules):
            continue
        layer, bn = modules[prev.target], modules[node.target]
        fused = fuse_conv_bn_eval(layer, bn) if not isinstance(layer, nn.Linear) else fuse_linear_bn_eval(layer, bn)
        _set(graph, prev.target, fused)
        node.replace_all_uses_with(prev)
        graph.graph.erase_node(node)
        folded.append(node.target)
    graph.graph.lint()
    graph.recompile()
    graph.delete_all_unused_submodules()
    return graph, folded


def _foldable(node: fx.Node, prev, modules: dict[str, nn.Module]) -> bool:
    if not isinstance(prev, fx.Node) or prev.op != "call_module" or len(prev.users) != 1:
        return False
    bn, layer = modules.get(node.target), modules.get(prev.target)
    return any(type(layer) is a and type(bn) is b for a, b in _PAIRS) and bn.track_running_stats and _plain(layer)


def _plain(layer: nn.Module) -> bool:
    return not hasattr(layer, "parametrizations") and getattr(layer, "groups", 1) >= 1


def _set(graph: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(graph.get_submodule(parent) if parent else graph, name, module)


@torch.no_grad()
def max_fold_error(model: nn.Module, folded: nn.Module, x: torch.Tensor) -> float:
    """max |folded(x) − model(x)|, both in eval mode."""
    return float((folded.eval()(x) - model.eval()(x)).abs().max())


def for_inference(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """PyTorch's CPU deployment form of a plain model: batch norms folded, traced with TorchScript,
    frozen and passed through ``torch.jit.optimize_for_inference`` (oneDNN convolutions with fused
    ReLUs). example_input (N, ...): a batch to trace with; other batch sizes work too.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
        >>> x = torch.randn(2, 1, 6, 6)
        >>> torch.allclose(for_inference(m, x)(x), m(x), atol=1e-5)
        True
    """
    folded, _ = fold_batchnorm(model)
    with torch.no_grad():
        traced = torch.jit.trace(folded.eval(), example_input, check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
