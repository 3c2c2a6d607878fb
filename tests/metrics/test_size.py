"""Tests of qaprune.metrics.size: the artifact (the ``.qap`` file of qaprune.storage) restores
the baked weights exactly (4/8/12/32 bits, pruned or not, per-tensor or per-channel), is much
smaller than fp32 when pruned and quantized, and corrupt files are refused with CheckpointError."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from qaprune.compress import attach
from qaprune.errors import CheckpointError
from qaprune.metrics.size import FORMAT, fp32_bytes, load_packed, pack, save_packed, size_bytes
from qaprune.models import build_model
from qaprune.param import bake
from qaprune.prune import prune_to
from qaprune.recipe import Recipe
from qaprune.storage import qap_report

LAYERS = ("fc1", "fc2", "fc3", "fc4")


def _compressed(
    bits: int, sparsity: float, *, per_channel: bool = False, name: str = "mlp", seed: int = 0
) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, input_shape=(16,), num_classes=5)
    act = 8 if bits < 32 else 32
    recipe = Recipe(
        quant={"weight_bits": bits, "act_bits": act, "per_channel": per_channel}, prune={"sparsity": sparsity}
    )
    sample = torch.randn(64, 16)
    attach(model, recipe, sample=sample)
    if sparsity:
        prune_to(model, sparsity, allocation="uniform")
    model.train()
    with torch.no_grad():
        model(sample)  # non-trivial batch-norm statistics
    return model.eval()


def _encodings(path: Path) -> dict[str, str]:
    weights = {f"{n}.weight" for n in LAYERS}
    return {r["name"]: r["encoding"] for r in qap_report(path) if r["name"] in weights}


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("bits", [4, 8, 12, 32])
def test_round_trip_bit_exact(bits: int, sparsity: float, per_channel: bool, tmp_path: Path) -> None:
    model = _compressed(bits, sparsity, per_channel=per_channel)
    live = {f"{n}.weight": getattr(model, n).weight.detach().clone() for n in LAYERS}
    path = tmp_path / "model.safetensors"
    n_bytes = save_packed(model, path)
    assert n_bytes == path.stat().st_size == size_bytes(model)
    loaded = load_packed(path)
    baked = bake(copy.deepcopy(model)).state_dict()
    for key, w in live.items():
        assert loaded[key].dtype == torch.float32
        assert torch.equal(loaded[key], w), key
        assert torch.equal(loaded[key], baked[key]), key
    assert set(loaded) == set(baked)
    for key in baked:
        assert loaded[key].dtype == baked[key].dtype, key
        assert torch.equal(loaded[key], baked[key]), key
    # a quantized weight uses at most 2^b - 1 levels (per tensor, or per output channel)
    if bits < 32:
        for key in live:
            rows = loaded[key] if per_channel else loaded[key].reshape(1, -1)
            assert max(len(torch.unique(r)) for r in rows) <= 2**bits - 1


@pytest.mark.parametrize("bits", [4, 8, 32])
def test_loaded_state_reproduces_outputs(bits: int, tmp_path: Path) -> None:
    model = _compressed(bits, 0.5)
    x = torch.randn(10, 16)
    expected = model(x)
    save_packed(model, tmp_path / "m.safetensors")
    fresh = bake(copy.deepcopy(model))
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.load_state_dict(load_packed(tmp_path / "m.safetensors"), strict=True)
    assert torch.equal(fresh(x), expected)


def test_encodings_dense_and_sparse(tmp_path: Path) -> None:
    save_packed(_compressed(4, 0.9), tmp_path / "a.safetensors")
    assert all("sparse" in e for e in _encodings(tmp_path / "a.safetensors").values())
    save_packed(_compressed(4, 0.0), tmp_path / "b.safetensors")
    assert not any("sparse" in e or e == "raw" for e in _encodings(tmp_path / "b.safetensors").values())
    save_packed(_compressed(32, 0.5), tmp_path / "c.safetensors")  # float values, half zeros
    assert set(_encodings(tmp_path / "c.safetensors").values()) == {"sparse"}


@pytest.mark.parametrize("bits", [4, 8, 12])
def test_codes_use_at_most_b_bits(bits: int, tmp_path: Path) -> None:
    save_packed(_compressed(bits, 0.0), tmp_path / "m.qap")
    row = next(r for r in qap_report(tmp_path / "m.qap") if r["name"] == "fc2.weight")
    assert row["bits"] <= bits and row["bytes"] <= 32 * 64 * bits / 8 + 4 * 2**bits
    tensors, meta = pack(_compressed(bits, 0.0))
    assert set(tensors) == {"payload"} and meta["format"] == FORMAT == "qaprune.qap"


def test_ninety_percent_four_bit_is_small() -> None:
    model = _compressed(4, 0.9, name="lenet300")
    dense, packed = fp32_bytes(model), size_bytes(model)
    # lenet300 (16 → 300 → 100 → 5) has no batch norm: weights and biases, plus the input scale
    assert dense == 4 * (16 * 300 + 300 * 100 + 100 * 5 + 300 + 100 + 5 + 1)
    assert packed < dense / 5


def test_fp32_bytes_counts_unpruned_floats() -> None:
    plain = build_model("mlp", input_shape=(16,), num_classes=5)
    compressed = _compressed(4, 0.9)
    # weights 4256, biases 133, batch norm (weight, bias, mean, var) 4 · 128
    assert fp32_bytes(plain) == 4 * (4256 + 133 + 512)
    assert fp32_bytes(compressed) == fp32_bytes(plain) + 4  # + the input quantizer's scale


def test_truncated_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_packed(_compressed(4, 0.5), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a .qap artifact"):
        load_packed(path)


def test_random_bytes_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(
        torch.randint(0, 256, (1000,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy().tobytes()
    )
    with pytest.raises(CheckpointError):
        load_packed(path)


def test_missing_file_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError):
        load_packed(tmp_path / "nope.safetensors")


def test_plain_safetensors_without_format_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="not a .qap artifact \\(format None, expected 'qaprune.qap'\\)"):
        load_packed(path)
