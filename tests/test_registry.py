"""Tests of qaprune.registry: register/get, duplicate names, unknown names listing the known
ones, and the package's registries are all populated."""

from __future__ import annotations

import pytest

from qaprune.data import DATASETS
from qaprune.export.formats import EXPORTERS, Exporter
from qaprune.models import MODELS
from qaprune.prune import CRITERIA, SCHEDULES, STRUCTURES
from qaprune.prune.allocation import ALLOCATIONS
from qaprune.registry import Registry, UnknownNameError


def _registry() -> Registry:
    reg: Registry = Registry("widget")

    @reg.register("b")
    def b() -> int:
        return 2

    @reg.register("a")
    def a() -> int:
        return 1

    return reg


def test_register_returns_object_and_get_finds_it() -> None:
    reg = _registry()
    assert reg.get("a")() == 1 and reg.get("b")() == 2
    obj = object()
    assert reg.register("c")(obj) is obj
    assert reg.get("c") is obj


def test_names_sorted_len_contains_iter() -> None:
    reg = _registry()
    assert reg.names() == ["a", "b"]
    assert len(reg) == 2
    assert "a" in reg and "z" not in reg
    assert list(reg) == ["a", "b"]


def test_duplicate_registration_refused() -> None:
    reg = _registry()
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a")(lambda: 3)
    assert reg.get("a")() == 1


def test_unknown_name_lists_known() -> None:
    reg = _registry()
    with pytest.raises(UnknownNameError) as info:
        reg.get("zz")
    assert str(info.value) == "unknown widget 'zz'; known: a, b"
    assert isinstance(info.value, KeyError)


def test_unknown_name_in_empty_registry() -> None:
    with pytest.raises(UnknownNameError) as info:
        Registry("thing").get("x")
    assert str(info.value) == "unknown thing 'x'; known: (none)"


@pytest.mark.parametrize(
    "reg,kind,members",
    [
        (CRITERIA, "criterion", {"magnitude", "l2", "random"}),
        (STRUCTURES, "structure", {"unstructured"}),
        (SCHEDULES, "schedule", {"iterative", "cubic", "oneshot"}),
        (MODELS, "model", {"mlp", "lenet300", "lenet5", "vgg_small"}),
        (ALLOCATIONS, "allocation", {"global", "uniform", "lamp"}),
        (DATASETS, "dataset", {"digits", "letter", "mnist"}),
    ],
)
def test_package_registries(reg: Registry, kind: str, members: set[str]) -> None:
    assert reg.kind == kind
    assert members <= set(reg.names())
    for name in reg.names():
        assert callable(reg.get(name))


@pytest.mark.parametrize("name", EXPORTERS.names())
def test_every_export_format_has_a_writer_a_verifier_and_a_suffix(name: str) -> None:
    exporter = EXPORTERS.get(name)
    assert isinstance(exporter, Exporter) and exporter.name == name and exporter.suffix.endswith((".onnx", ".qap"))
    assert type(exporter).write is not Exporter.write and type(exporter).verify is not Exporter.verify
    assert {"onnx", "qdq", "qonnx", "qap"} <= set(EXPORTERS.names())


def test_every_top_level_export_resolves():
    import qaprune

    assert all(getattr(qaprune, name) is not None for name in qaprune.__all__)
