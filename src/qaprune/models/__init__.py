"""Model builders: a registry of plain factories, plus any user ``module.path:factory``."""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from qaprune.errors import RecipeError
from qaprune.registry import Registry

MODELS: Registry = Registry("model")

BATCHNORM_MODES = ("affine", "no_affine", "none")


FROM_DATA = ("input_shape", "in_features", "n_features", "in_channels", "num_classes", "n_classes")
"""Factory parameters qaprune fills from the data when the factory declares them."""


def build_model(
    name: str, *, input_shape: Sequence[int], num_classes: int, search_path: Sequence[str | Path] = (), **args
) -> nn.Module:
    """Build a registered model or a user's ``module:factory`` (a function or a class).

    A user factory gets the arguments it declares among ``input_shape`` (per sample, e.g.
    ``(16,)`` or ``(1, 28, 28)``), ``in_features`` / ``n_features`` (values per sample),
    ``in_channels`` (the first dimension of a multi-dimensional sample, 1 for a flat vector),
    ``num_classes`` / ``n_classes``, plus the recipe's ``model.args`` (which win). Its module is
    imported from the folders of ``search_path`` first (the recipe's folder, the working
    directory), then from the installed packages. Registered models take ``input_shape``,
    ``num_classes`` and ``model.args``.

    Example:
        >>> m = build_model("mlp", input_shape=(16,), num_classes=5)
        >>> [l.out_features for l in m.modules() if isinstance(l, nn.Linear)]
        [64, 32, 32, 5]
    """
    if ":" in name:
        factory = user_factory(name, search_path)
        kwargs = _declared(factory, name, _from_data(input_shape, num_classes), args)
    else:
        factory = MODELS.get(name)
        kwargs = {"input_shape": tuple(input_shape), "num_classes": num_classes, **args}
        try:
            inspect.signature(factory).bind(**kwargs)
        except TypeError as exc:
            raise RecipeError(f"model.args: {exc} (model {name!r})") from None
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise RecipeError(f"model.name: {name!r} returned {type(model).__name__}, not an nn.Module")
    return model


def _from_data(input_shape: Sequence[int], num_classes: int) -> dict[str, Any]:
    shape = tuple(int(d) for d in input_shape)
    features = math.prod(shape)
    return {
        "input_shape": shape,
        "in_features": features,
        "n_features": features,
        "in_channels": shape[0] if len(shape) > 1 else 1,
        "num_classes": num_classes,
        "n_classes": num_classes,
    }


def _declared(factory: Callable, name: str, filled: dict[str, Any], args: dict[str, Any]) -> dict[str, Any]:
    """The arguments of ``factory`` it declares: from the data, then ``model.args``; a required
    one that neither gives is refused by name."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): pass the data's plus args
        return {**filled, **args}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in filled.items() if k in params or var_kw}
    kwargs.update(args)
    unknown = [k for k in args if k not in params and not var_kw]
    if unknown:
        raise RecipeError(f"model.args: {name} takes no argument {', '.join(unknown)}; it takes: {', '.join(params)}")
    missing = [
        k
        for k, p in params.items()
        if p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and k not in kwargs
    ]
    if missing:
        raise RecipeError(
            f"model.args: {name} needs {', '.join(missing)}: not filled from the data "
            f"({', '.join(FROM_DATA)}); give {'it' if len(missing) == 1 else 'them'} in model.args"
        )
    return kwargs


def find_module_dir(module_name: str, search_path: Sequence[str | Path]) -> Path | None:
    """The first folder of ``search_path`` that holds ``module_name`` (``a.b`` -> ``a/b.py`` or
    ``a/b/__init__.py``), as an absolute path; None when none does."""
    rel = Path(*module_name.split("."))
    for folder in search_path:
        base = Path(folder).expanduser().resolve()
        if (base / rel).with_suffix(".py").is_file() or (base / rel / "__init__.py").is_file():
            return base
    return None


def user_factory(spec: str, search_path: Sequence[str | Path] = ()) -> Callable:
    """The callable named by ``module:attr``, its module imported from the first folder of
    ``search_path`` that holds it, else from the installed packages."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise RecipeError(f"model.name: {spec!r}: expected module:factory (e.g. mymodels:small_cnn)")
    folder = find_module_dir(module_name, search_path)
    try:
        with _on_path(folder):
            module = importlib.import_module(module_name)
    except ImportError as exc:
        looked = [str(Path(p).expanduser().resolve()) for p in search_path]
        where = f"{', '.join(looked)} and the installed packages" if looked else "the installed packages"
        raise RecipeError(f"model.name: cannot import {module_name!r} (looked in {where}): {exc}") from None
    try:
        factory = getattr(module, attr)
    except AttributeError:
        raise RecipeError(f"model.name: {module_name!r} ({module.__file__}) has no attribute {attr!r}") from None
    if not callable(factory):
        raise RecipeError(f"model.name: {spec!r} is a {type(factory).__name__}, not a factory or class")
    return factory


@contextmanager
def _on_path(folder: Path | None) -> Iterator[None]:
    """``folder`` first on ``sys.path`` while importing (its siblings import too), then removed."""
    if folder is None:
        yield
        return
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        if str(folder) in sys.path:
            sys.path.remove(str(folder))


def _norm(width: int, batchnorm: str, *, dims: int) -> nn.Module:
    """Batch norm after a layer: ``affine``, ``no_affine`` (normalize only) or ``none``."""
    if batchnorm not in BATCHNORM_MODES:
        raise RecipeError(f"model.args.batchnorm: {batchnorm!r}; allowed: {', '.join(BATCHNORM_MODES)}")
    if batchnorm == "none":
        return nn.Identity()
    cls = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
    return cls(width, affine=batchnorm == "affine")


@MODELS.register("mlp")
def mlp(
    *,
    input_shape: Sequence[int],
    num_classes: int,
    hidden: Sequence[int] = (64, 32, 32),
    batchnorm: str = "affine",
    dropout: float = 0.0,
) -> nn.Module:
    """The jet-tagging MLP of Ps and Qs: in → 64 → 32 → 32 → classes (widths configurable).

    Layers are named ``fc1..fcK`` with ``bn``/``act`` after each hidden layer; the input is
    flattened, and ``input_quant`` (an identity until ``attach`` quantizes it) comes first.
    x (N, *input_shape) -> logits (N, num_classes).
    """
    layers: list[tuple[str, nn.Module]] = [("input_quant", nn.Identity()), ("flatten", nn.Flatten())]
    width = math.prod(input_shape)
    for i, h in enumerate(hidden, start=1):
        layers += [(f"fc{i}", nn.Linear(width, h)), (f"bn{i}", _norm(h, batchnorm, dims=1)), (f"act{i}", nn.ReLU())]
        if dropout:
            layers.append((f"drop{i}", nn.Dropout(dropout)))
        width = h
    layers.append((f"fc{len(hidden) + 1}", nn.Linear(width, num_classes)))
    return nn.Sequential(OrderedDict(layers))


@MODELS.register("lenet300")
def lenet300(*, input_shape: Sequence[int], num_classes: int, batchnorm: str = "none") -> nn.Module:
    """LeNet-300-100 (LeCun et al.): in → 300 → 100 → classes."""
    return mlp(input_shape=input_shape, num_classes=num_classes, hidden=(300, 100), batchnorm=batchnorm)


def _conv_block(c_in: int, c_out: int, batchnorm: str, index: int) -> list[tuple[str, nn.Module]]:
    return [
        (f"conv{index}", nn.Conv2d(c_in, c_out, 3, padding=1, bias=batchnorm == "none")),
        (f"bn{index}", _norm(c_out, batchnorm, dims=2)),
        (f"act{index}", nn.ReLU()),
    ]


@MODELS.register("lenet5")
def lenet5(*, input_shape: Sequence[int], num_classes: int, batchnorm: str = "none") -> nn.Module:
    """LeNet-5: conv(6,5×5) → pool → conv(16,5×5) → pool → 120 → 84 → classes.

    The first convolution pads by 2 (28×28 inputs behave as the classic 32×32 setting).
    x (N, C, H, W) -> logits (N, num_classes).
    """
    c, h, w = _image_shape(input_shape)
    big = min(h, w) >= 16  # small inputs (8×8 digits) keep their size through the second conv
    feats = nn.Sequential(
        nn.Conv2d(c, 6, 5, padding=2),
        _norm(6, batchnorm, dims=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=0 if big else 2),
        _norm(16, batchnorm, dims=2),
        nn.ReLU(),
        nn.MaxPool2d(2) if big else nn.Identity(),
    )
    flat = _flat_size(feats, (c, h, w))
    return nn.Sequential(
        OrderedDict(
            [
                ("input_quant", nn.Identity()),
                ("features", feats),
                ("flatten", nn.Flatten()),
                ("fc1", nn.Linear(flat, 120)),
                ("act_fc1", nn.ReLU()),
                ("fc2", nn.Linear(120, 84)),
                ("act_fc2", nn.ReLU()),
                ("fc3", nn.Linear(84, num_classes)),
            ]
        )
    )


@MODELS.register("vgg_small")
def vgg_small(
    *,
    input_shape: Sequence[int],
    num_classes: int,
    widths: Sequence[int] = (32, 64, 128),
    convs_per_stage: int = 2,
    batchnorm: str = "affine",
    hidden: int = 128,
) -> nn.Module:
    """A small VGG-style CNN: stages of 3×3 conv-BN-ReLU blocks, each stage ending in a 2×2
    max-pool, then global average pooling, a hidden linear layer and the classifier.
    x (N, C, H, W) -> logits (N, num_classes).
    """
    c, h, w = _image_shape(input_shape)
    layers: list[tuple[str, nn.Module]] = [("input_quant", nn.Identity())]
    c_in, index = c, 1
    for s, width in enumerate(widths, start=1):
        for _ in range(convs_per_stage):
            layers += _conv_block(c_in, width, batchnorm, index)
            c_in, index = width, index + 1
        if min(h, w) >= 2:
            layers.append((f"pool{s}", nn.MaxPool2d(2)))
            h, w = h // 2, w // 2
    layers += [
        ("gap", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(c_in, hidden)),
        ("act_fc1", nn.ReLU()),
        ("fc2", nn.Linear(hidden, num_classes)),
    ]
    return nn.Sequential(OrderedDict(layers))


def _image_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    if len(input_shape) == 3:
        return tuple(input_shape)  # type: ignore[return-value]
    if len(input_shape) == 2:
        return (1, *input_shape)  # type: ignore[return-value]
    raise RecipeError(f"model: a CNN needs image data (C, H, W), got input shape {tuple(input_shape)}")


def _flat_size(features: nn.Module, shape: tuple[int, int, int]) -> int:
    import torch

    with torch.no_grad():
        return int(features(torch.zeros(1, *shape)).numel())


from qaprune.models import resnet as _resnet  # noqa: E402,F401  (registers resnet8)
