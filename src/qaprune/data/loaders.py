"""Raw dataset loaders: `@DATASETS.register(name)` functions `(*, path, data_dir) -> RawData`.

A loader only finds and reads files (qaprune.data.resolve, qaprune.data.formats); splitting and
scaling live in qaprune.data.prepare. A user file (.npz / .csv / .arff) goes through
`load_user_file`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from qaprune.data.dataset import RawData
from qaprune.data.download import download_file, fetch_openml_npz, verify_sidecar
from qaprune.data.formats import (
    encode_labels,
    read_bytes,
    read_csv_text,
    read_idx_pair,
    read_npz,
    read_table,
)
from qaprune.data.resolve import Found, Layout, cache_dir, explicit_path, find_dataset
from qaprune.errors import DataFormatError
from qaprune.registry import Registry

PathLike = str | os.PathLike | None
DATASETS: Registry[Callable[..., RawData]] = Registry("dataset")

_IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _idx_groups(*extra_train: tuple[str, ...]) -> tuple:
    train = (tuple(f"{n}.gz" for n in _IDX_NAMES[:2]), _IDX_NAMES[:2], *extra_train)
    test = (tuple(f"{n}.gz" for n in _IDX_NAMES[2:]), _IDX_NAMES[2:])
    return (train, test)


MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
FASHION_SHA256 = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
FASHION_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
JETS_FEATURES = (
    "zlogz",
    "c1_b0_mmdt",
    "c1_b1_mmdt",
    "c1_b2_mmdt",
    "c2_b1_mmdt",
    "c2_b2_mmdt",
    "d2_b1_mmdt",
    "d2_b2_mmdt",
    "d2_a1_b1_mmdt",
    "d2_a1_b2_mmdt",
    "m2_b1_mmdt",
    "m2_b2_mmdt",
    "n2_b1_mmdt",
    "n2_b2_mmdt",
    "mass_mmdt",
    "multiplicity",
)
JETS_CLASSES = ["g", "q", "t", "w", "z"]
LETTER_CLASSES = [chr(ord("A") + i) for i in range(26)]
JETS_OPENML_ID = 42468
LETTER_OPENML_ID = 6

MNIST_LAYOUT = Layout(
    "mnist",
    ("mnist", "MNIST", "MNIST/raw"),
    _idx_groups(("train-10k.npz",)),
    flat=False,
    howto="the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from {MNIST_MIRRORS[0]}; "
    "train-10k.npz (x uint8 (N,28,28), y) may stand in for the training files.",
)
FASHION_LAYOUT = Layout(
    "fashion_mnist",
    ("fashion-mnist", "fashion_mnist", "FashionMNIST", "FashionMNIST/raw"),
    _idx_groups(),
    flat=False,
    howto="Debian/Ubuntu: apt install dataset-fashion-mnist (installs /usr/share/datasets/"
    f"fashion-mnist); or the four IDX .gz files from {FASHION_MIRRORS[0]}",
)
LETTER_LAYOUT = Layout(
    "letter",
    ("uci", "letter"),
    ((("letter.npz",), ("letter-recognition.data",)),),
    howto="letter-recognition.data from https://archive.ics.uci.edu/dataset/59/letter+recognition "
    "or letter.npz (x float32 (20000,16), y int64, classes); online it is fetched from OpenML "
    f"(https://www.openml.org/d/{LETTER_OPENML_ID}).",
)
_JETS_NAMES = ("hls4ml_lhc_jets_hlf", "jets")
JETS_LAYOUT = Layout(
    "jets",
    ("jets", "hls4ml"),
    (tuple((f"{n}{ext}",) for ext in (".npz", ".arff", ".arff.gz", ".csv") for n in _JETS_NAMES),),
    howto="download the ARFF file of the hls4ml LHC jet dataset from OpenML "
    f"(https://www.openml.org/d/{JETS_OPENML_ID}) and save it as jets/hls4ml_lhc_jets_hlf.arff "
    "(.arff.gz and a CSV of the same columns work too).",
)


@DATASETS.register("digits")
def digits(*, path: PathLike = None, data_dir: PathLike = None) -> RawData:
    """scikit-learn's bundled 8x8 digits: 1,797 images (N, 8, 8), values 0..16, 10 classes.
    data_dir is not used; `path` may name an .npz with x (N, 8, 8) or (N, 64) and y instead."""
    if path is not None:
        p = explicit_path(path, dataset="digits")
        arrays = read_npz(p)
        if arrays["x"][0].size != 64:
            raise DataFormatError(f"{p}: digits x must be (N, 8, 8) or (N, 64), got {arrays['x'].shape}")
        x, y, source = arrays["x"].reshape(len(arrays["x"]), 8, 8), arrays["y"], str(p)
    else:
        from sklearn.datasets import load_digits  # heavy: imported on use

        bunch = load_digits()
        x, y, source = bunch.images, bunch.target, "sklearn.datasets.load_digits"
    y, _ = encode_labels(y, where=source)
    return RawData(
        x=x.astype(np.float32), y=y, kind="image", classes=[str(i) for i in range(10)], value_max=16.0, source=source
    )


def _fetch_idx(folder: Path, *, sha256: dict[str, str], mirrors: tuple[str, ...]) -> None:
    for name, digest in sha256.items():
        if not (folder / name).is_file():
            download_file([m + name for m in mirrors], folder / name, sha256=digest)


def _idx_raw(found: Found, *, classes: list[str]) -> RawData:
    """RawData from a found (train files, t10k files) pair; train may be an npz subset."""
    train, test = found.files
    for p in train + test:
        verify_sidecar(p)
    if len(train) == 1:
        arrays = read_npz(train[0])
        x, y = arrays["x"], arrays["y"]
        if x.ndim != 3:
            raise DataFormatError(f"{train[0]}: x must be (N, H, W) images, got shape {x.shape}")
    else:
        x, y = read_idx_pair(*train)
    x_test, y_test = read_idx_pair(*test)
    if x.shape[1:] != x_test.shape[1:]:
        raise DataFormatError(f"{found.folder}: train images {x.shape[1:]} but test images {x_test.shape[1:]}")
    return RawData(
        x=x,
        y=y.astype(np.int64),
        kind="image",
        classes=classes,
        x_test=x_test,
        y_test=y_test.astype(np.int64),
        value_max=255.0,
        source=str(found.folder),
    )


@DATASETS.register("mnist")
def mnist(*, path: PathLike = None, data_dir: PathLike = None) -> RawData:
    """MNIST: uint8 (N, 28, 28), 10 classes, with the official 10,000-image test set. The
    training pool is the full 60,000 IDX files, else train-10k.npz (10,000 images)."""
    fetch = partial(_fetch_idx, sha256=MNIST_SHA256, mirrors=MNIST_MIRRORS)
    found = find_dataset(MNIST_LAYOUT, path=path, data_dir=data_dir, fetch=fetch)
    return _idx_raw(found, classes=[str(i) for i in range(10)])


@DATASETS.register("fashion_mnist")
def fashion_mnist(*, path: PathLike = None, data_dir: PathLike = None) -> RawData:
    """Fashion-MNIST: uint8 (60000, 28, 28) + official test (10000, 28, 28), 10 classes."""
    fetch = partial(_fetch_idx, sha256=FASHION_SHA256, mirrors=FASHION_MIRRORS)
    found = find_dataset(FASHION_LAYOUT, path=path, data_dir=data_dir, fetch=fetch)
    return _idx_raw(found, classes=list(FASHION_CLASSES))


def _fetch_openml(folder: Path, *, data_id: int, filename: str) -> None:
    fetch_openml_npz(data_id=data_id, dest=folder / filename, cache=cache_dir())


def _one_file(layout: Layout, *, path: PathLike, data_dir: PathLike, fetch) -> Path:
    """An explicit file as given, else the first file of the layout found (or fetched)."""
    if path is not None and explicit_path(path, dataset=layout.name).is_file():
        return Path(path).expanduser()
    return find_dataset(layout, path=path, data_dir=data_dir, fetch=fetch).files[0][0]


@DATASETS.register("letter")
def letter(*, path: PathLike = None, data_dir: PathLike = None) -> RawData:
    """UCI Letter Recognition: float32 (20000, 16) integer-valued features, 26 classes A..Z
    (integer labels without class names are read as 0 = A .. 25 = Z)."""
    fetch = partial(_fetch_openml, data_id=LETTER_OPENML_ID, filename="letter.npz")
    p = _one_file(LETTER_LAYOUT, path=path, data_dir=data_dir, fetch=fetch)
    verify_sidecar(p)
    if p.name.endswith((".data", ".data.gz")):  # UCI original: label first, no header
        x, y, classes = _read_uci_letter(p)
    else:
        x, y, classes = _xy_classes(p, label_column=None)
    if x.ndim != 2 or x.shape[1] != 16:
        raise DataFormatError(f"{p}: letter needs 16 features per row, got shape {x.shape}")
    if classes is None and y.size and y.max() < len(LETTER_CLASSES):  # integer codes: 0 is A
        classes = list(LETTER_CLASSES)
    return RawData(x=x.astype(np.float32), y=y, kind="tabular", classes=classes, source=str(p))


def _read_uci_letter(p: Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """UCI's letter-recognition.data: no header, the letter first, then 16 integer features."""
    header = ",".join(["lettr"] + [f"f{i}" for i in range(16)])
    text = header + "\n" + read_bytes(p).decode()
    table = read_csv_text(text, label_column="lettr", where=p)
    y, classes = encode_labels(table.labels, where=str(p))
    return table.x, y, classes


def _xy_classes(p: Path, *, label_column: str | None) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """x, integer y and class names from an .npz or a CSV/ARFF table."""
    if p.name.endswith(".npz"):
        return _npz_xy(read_npz(p), where=p)
    table = read_table(p, label_column=label_column)
    if table.classes is not None:  # ARFF: codes already in declared order
        return table.x, table.labels, table.classes
    y, classes = encode_labels(table.labels, where=str(p))
    return table.x, y, classes


def _npz_xy(arrays: dict[str, np.ndarray], *, where) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """x, integer y and class names of npz arrays (y coded by the `classes` array if present)."""
    if "classes" not in arrays:
        y, classes = encode_labels(arrays["y"], where=str(where))
        return arrays["x"], y, classes
    classes = [str(c) for c in arrays["classes"]]
    return arrays["x"], _labels_by_classes(arrays["y"], classes, where=where), classes


@DATASETS.register("jets")
def jets(*, path: PathLike = None, data_dir: PathLike = None) -> RawData:
    """hls4ml LHC jets (OpenML 42468): float32 (830000, 16) high-level features, 5 classes
    g, q, t, w, z. Reads a local .npz / ARFF / CSV, else fetches from OpenML into the cache."""
    fetch = partial(_fetch_openml, data_id=JETS_OPENML_ID, filename="hls4ml_lhc_jets_hlf.npz")
    p = _one_file(JETS_LAYOUT, path=path, data_dir=data_dir, fetch=fetch)
    verify_sidecar(p)
    if p.name.endswith(".npz"):
        arrays = read_npz(p)
        x, y = arrays["x"], arrays["y"]
        names = [str(c) for c in arrays["classes"]] if "classes" in arrays else JETS_CLASSES
        columns = [str(c) for c in arrays["columns"]] if "columns" in arrays else list(JETS_FEATURES)
    else:
        table = read_table(p, label_column="class")
        x, columns = table.x, table.columns
        y, names = (table.labels, table.classes) if table.classes else encode_labels(table.labels, where=str(p))
        names = names or JETS_CLASSES  # integer labels: taken to be in the order g, q, t, w, z
    x = _select_columns(x, columns, JETS_FEATURES, where=p)
    return RawData(
        x=x.astype(np.float32),
        y=_recode(y, names, JETS_CLASSES, where=p),
        kind="tabular",
        classes=list(JETS_CLASSES),
        source=str(p),
    )


def _select_columns(x: np.ndarray, columns: list[str], wanted: tuple[str, ...], *, where) -> np.ndarray:
    lower = [c.lower() for c in columns]
    missing = [w for w in wanted if w not in lower]
    if missing:
        raise DataFormatError(f"{where}: missing feature columns {missing} (found: {columns})")
    return x[:, [lower.index(w) for w in wanted]]


def _recode(y: np.ndarray, names: list[str], canonical: list[str], *, where) -> np.ndarray:
    """Codes into `names` -> codes into `canonical` (so every file format gives the same labels)."""
    unknown = sorted(set(names) - set(canonical))
    if unknown:
        raise DataFormatError(f"{where}: unknown class values {unknown}; expected {canonical}")
    y = np.asarray(y, dtype=np.int64)
    if y.size and (y.min() < 0 or y.max() >= len(names)):
        raise DataFormatError(f"{where}: labels must be in 0..{len(names) - 1}, got {y.min()}..{y.max()}")
    return np.array([canonical.index(n) for n in names], dtype=np.int64)[y]


USER_SUFFIXES = (".npz", ".csv", ".csv.gz", ".arff", ".arff.gz")


def load_user_file(path: str | os.PathLike, *, label_column: str | None = None) -> RawData:
    """A user's own data file -> RawData.

    .npz: arrays x (N, F) tabular, (N, H, W) or (N, C, H, W) images, and y; optional x_test,
    y_test (an official test set) and classes. .csv (header row; labels in `label_column`, else
    "label", else the last column) and .arff: tabular. String labels map to sorted ints.
    """
    p = explicit_path(path, dataset=str(path))
    if not p.name.lower().endswith(USER_SUFFIXES):
        raise DataFormatError(f"{p}: unsupported data file; use one of {', '.join(USER_SUFFIXES)}")
    verify_sidecar(p)
    x_test = y_test = None
    if p.name.endswith(".npz"):
        arrays = read_npz(p)
        x, y, classes = _npz_xy(arrays, where=p)
        if ("x_test" in arrays) != ("y_test" in arrays):
            raise DataFormatError(f"{p}: give both x_test and y_test, or neither")
        if "x_test" in arrays:
            x_test = arrays["x_test"]
            y_test = _labels_by_classes(arrays["y_test"], classes, where=p)
    else:
        x, y, classes = _xy_classes(p, label_column=label_column)
    if x.ndim not in (2, 3, 4):
        raise DataFormatError(f"{p}: x must be (N, F), (N, H, W) or (N, C, H, W), got {x.shape}")
    value_max = 255.0 if x.dtype == np.uint8 else None
    return RawData(
        x=x,
        y=y,
        kind="tabular" if x.ndim == 2 else "image",
        classes=classes,
        x_test=x_test,
        y_test=y_test,
        value_max=value_max,
        source=str(p),
    )


def _labels_by_classes(labels: np.ndarray, classes: list[str] | None, *, where) -> np.ndarray:
    """Labels coded like the training labels: ints as they are (checked against `classes`),
    strings by their index in `classes`."""
    if labels.dtype.kind in "iu" or classes is None:
        codes = encode_labels(labels, where=str(where))[0]
        if classes is not None and codes.size and codes.max() >= len(classes):
            raise DataFormatError(f"{where}: label {codes.max()} but only {len(classes)} classes")
        return codes
    index = {c: i for i, c in enumerate(classes)}
    try:
        return np.array([index[str(v)] for v in labels], dtype=np.int64)
    except KeyError as exc:
        raise DataFormatError(f"{where}: label {exc} is not one of the classes {classes}") from None
