"""Tests of qaprune.storage: bit packing, canonical Huffman, delta-index sparse positions,
per-row scaled integers, tensor codecs and the ``.qap`` artifact (bit-exact round trips of
compressed models, the size it reaches, and refusal of corrupt or foreign files)."""

from __future__ import annotations

import copy
import doctest
import importlib
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load, save, save_file

from qaprune.compress import attach
from qaprune.errors import CheckpointError
from qaprune.metrics.size import fp32_bytes, size_bytes
from qaprune.models import build_model
from qaprune.param import bake
from qaprune.prune import prune_to
from qaprune.recipe import Recipe
from qaprune.storage import (
    best_width,
    bits_for,
    code_lengths,
    compression_ratio,
    decode_positions,
    encode_positions,
    huffman_decode,
    huffman_encode,
    load_qap,
    load_qap_into,
    pack_bits,
    qap_bytes,
    qap_report,
    save_qap,
    unpack_bits,
)
from qaprune.storage.codec import Reader, decode_tensor, encode_tensor
from qaprune.storage.huffman import canonical_codes
from qaprune.storage.scaled import join, split
from qaprune.storage.sparse import entry_count

FAST = settings(max_examples=60, deadline=None)
MODULES = [
    *(f"qaprune.storage.{m}" for m in ("bitpack", "huffman", "sparse", "scaled", "values", "codec", "qap")),
    "qaprune.metrics.size",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


# ----------------------------------------------------------------------------- bit packing


@FAST
@given(bits=st.integers(1, 16), data=st.data())
def test_pack_unpack_round_trip(bits: int, data: st.DataObject) -> None:
    codes = np.array(data.draw(st.lists(st.integers(0, 2**bits - 1), max_size=300)), dtype=np.int64)
    packed = pack_bits(codes, bits)
    assert len(packed) == math.ceil(codes.size * bits / 8)
    assert np.array_equal(unpack_bits(packed, bits, codes.size), codes)


@pytest.mark.parametrize("bits", [17, 24, 32])
def test_pack_unpack_wide_codes(bits: int) -> None:
    codes = np.random.default_rng(bits).integers(0, 2**bits, 1001)
    assert np.array_equal(unpack_bits(pack_bits(codes, bits), bits, codes.size), codes)


def test_pack_bits_refuses_out_of_range_and_short_data() -> None:
    with pytest.raises(ValueError, match=r"codes must be in \[0, 2\*\*3\)"):
        pack_bits(np.array([8]), 3)
    with pytest.raises(ValueError, match="bits: 33"):
        pack_bits(np.array([1]), 33)
    with pytest.raises(ValueError, match="need 2 bytes"):
        unpack_bits(b"\x00", 4, 3)
    assert pack_bits(np.zeros(5, dtype=np.int64), 0) == b"" and unpack_bits(b"", 0, 5).tolist() == [0] * 5
    assert [bits_for(u) for u in (1, 2, 15, 16, 17, 65536)] == [0, 1, 4, 4, 5, 16]


# ----------------------------------------------------------------------------- Huffman


def _check_huffman(symbols: np.ndarray, alphabet: int | None = None, *, sync: int = 512) -> None:
    code = huffman_encode(symbols, alphabet=alphabet, sync=sync)
    assert np.array_equal(huffman_decode(code), symbols)
    counts = np.bincount(symbols, minlength=len(code.lengths))
    present = int((counts > 0).sum())
    assert code.total_bits == int(counts @ code.lengths)
    if present >= 2:  # a complete prefix code, no worse than fixed-length, no better than entropy
        assert sum(2.0**-n for n in code.lengths if n) == pytest.approx(1.0)
        p = counts[counts > 0] / symbols.size
        assert code.total_bits >= symbols.size * float(-(p * np.log2(p)).sum()) - 1e-6
        assert code.total_bits <= symbols.size * bits_for(present)
    elif present == 1:
        assert code.total_bits == symbols.size  # one bit per symbol


@FAST
@given(st.lists(st.integers(0, 40), max_size=2000), st.integers(1, 600))
def test_huffman_round_trip_random_streams(symbols: list[int], sync: int) -> None:
    _check_huffman(np.array(symbols, dtype=np.int64), sync=sync)


@FAST
@given(st.integers(0, 65535), st.integers(1, 3000), st.integers(1, 70000))
def test_huffman_single_symbol(symbol: int, n: int, alphabet_extra: int) -> None:
    _check_huffman(np.full(n, symbol, dtype=np.int64), alphabet=symbol + alphabet_extra, sync=97)


@FAST
@given(st.floats(0.05, 0.95), st.integers(2, 4096), st.integers(0, 2**31))
def test_huffman_skewed_streams(p: float, alphabet: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    symbols = np.minimum(rng.geometric(p, 3000) - 1, alphabet - 1)
    _check_huffman(rng.permutation(alphabet)[symbols], alphabet=alphabet, sync=256)


def test_huffman_lengths_are_limited_and_codes_prefix_free() -> None:
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])  # the counts that make the deepest Huffman tree
    lengths = code_lengths(np.array(fib), max_len=12)
    assert lengths.max() == 12 and sum(2.0**-n for n in lengths) == pytest.approx(1.0)
    assert code_lengths(np.array(fib)).max() == 20  # the default limit
    codes = canonical_codes(lengths)
    words = {format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths)}
    assert len(words) == len(fib)
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    symbols = np.repeat(np.arange(40), np.minimum(fib, 50))
    code = huffman_encode(symbols, max_len=12)
    assert code.lengths.max() <= 12 and np.array_equal(huffman_decode(code), symbols)


def test_huffman_decodes_a_million_symbols_fast() -> None:
    rng = np.random.default_rng(0)
    symbols = np.minimum(rng.geometric(0.25, 1_000_000) - 1, 254)
    code = huffman_encode(symbols, alphabet=255)
    start = time.process_time()  # CPU time: other processes on the core do not count
    out = huffman_decode(code)
    assert time.process_time() - start < 1.0
    assert np.array_equal(out, symbols) and code.total_bits < 3.5 * symbols.size


# ----------------------------------------------------------------------------- sparse positions


def _positions(mask: list[bool]) -> np.ndarray:
    return np.flatnonzero(np.array(mask, dtype=bool))


@FAST
@given(st.lists(st.booleans(), max_size=3000), st.integers(1, 8))
def test_delta_positions_round_trip(mask: list[bool], width: int) -> None:
    where = _positions(mask)
    entries = encode_positions(where, width)
    assert entries.size == entry_count(where, width) and (entries < 2**width).all()
    assert np.array_equal(decode_positions(entries, width), where)


@FAST
@given(st.lists(st.integers(1, 5000), max_size=60), st.integers(1, 8))
def test_delta_positions_long_gaps(gaps: list[int], width: int) -> None:
    where = np.cumsum(np.array(gaps, dtype=np.int64)) - 1
    entries = encode_positions(where, width)
    fillers = sum((g - 1) // (2**width - 1) for g in gaps)  # one filler per full span bridged
    assert entries.size == len(gaps) + fillers and int((entries == 0).sum()) == fillers
    assert np.array_equal(decode_positions(entries, width), where)


@FAST
@given(st.lists(st.booleans(), max_size=2000))
def test_best_width_minimizes_index_bits(mask: list[bool]) -> None:
    where = _positions(mask)
    width, entries = best_width(where)
    assert entries == entry_count(where, width)
    assert width * entries == min(w * entry_count(where, w) for w in range(1, 9))


def test_empty_and_full_masks() -> None:
    assert encode_positions(np.array([], dtype=np.int64), 3).size == 0
    assert decode_positions(np.array([], dtype=np.int64), 3).size == 0
    assert best_width(np.arange(1000)) == (1, 1000)  # every position: a bitmap of ones
    with pytest.raises(ValueError, match="strictly increasing"):
        encode_positions(np.array([3, 3]), 2)


# ----------------------------------------------------------------------------- tensors


def _round_trip(t: torch.Tensor) -> tuple[list, torch.Tensor]:
    desc, parts = encode_tensor(t)
    reader = Reader(b"".join(parts))
    out = decode_tensor(json.loads(json.dumps(desc)), reader)
    assert reader.at_end() and out.dtype == t.dtype and out.shape == t.shape
    return desc, out


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.reshape(-1).view(ints), b.reshape(-1).view(ints))


@FAST
@given(
    st.lists(st.floats(width=32, allow_nan=True), min_size=1, max_size=8),
    st.lists(st.integers(0, 7), max_size=400),
    st.integers(1, 4),
)
def test_tensor_round_trip_is_bit_exact(levels: list[float], picks: list[int], rows: int) -> None:
    values = [levels[i % len(levels)] for i in picks] * rows
    t = torch.tensor(values, dtype=torch.float32).reshape(rows, -1) if values else torch.zeros(rows, 0)
    t = torch.where(t == 0, torch.zeros(()), t)  # -0.0 is stored as +0.0 (see encode_tensor)
    _, out = _round_trip(t)
    assert _same_bits(out, t)


@pytest.mark.parametrize(
    "t",
    [
        torch.tensor([float("nan"), float("inf"), -float("inf"), 1e-45, 0.0] * 20),
        torch.randn(3, 4, 5).half(),
        torch.randn(7, 9).bfloat16(),
        torch.randn(100, dtype=torch.float64),
        torch.tensor([2**62, -(2**62), 0, 1] * 10),
        torch.randint(-128, 127, (50,), dtype=torch.int8),
        torch.randint(0, 2, (64,)).bool(),
        torch.tensor(3, dtype=torch.int64),
        torch.zeros(0, 5),
        torch.zeros(4, 4),
        torch.ones(1000),
        torch.arange(300, dtype=torch.int16).reshape(3, 100),
    ],
    ids=lambda t: f"{t.dtype}-{list(t.shape)}",
)
def test_tensor_round_trip_dtypes_and_special_values(t: torch.Tensor) -> None:
    _, out = _round_trip(t)
    assert _same_bits(out, t)


def test_negative_zero_is_stored_as_zero() -> None:
    t = torch.tensor([0.5, -0.0, 0.0, -0.5] * 64)
    desc, out = _round_trip(t)
    assert torch.equal(out, t) and not torch.signbit(out[1])


def test_codes_and_sparsity_pick_the_small_encodings() -> None:
    assert encode_tensor(torch.zeros(4096)) == (["F32", [4096], "pk", 0], [b""])  # nothing at all
    assert _round_trip(torch.full((4096,), 0.5))[0][2:] == ["cb", 1, 30]  # one value: 0 bits each
    skewed = torch.tensor([0.25] * 900 + [0.5] * 90 + [0.75] * 10)[torch.randperm(1000)]
    assert _round_trip(skewed)[0][2] == "hf"  # ~1.1 bits each beats 2-bit codes
    sparse = torch.zeros(100, 100)
    sparse.view(-1)[torch.randperm(10_000)[:300]] = torch.randn(300)
    desc, parts = encode_tensor(sparse)
    assert desc[2] == "sp" and sum(map(len, parts)) < 300 * 4 * 1.3
    wide = torch.randint(1, 1024, (1000,), generator=torch.Generator().manual_seed(0))
    assert _round_trip(wide)[0][2:] == ["pk", 10]  # small integers, no codebook


def test_per_channel_grid_is_found_and_exact() -> None:
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    step = w.abs().amax(dim=1) / 127
    q = torch.fake_quantize_per_channel_affine(w, step, torch.zeros(32, dtype=torch.int32), 0, -127, 127)
    scales, codes = split(q, 32)
    assert _same_bits(join(scales, codes, torch.float32), q)
    assert codes.min() >= 0 and codes.max() <= 254  # zigzag: 0..254 for -127..127
    desc, out = _round_trip(q)
    assert desc[2:4] == ["sc", 32] and _same_bits(out, q)
    assert sum(map(len, encode_tensor(q)[1])) < 32 * 64 + 32 * 4 + 64  # about 8 bits a weight
    assert split(torch.randn(32, 64), 32) is None and split(torch.randn(32, 64), 1) is None


# ----------------------------------------------------------------------------- models


def _model(
    bits: int, *, name: str = "mlp", sparsity: float = 0.7, per_channel: bool = False, seed: int = 0
) -> torch.nn.Module:
    torch.manual_seed(seed)
    shape = (16,) if name == "mlp" else (1, 28, 28)
    model = build_model(name, input_shape=shape, num_classes=5 if name == "mlp" else 10)
    act = 8 if bits < 32 else 32
    recipe = Recipe(
        quant={"weight_bits": bits, "act_bits": act, "per_channel": per_channel}, prune={"sparsity": sparsity}
    )
    sample = torch.randn(64, *shape)
    attach(model, recipe, sample=sample)
    if sparsity:
        prune_to(model, sparsity)
    model.train()
    with torch.no_grad():
        model(sample)  # non-trivial batch-norm statistics
    return model.eval()


def _check_exact(model: torch.nn.Module, path: Path, x: torch.Tensor) -> None:
    baked = bake(copy.deepcopy(model))
    state, meta = load_qap(path)
    expected = baked.state_dict()
    assert list(state) == list(expected) and meta == {"bits": "test"}
    for key, value in expected.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
    fresh = copy.deepcopy(baked)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    load_qap_into(fresh, path)
    with torch.no_grad():
        assert torch.equal(fresh(x), baked(x)) and torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("bits", [2, 4, 8, 32])
def test_mlp_round_trip_is_exact(bits: int, tmp_path: Path) -> None:
    model = _model(bits)
    path = tmp_path / "m.qap"
    n = save_qap(model, path, meta={"bits": "test"})
    assert n == path.stat().st_size == len(qap_bytes(model, meta={"bits": "test"}))
    assert not list(tmp_path.glob("*.tmp")) and hasattr(model.fc1, "parametrizations")  # model untouched
    _check_exact(model, path, torch.randn(20, 16))


@pytest.mark.parametrize("bits,per_channel", [(4, False), (8, True)])
def test_cnn_round_trip_is_exact(bits: int, per_channel: bool, tmp_path: Path) -> None:
    model = _model(bits, name="lenet5", per_channel=per_channel)
    save_qap(model, tmp_path / "m.qap", meta={"bits": "test"})
    _check_exact(model, tmp_path / "m.qap", torch.randn(4, 1, 28, 28))


def test_compression_reaches_the_expected_factor(tmp_path: Path) -> None:
    cnn = _model(4, name="lenet5")  # 4-bit, 70% sparse
    assert compression_ratio(cnn) == fp32_bytes(cnn) / size_bytes(cnn) >= 10
    mlp = _model(4)
    path = tmp_path / "m.qap"
    save_qap(mlp, path)
    rows = {r["name"]: r for r in qap_report(path)}
    weights = [r for k, r in rows.items() if k.startswith("fc") and k.endswith("weight")]
    dense = 4 * sum(math.prod(r["shape"]) for r in weights)
    assert dense / sum(r["bytes"] for r in weights) >= 10  # the weights alone (no header, biases)
    assert fp32_bytes(mlp) / path.stat().st_size >= 5  # the whole file, header included
    assert all(r["encoding"] != "raw" and r["bits"] <= 4 for r in weights)
    assert compression_ratio(_model(8, name="lenet5", per_channel=True)) >= 8
    assert compression_ratio(_model(32, name="lenet5")) >= 2.5  # float weights, 70% zeros


def test_report_lists_every_tensor(tmp_path: Path) -> None:
    model = _model(4, per_channel=True)
    n = save_qap(model, tmp_path / "m.qap")
    rows = qap_report(tmp_path / "m.qap")
    assert [r["name"] for r in rows] == list(bake(copy.deepcopy(model)).state_dict())
    assert n - sum(r["bytes"] for r in rows) < 1500  # the rest is the JSON header
    by = {r["name"]: r for r in rows}
    assert by["fc1.weight"]["encoding"].startswith("scaled") and by["fc1.weight"]["scales"] == 64
    assert by["fc2.weight"]["bits"] <= 4 and by["bn1.num_batches_tracked"]["encoding"] == "packed"


def test_same_model_same_bytes_and_meta_must_be_json(tmp_path: Path) -> None:
    model = _model(4)
    assert qap_bytes(model, meta={"a": 1, "b": [2]}) == qap_bytes(model, meta={"a": 1, "b": [2]})
    save_qap(model, tmp_path / "m.qap", meta={"a": 1})
    with safe_open(str(tmp_path / "m.qap"), framework="pt") as f:  # a plain safetensors file
        assert f.metadata()["format"] == "qaprune.qap" and f.metadata()["meta"] == '{"a":1}'
        assert f.get_tensor("payload").dtype == torch.uint8
    with pytest.raises(TypeError, match="meta: must be JSON-serializable"):
        qap_bytes(model, meta={"x": object()})


# ----------------------------------------------------------------------------- refusals


@pytest.fixture()
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "m.qap"
    save_qap(_model(4), path)
    return path


def _rewrite(path: Path, **changes: str) -> None:
    data = path.read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    path.write_bytes(save(load(data), metadata={**header["__metadata__"], **changes}))


def test_truncated_file_refused(artifact: Path) -> None:
    data = artifact.read_bytes()
    for cut in (len(data) // 2, len(data) - 1, 5):
        artifact.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="not a valid safetensors file"):
            load_qap(artifact)


def test_flipped_byte_refused(artifact: Path) -> None:
    data = bytearray(artifact.read_bytes())
    data[-10] ^= 0x01  # inside the payload
    artifact.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_qap(artifact)


def test_any_flipped_byte_refused(artifact: Path) -> None:
    data = artifact.read_bytes()
    for i in range(0, len(data), 13):  # header, checksum and payload alike
        flipped = bytearray(data)
        flipped[i] ^= 0x01
        artifact.write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError):
            load_qap(artifact)


def test_header_edits_refused(artifact: Path) -> None:
    data = artifact.read_bytes()
    _rewrite(
        artifact,
        tensors=json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]["tensors"].replace(
            "[64,16]", "[16,64]"
        ),
    )
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_qap(artifact)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        qap_report(artifact)


def test_inconsistent_layout_refused_even_with_a_valid_checksum(artifact: Path) -> None:
    import qaprune.storage.qap as qap

    data = artifact.read_bytes()
    info = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    tensors = json.loads(info["tensors"])
    tensors["fc1.bias"] = ["F32", [6400], "raw"]  # more bytes than the payload has
    text = json.dumps(tensors, separators=(",", ":"))
    payload = load(data)["payload"].numpy().tobytes()
    _rewrite(artifact, tensors=text, sha256=qap._digest(text, "", payload))
    with pytest.raises(CheckpointError, match="tensor 'fc1.bias': payload too short"):
        load_qap(artifact)


def test_unknown_version_refused(artifact: Path) -> None:
    _rewrite(artifact, version="99")
    with pytest.raises(CheckpointError, match=r"\.qap version '99' is not supported"):
        load_qap(artifact)


def test_foreign_files_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))
    with pytest.raises(CheckpointError, match="not a .qap artifact \\(format None, expected 'qaprune.qap'\\)"):
        load_qap(plain)
    pickled = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(3)}, pickled)
    junk = tmp_path / "junk.qap"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.qap"
    empty.write_bytes(b"")
    for path in (pickled, junk, empty):
        with pytest.raises(CheckpointError, match="not a .qap artifact"):
            load_qap(path)
    with pytest.raises(CheckpointError, match="no such .qap file"):
        load_qap(tmp_path / "missing.qap")


def test_load_into_wrong_architecture_refused(artifact: Path) -> None:
    other = build_model("lenet300", input_shape=(16,), num_classes=5)
    with pytest.raises(CheckpointError, match="does not fit the model"):
        load_qap_into(other, artifact)


def test_load_into_a_freshly_attached_model(artifact: Path) -> None:
    model = _model(4, seed=0)
    other = _model(4, seed=1)  # same recipe, other weights, still parametrized
    load_qap_into(other, artifact)
    x = torch.randn(8, 16)
    with torch.no_grad():
        assert torch.equal(other(x), model(x))
