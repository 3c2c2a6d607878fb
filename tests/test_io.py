"""Tests of qaprune.io: safetensors round trips (never pickle), load_into errors, JSON helpers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from qaprune.errors import CheckpointError
from qaprune.io import copy_state, load_tensors, read_json, save_tensors, write_json
from qaprune.rundir import load_into


def test_save_load_round_trip(tmp_path: Path) -> None:
    tensors = {
        "a": torch.randn(3, 4),
        "b": torch.arange(5, dtype=torch.int32),
        "c": torch.randn(6, 2).t(),  # non-contiguous
        "d": torch.tensor([1.5], dtype=torch.float64),
        "e": torch.tensor([1, 0], dtype=torch.int8),
    }
    path = save_tensors(tmp_path / "t.safetensors", tensors, metadata={"k": "v"})
    assert path == tmp_path / "t.safetensors"
    assert not (tmp_path / "t.safetensors.tmp").exists()
    loaded = load_tensors(path)
    assert set(loaded) == set(tensors)
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype
        assert torch.equal(loaded[k], v)


def test_save_overwrites(tmp_path: Path) -> None:
    p = tmp_path / "t.safetensors"
    save_tensors(p, {"a": torch.zeros(2)})
    save_tensors(p, {"b": torch.ones(3)})
    assert set(load_tensors(p)) == {"b"}


def test_pickle_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a valid safetensors file.*refusing to load it"):
        load_tensors(path)


def test_garbage_and_truncated_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(CheckpointError):
        load_tensors(junk)
    good = save_tensors(tmp_path / "good.safetensors", {"a": torch.randn(100)})
    data = good.read_bytes()
    good.write_bytes(data[:-50])
    with pytest.raises(CheckpointError):
        load_tensors(good)


def test_missing_file_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such weights file"):
        load_tensors(tmp_path / "nope.safetensors")


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_load_into_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = _model()
    src.train()
    src(torch.randn(8, 3))  # running stats and num_batches_tracked
    path = save_tensors(tmp_path / "m.safetensors", src.state_dict())
    torch.manual_seed(1)
    dst = load_into(_model(), path)
    for (k, a), (k2, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(5, 3)
    src.eval(), dst.eval()
    assert torch.equal(src(x), dst(x))


def test_load_into_wrong_keys(tmp_path: Path) -> None:
    path = save_tensors(tmp_path / "m.safetensors", {"0.weight": torch.zeros(4, 3)})
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_into(_model(), path)
    extra = {**_model().state_dict(), "extra.weight": torch.zeros(1)}
    path = save_tensors(tmp_path / "e.safetensors", extra)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_into(_model(), path)


def test_load_into_wrong_shapes(tmp_path: Path) -> None:
    other = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
    path = save_tensors(tmp_path / "m.safetensors", other.state_dict())
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_into(_model(), path)


def test_copy_state_is_detached_copy() -> None:
    model = _model()
    state = copy_state(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not torch.equal(state["0.weight"], model[0].weight)
    assert not state["0.weight"].requires_grad


def test_json_round_trip_and_errors(tmp_path: Path) -> None:
    data = {"a": 1, "b": [1.5, "x"], "c": {"d": None}, "nan": math.nan}
    p = write_json(tmp_path / "r.json", data)
    back = read_json(p)
    assert back["a"] == 1 and back["b"] == [1.5, "x"] and back["c"] == {"d": None}
    assert math.isnan(back["nan"])
    with pytest.raises(CheckpointError, match="missing"):
        read_json(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")
