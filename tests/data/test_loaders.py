"""Raw loaders, file formats and data resolution. No network, no /work/shared/datasets: every
file is written here into tmp_path; the downloaders are replaced by functions that fail."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from qaprune.data import DATASETS, load_dataset, load_raw, loaders, resolve
from qaprune.data.download import DownloadError, sidecar, write_sidecar
from qaprune.data.formats import read_arff, read_idx
from qaprune.errors import DataFormatError, DataNotFoundError
from qaprune.registry import UnknownNameError

FEATURES = loaders.JETS_FEATURES


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No env data dirs, an empty system location, a private cache, and no network."""
    monkeypatch.delenv("QAPRUNE_DATA", raising=False)
    monkeypatch.delenv("QAPRUNE_OFFLINE", raising=False)
    monkeypatch.setenv("QAPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(resolve, "system_dirs", lambda: [tmp_path / "system"])

    def no_network(*args, **kwargs):
        raise DownloadError("network disabled in tests")

    monkeypatch.setattr(loaders, "download_file", no_network)
    monkeypatch.setattr(loaders, "fetch_openml_npz", no_network)


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> Path:
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_idx_set(
    folder: Path, *, n_train: int, n_test: int, seed: int, full_train: bool = True, npz_train: int = 0
) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        k: rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        for k, n in (("train", n_train), ("test", n_test), ("npz", npz_train))
    }
    for k, n in (("ytrain", n_train), ("ytest", n_test), ("ynpz", npz_train)):
        arrays[k] = rng.integers(0, 10, n).astype(np.uint8)
    if full_train:
        write_idx(folder / "train-images-idx3-ubyte.gz", arrays["train"])
        write_idx(folder / "train-labels-idx1-ubyte.gz", arrays["ytrain"])
    if npz_train:
        np.savez(folder / "train-10k.npz", x=arrays["npz"], y=arrays["ynpz"])
    write_idx(folder / "t10k-images-idx3-ubyte.gz", arrays["test"])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", arrays["ytest"])
    return arrays


def write_jets_arff(path: Path, *, rows: int = 50, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES))).round(5)
    labels = [loaders.JETS_CLASSES[i % 5] for i in range(rows)]
    head = ["% hls4ml LHC jets, high-level features", "@RELATION hls4ml_lhc_jets_hlf", ""]
    head += [f"@ATTRIBUTE {name} NUMERIC" for name in FEATURES]
    head += ["@ATTRIBUTE class {g,q,t,w,z}", "", "@DATA"]
    body = [",".join(f"{v:.5f}" for v in row) + f",{lab}" for row, lab in zip(x, labels)]
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(head + body) + "\n"
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return x.astype(np.float32), labels


def write_letter(path: Path, *, n: int = 20000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 16, (n, 16)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=(np.arange(n) % 26).astype(np.int64), classes=np.array([chr(65 + i) for i in range(26)]))


def test_registry_names():
    assert DATASETS.names() == ["digits", "fashion_mnist", "jets", "letter", "mnist"]


def test_unknown_name_lists_known():
    with pytest.raises(UnknownNameError) as err:
        load_dataset("cifar100")
    msg = str(err.value)
    for name in DATASETS.names():
        assert name in msg


def test_digits_raw():
    raw = DATASETS.get("digits")(path=None, data_dir=None)
    assert raw.x.shape == (1797, 8, 8) and raw.kind == "image"
    assert raw.value_max == 16.0 and raw.x.max() == 16 and raw.classes[3] == "3"


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.idx", a, gz=gz), ndim=3), a)


def test_idx_int32_big_endian(tmp_path):
    a = np.array([1, -2, 70000], dtype=">i4")
    (tmp_path / "b").write_bytes(bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3) + a.tobytes())
    assert read_idx(tmp_path / "b").tolist() == [1, -2, 70000]


@pytest.mark.parametrize(
    "data, words",
    [
        (b"\x01\x02\x08\x03" + b"\x00" * 20, "magic"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 10) + b"\x00" * 4, "size mismatch"),
        (b"\x1f\x8bnot gzip at all", "gzip"),
        (b"", "magic"),
    ],
)
def test_idx_bad_files_refused(tmp_path, data, words):
    (tmp_path / "bad").write_bytes(data)
    with pytest.raises(DataFormatError, match=words):
        read_idx(tmp_path / "bad")


def test_corrupt_mnist_idx_refused(tmp_path):
    make_idx_set(tmp_path / "d" / "mnist", n_train=20, n_test=10, seed=0)
    (tmp_path / "d" / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x09\x07junk"))
    with pytest.raises(DataFormatError, match="t10k-images"):
        load_dataset("mnist", data_dir=tmp_path / "d")


def test_mnist_npz_pool_and_official_test(tmp_path):
    arrays = make_idx_set(tmp_path / "d" / "mnist", n_train=0, n_test=30, seed=1, full_train=False, npz_train=100)
    ds = load_dataset("mnist", data_dir=tmp_path / "d", val=10, seed=0)
    summary = ds.summary()
    counts = summary.pop("class_counts")
    assert {split: sum(c.values()) for split, c in counts.items()} == {"train": 90, "val": 10, "test": 30}
    assert counts["test"] == {str(k): int((arrays["ytest"] == k).sum()) for k in range(10)}
    assert summary == {
        "name": "mnist",
        "train": 90,
        "val": 10,
        "test": 30,
        "num_classes": 10,
        "input_shape": [1, 28, 28],
    }
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert torch.allclose(ds.x_test[:, 0], torch.from_numpy(arrays["test"] / 255.0).float())
    assert ds.y_test.tolist() == arrays["ytest"].tolist()


def test_mnist_prefers_full_idx_over_npz(tmp_path):
    make_idx_set(tmp_path / "d" / "mnist", n_train=60, n_test=10, seed=2, npz_train=40)
    raw = load_raw("mnist", data_dir=tmp_path / "d")
    assert raw.x.shape == (60, 28, 28) and raw.x_test.shape == (10, 28, 28)


def test_mnist_val_larger_than_pool(tmp_path):
    make_idx_set(tmp_path / "d" / "mnist", n_train=0, n_test=10, seed=0, full_train=False, npz_train=50)
    with pytest.raises(ValueError, match="data.val: 300 samples requested but only 50 in the training pool"):
        load_dataset("mnist", data_dir=tmp_path / "d", val=300)


def test_fashion_layout_and_plain_idx(tmp_path):
    folder = tmp_path / "d" / "fashion-mnist"
    arrays = make_idx_set(folder, n_train=40, n_test=12, seed=3)
    for p in folder.glob("t10k-*.gz"):  # plain IDX works as well as gzipped
        p.with_suffix("").write_bytes(gzip.decompress(p.read_bytes()))
        p.unlink()
    ds = load_dataset("fashion_mnist", data_dir=tmp_path / "d", val=0.25)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (30, 10, 12)
    assert ds.classes[0] == "T-shirt/top" and ds.y_test.tolist() == arrays["ytest"].tolist()


def test_mnist_files_directly_in_data_dir_are_not_fashion(tmp_path):
    make_idx_set(tmp_path / "d", n_train=20, n_test=10, seed=0)
    with pytest.raises(DataNotFoundError):
        load_dataset("fashion_mnist", data_dir=tmp_path / "d")
    assert load_raw("fashion_mnist", path=tmp_path / "d").x.shape == (20, 28, 28)  # explicit: fine


def test_letter_exact_split(tmp_path):
    write_letter(tmp_path / "d" / "uci" / "letter.npz")
    ds = load_dataset("letter", data_dir=tmp_path / "d", seed=0, train=14000, val=2000, test=4000)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (14000, 2000, 4000)
    assert ds.input_shape == (16,) and ds.num_classes == 26 and ds.classes[-1] == "Z"
    again = load_dataset("letter", data_dir=tmp_path / "d", seed=0, train=14000, val=2000, test=4000)
    assert torch.equal(ds.x_test, again.x_test) and torch.equal(ds.y_train, again.y_train)


def test_letter_flat_npz_and_uci_text(tmp_path):
    write_letter(tmp_path / "d" / "letter.npz", n=100)
    assert load_raw("letter", data_dir=tmp_path / "d").x.shape == (100, 16)
    rows = [",".join([chr(65 + i % 26)] + [str((i + j) % 16) for j in range(16)]) for i in range(60)]
    (tmp_path / "letter-recognition.data").write_text("\n".join(rows) + "\n")
    raw = load_raw("letter", path=tmp_path / "letter-recognition.data")
    assert raw.x.shape == (60, 16) and raw.classes == [chr(65 + i) for i in range(26)]
    assert raw.y[:3].tolist() == [0, 1, 2] and raw.x[1, 0] == 1


@pytest.mark.parametrize("name", ["hls4ml_lhc_jets_hlf.arff", "hls4ml_lhc_jets_hlf.arff.gz"])
def test_jets_arff_path_and_data_dir(tmp_path, name):
    x, labels = write_jets_arff(tmp_path / "d" / "jets" / name)
    ds = load_dataset("jets", path=tmp_path / "d" / "jets" / name, scale="none", val=0.2, test=0.2)
    assert ds.input_shape == (16,) and ds.num_classes == 5 and ds.classes == ["g", "q", "t", "w", "z"]
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 50
    raw = load_raw("jets", data_dir=tmp_path / "d")
    assert np.allclose(raw.x, x) and raw.y.tolist() == ["gqtwz".index(c) for c in labels]


def test_jets_arff_parser_details(tmp_path):
    x, _ = write_jets_arff(tmp_path / "j.arff", rows=7)
    table = read_arff(tmp_path / "j.arff")
    assert table.columns == list(FEATURES) and table.classes == ["g", "q", "t", "w", "z"]
    assert table.x.dtype == np.float32 and np.allclose(table.x, x)
    text = (tmp_path / "j.arff").read_text().replace(",t\n", ",top\n", 1)
    (tmp_path / "bad.arff").write_text(text)
    with pytest.raises(DataFormatError, match="class value"):
        read_arff(tmp_path / "bad.arff")


def test_jets_csv_reorders_columns(tmp_path):
    x, labels = write_jets_arff(tmp_path / "j.arff", rows=20)
    order = list(reversed(range(16)))
    lines = ["class," + ",".join(FEATURES[i] for i in order)]
    lines += [lab + "," + ",".join(f"{row[i]:.5f}" for i in order) for row, lab in zip(x, labels)]
    (tmp_path / "d" / "jets").mkdir(parents=True)
    (tmp_path / "d" / "jets" / "jets.csv").write_text("\n".join(lines) + "\n")
    raw = load_raw("jets", data_dir=tmp_path / "d")
    assert np.allclose(raw.x, x) and raw.y.tolist() == ["gqtwz".index(c) for c in labels]


def test_jets_download_cached_with_sha256(tmp_path, monkeypatch):
    calls = []

    def fake_fetch(*, data_id, dest, cache):
        calls.append(data_id)
        dest.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            dest,
            x=np.ones((10, 16), np.float32),
            y=np.arange(10) % 5,
            classes=np.array(["g", "q", "t", "w", "z"]),
            columns=np.array(FEATURES),
        )
        write_sidecar(dest)

    monkeypatch.setattr(loaders, "fetch_openml_npz", fake_fetch)
    raw = load_raw("jets")
    cached = tmp_path / "cache" / "jets" / "hls4ml_lhc_jets_hlf.npz"
    assert calls == [42468] and raw.source == str(cached) and sidecar(cached).is_file()
    load_raw("jets")
    assert calls == [42468]  # the second load reads the cache
    sidecar(cached).write_text("0" * 64 + "  hls4ml_lhc_jets_hlf.npz\n")
    with pytest.raises(DataFormatError, match="SHA-256 mismatch.*delete"):
        load_raw("jets")


def test_offline_error_lists_places_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("QAPRUNE_DATA", str(tmp_path / "env"))
    (tmp_path / "arg").mkdir()
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("jets", data_dir=tmp_path / "arg")
    msg = str(err.value)
    assert f"{tmp_path / 'arg' / 'jets'} (data_dir argument): no such folder" in msg
    assert f"{tmp_path / 'arg'} (data_dir argument): missing hls4ml_lhc_jets_hlf.npz" in msg
    for where in ("env", "system", "cache"):
        assert f"{tmp_path / where} (" in msg
    assert msg.index(str(tmp_path / "arg")) < msg.index(str(tmp_path / "env"))
    assert "https://www.openml.org/d/42468" in msg and "network disabled in tests" in msg
    monkeypatch.setenv("QAPRUNE_OFFLINE", "1")
    with pytest.raises(DataNotFoundError, match="QAPRUNE_OFFLINE"):
        load_dataset("mnist")


def test_missing_explicit_path(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_dataset("letter", path=tmp_path / "nope.npz")


def test_resolution_order(tmp_path, monkeypatch):
    for folder, n in (("explicit", 30), ("arg", 40), ("env", 50), ("system", 60), ("cache", 70)):
        write_letter(tmp_path / folder / "uci" / "letter.npz", n=n)
    monkeypatch.setenv("QAPRUNE_DATA", str(tmp_path / "env"))
    assert len(load_raw("letter", path=tmp_path / "explicit", data_dir=tmp_path / "arg").x) == 30
    assert len(load_raw("letter", data_dir=tmp_path / "arg").x) == 40
    assert len(load_raw("letter").x) == 50
    monkeypatch.delenv("QAPRUNE_DATA")
    assert len(load_raw("letter").x) == 60
    monkeypatch.setattr(resolve, "system_dirs", lambda: [])
    assert load_raw("letter").source == str(tmp_path / "cache" / "uci" / "letter.npz")


def test_cache_dir_env(tmp_path, monkeypatch):
    assert resolve.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("QAPRUNE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve.cache_dir() == tmp_path / "xdg" / "qaprune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert resolve.cache_dir() == Path.home() / ".cache" / "qaprune"


def test_user_npz_tabular_and_image(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tab.npz", x=rng.normal(size=(40, 5)), y=np.array(["b", "a", "c", "a"] * 10))
    ds = load_dataset(str(tmp_path / "tab.npz"))
    assert ds.input_shape == (5,) and ds.classes == ["a", "b", "c"] and ds.num_classes == 3
    assert sorted(torch.cat([ds.y_train, ds.y_val, ds.y_test]).tolist()) == [0] * 20 + [1] * 10 + [2] * 10
    np.savez(
        tmp_path / "img.npz",
        x=rng.integers(0, 256, (30, 6, 6)).astype(np.uint8),
        y=np.arange(30) % 3,
        x_test=np.full((4, 6, 6), 255, np.uint8),
        y_test=np.arange(4) % 3,
    )
    ds = load_dataset(str(tmp_path / "img.npz"))
    assert ds.input_shape == (1, 6, 6) and len(ds.x_test) == 4 and torch.all(ds.x_test == 1.0)
    assert ds.x_train.max() <= 1.0 and ds.num_classes == 3


def test_user_npz_needs_x_and_y(tmp_path):
    np.savez(tmp_path / "bad.npz", data=np.zeros((3, 2)))
    with pytest.raises(DataFormatError, match="'x' and 'y'.*found: data"):
        load_dataset(str(tmp_path / "bad.npz"))


def test_csv_label_column(tmp_path):
    (tmp_path / "a.csv").write_text("f1,label,f2\n1,cat,2\n3,dog,4\n5,cat,6\n7,dog,8\n9,cat,10\n")
    raw = load_raw(str(tmp_path / "a.csv"))
    assert raw.classes == ["cat", "dog"] and raw.y.tolist() == [0, 1, 0, 1, 0]
    assert raw.x.tolist() == [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]
    (tmp_path / "b.csv").write_text("f1,f2,target\n1,2,1\n3,4,0\n5,6,2\n")
    raw = load_raw(str(tmp_path / "b.csv"))  # no "label" column: the last one
    assert raw.y.tolist() == [1, 0, 2] and raw.classes is None and raw.x.shape == (3, 2)
    raw = load_raw(str(tmp_path / "b.csv"), label_column="f1")
    assert raw.y.tolist() == [1, 3, 5] and raw.x.tolist() == [[2, 1], [4, 0], [6, 2]]
    with pytest.raises(DataFormatError, match="label column 'y' not in the header"):
        load_raw(str(tmp_path / "b.csv"), label_column="y")
    (tmp_path / "c.csv").write_text("f1,label\n1,a\nx,b\n")
    with pytest.raises(DataFormatError, match="c.csv"):
        load_raw(str(tmp_path / "c.csv"))


def test_missing_user_file(tmp_path):
    with pytest.raises(DataNotFoundError):
        load_dataset(str(tmp_path / "missing.csv"))


def test_mnist_download_into_cache(tmp_path, monkeypatch):
    calls = []

    def fake_download(urls, dest, *, sha256):
        calls.append((dest.name, urls[0], sha256))
        n = 10 if dest.name.startswith("t10k") else 20
        write_idx(dest, np.zeros((n, 28, 28)) if "images" in dest.name else np.arange(n) % 10)

    monkeypatch.setattr(loaders, "download_file", fake_download)
    raw = load_raw("mnist")
    assert sorted(c[0] for c in calls) == sorted(loaders.MNIST_SHA256)
    assert all(sha == loaders.MNIST_SHA256[name] and url.endswith(name) for name, url, sha in calls)
    assert raw.source == str(tmp_path / "cache" / "mnist") and raw.x.shape == (20, 28, 28)
    load_raw("mnist")
    assert len(calls) == 4  # cached


def test_user_npz_string_labels_with_classes_and_test(tmp_path):
    np.savez(
        tmp_path / "s.npz",
        x=np.zeros((6, 2)),
        y=np.array(["z", "a", "z", "m", "a", "z"]),
        classes=np.array(["z", "m", "a"]),
        x_test=np.zeros((2, 2)),
        y_test=np.array(["m", "a"]),
    )
    raw = load_raw(str(tmp_path / "s.npz"))
    assert raw.classes == ["z", "m", "a"] and raw.y.tolist() == [0, 2, 0, 1, 2, 0]
    assert raw.y_test.tolist() == [1, 2]
    np.savez(tmp_path / "b.npz", x=np.zeros((2, 2)), y=np.array([0, 3]), classes=np.array(["a", "b"]))
    with pytest.raises(DataFormatError, match="label 3 but only 2 classes"):
        load_raw(str(tmp_path / "b.npz"))


def test_digits_from_explicit_npz(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.full((20, 64), 16.0), y=np.arange(20) % 10)
    ds = load_dataset("digits", path=tmp_path / "d.npz", scale="auto")
    assert ds.input_shape == (1, 8, 8) and torch.all(ds.x_train == 1.0)


def test_fetch_openml_npz_writes_checked_cache(tmp_path, monkeypatch):
    import sklearn.datasets
    from sklearn.utils import Bunch

    from qaprune.data import download

    seen = {}

    def fake_fetch_openml(**kwargs):
        seen.update(kwargs)
        return Bunch(data=np.arange(32.0).reshape(2, 16), target=np.array(["w", "g"]), feature_names=list(FEATURES))

    monkeypatch.setattr(sklearn.datasets, "fetch_openml", fake_fetch_openml)
    monkeypatch.setattr(loaders, "fetch_openml_npz", download.fetch_openml_npz)
    raw = load_raw("jets")
    assert seen["data_id"] == 42468 and seen["data_home"] == str(tmp_path / "cache")
    assert raw.y.tolist() == [3, 0] and raw.x.dtype == np.float32 and raw.x[1, 0] == 16
    assert sidecar(tmp_path / "cache" / "jets" / "hls4ml_lhc_jets_hlf.npz").is_file()
