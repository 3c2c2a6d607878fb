"""Readers for the file formats datasets come in: IDX (MNIST), NPZ, CSV and ARFF (OpenML).

Each reader checks what it reads and raises `DataFormatError` naming the file on a bad one.
"""

from __future__ import annotations

import csv
import gzip
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qaprune.errors import DataFormatError

# IDX type codes (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_bytes(path: str | Path) -> bytes:
    """The bytes of a file, gunzipped when it starts with the gzip magic number."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataFormatError(f"{path}: not a valid gzip file ({exc})") from None


def read_idx(path: str | Path, *, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (MNIST format), gzipped or plain -> array of its dims and type.

    Example: read_idx("t10k-images-idx3-ubyte.gz", ndim=3) -> uint8 (10000, 28, 28).
    """
    data = read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataFormatError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dims_n = data[3]
    if ndim is not None and dims_n != ndim:
        raise DataFormatError(f"{path}: IDX file has {dims_n} dimensions, expected {ndim}")
    header = 4 + 4 * dims_n
    if len(data) < header:
        raise DataFormatError(f"{path}: IDX header is truncated")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=dims_n, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataFormatError(f"{path}: IDX size mismatch: dims {dims} need {expected} bytes, file has {len(data)}")
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def read_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) and labels (N,) from two IDX files; checks that N agrees."""
    x = read_idx(images, ndim=3)
    y = read_idx(labels, ndim=1)
    if x.shape[0] != y.shape[0]:
        raise DataFormatError(f"{images}: {x.shape[0]} images but {labels} has {y.shape[0]} labels")
    return x, y.astype(np.int64)


def encode_labels(labels: np.ndarray, *, where: str) -> tuple[np.ndarray, list[str] | None]:
    """Labels -> (int64 codes, class names). Non-negative integers stay as they are (classes None);
    anything else (strings) maps to the index of its value in the sorted unique values."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataFormatError(f"{where}: labels must be one-dimensional, got shape {labels.shape}")
    if labels.dtype.kind in "iub":
        codes = labels.astype(np.int64)
        if codes.size and codes.min() < 0:
            return _encode_strings(codes.astype(str))
        return codes, None
    if labels.dtype.kind == "f":
        if np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)) and np.all(labels >= 0):
            return labels.astype(np.int64), None
        raise DataFormatError(f"{where}: labels must be integers or strings, got non-integer floats")
    strings = labels.astype(str)
    try:
        ints = np.array([int(s) for s in strings], dtype=np.int64)
    except ValueError:
        return _encode_strings(strings)
    return encode_labels(ints, where=where)


def _encode_strings(strings: np.ndarray) -> tuple[np.ndarray, list[str]]:
    classes, codes = np.unique(strings, return_inverse=True)
    return codes.astype(np.int64).reshape(-1), [str(c) for c in classes]


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Arrays of an .npz file (no pickles); requires `x` and `y` with the same length."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zlib.error) as exc:
        raise DataFormatError(f"{path}: not a readable .npz file ({exc})") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        found = ", ".join(sorted(arrays)) or "none"
        raise DataFormatError(f"{path}: .npz needs arrays 'x' and 'y' (found: {found})")
    for xk, yk in (("x", "y"), ("x_test", "y_test")):
        if xk in arrays and yk in arrays and len(arrays[xk]) != len(arrays[yk]):
            raise DataFormatError(f"{path}: {xk} has {len(arrays[xk])} rows but {yk} has {len(arrays[yk])}")
    return arrays


@dataclass
class Table:
    """A table read from CSV or ARFF: float32 features, their names, and the label column."""

    x: np.ndarray
    columns: list[str]
    labels: np.ndarray
    label_column: str
    classes: list[str] | None = None  # declared class values (ARFF nominal), in order


def read_csv(path: str | Path, *, label_column: str | None = None) -> Table:
    """A CSV file (optionally .gz) with a header row -> Table. The label column is
    `label_column`, else a column named "label", else the last; all others must be numeric."""
    text = read_bytes(path).decode("utf-8-sig")
    return read_csv_text(text, label_column=label_column, where=path)


def read_csv_text(text: str, *, label_column: str | None = None, where: str | Path = "<text>") -> Table:
    """CSV text with a header row -> Table (as read_csv; `where` names the source in errors)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        raise DataFormatError(f"{where}: CSV needs a header row and at least one data row")
    header = [h.strip() for h in next(csv.reader([lines[0]]))]
    if label_column is None:
        label_column = "label" if "label" in header else header[-1]
    if label_column not in header:
        raise DataFormatError(
            f"{where}: label column {label_column!r} not in the header (columns: {', '.join(header)})"
        )
    j = header.index(label_column)
    body = lines[1:]
    labels = _loadtxt(body, [j], str, where).reshape(-1)
    keep = [i for i in range(len(header)) if i != j]
    x = _loadtxt(body, keep, np.float64, where).astype(np.float32)
    return Table(x=x, columns=[header[i] for i in keep], labels=np.char.strip(labels), label_column=label_column)


def _loadtxt(lines: list[str], cols: list[int], dtype: type, path: str | Path) -> np.ndarray:
    """Columns `cols` of comma-separated lines, with the file named in any error."""
    try:
        return np.loadtxt(lines, delimiter=",", usecols=cols, dtype=dtype, ndmin=2, quotechar='"')
    except ValueError as exc:
        raise DataFormatError(f"{path}: bad data row ({exc})") from None


_ATTR = re.compile(r"@attribute\s+('[^']*'|\"[^\"]*\"|\S+)\s+(.+)$", re.IGNORECASE)


def _unquote(s: str) -> str:
    s = s.strip()
    return s[1:-1] if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"" else s


def _parse_arff_header(lines: list[str], path: str | Path) -> tuple[list[str], list, int]:
    """Attribute names, types ("numeric" or the list of nominal values), index of @data line."""
    names: list[str] = []
    types: list = []
    for i, line in enumerate(lines):
        s = line.strip()
        low = s.lower()
        if not s or s.startswith("%") or low.startswith("@relation"):
            continue
        if low.startswith("@data"):
            return names, types, i
        m = _ATTR.match(s)
        if not m:
            raise DataFormatError(f"{path}: line {i + 1}: cannot parse ARFF header line {s[:60]!r}")
        kind = m.group(2).strip()
        if kind.startswith("{"):
            types.append([_unquote(v) for v in kind.strip("{}").split(",")])
        elif kind.lower() in ("numeric", "real", "integer"):
            types.append("numeric")
        else:
            raise DataFormatError(f"{path}: attribute {m.group(1)}: unsupported ARFF type {kind!r}")
        names.append(_unquote(m.group(1)))
    raise DataFormatError(f"{path}: no @data section: not an ARFF file")


def read_arff(path: str | Path, *, label_column: str | None = None) -> Table:
    """A dense ARFF file (numeric attributes + one nominal class) -> Table. The label column is
    `label_column`, else "class", else the last nominal attribute. Labels are codes in the order
    the class values are declared."""
    lines = read_bytes(path).decode("utf-8").splitlines()
    names, types, start = _parse_arff_header(lines, path)
    nominal = [n for n, t in zip(names, types) if t != "numeric"]
    if label_column is None:
        label_column = "class" if "class" in nominal else (nominal[-1] if nominal else None)
    if label_column not in nominal:
        raise DataFormatError(f"{path}: no nominal class attribute {label_column!r} (nominal: {nominal})")
    others = [n for n in nominal if n != label_column]
    if others:
        raise DataFormatError(f"{path}: only numeric features are supported, got nominal {others}")
    data = [ln for ln in lines[start + 1 :] if ln.strip() and not ln.lstrip().startswith("%")]
    if any(ln.lstrip().startswith("{") for ln in data[:1]):
        raise DataFormatError(f"{path}: sparse ARFF data is not supported")
    j = names.index(label_column)
    bad = next((i for i, ln in enumerate(data) if ln.count(",") != len(names) - 1), None)
    if bad is not None:
        raise DataFormatError(f"{path}: data row {bad + 1} does not have {len(names)} values")
    values = types[j]
    index = {v: k for k, v in enumerate(values)}
    try:
        labels = np.array([index[_unquote(ln.split(",")[j])] for ln in data], dtype=np.int64)
    except KeyError as exc:
        raise DataFormatError(f"{path}: class value {exc} is not one of {values}") from None
    keep = [i for i in range(len(names)) if i != j]
    x = _loadtxt(data, keep, np.float64, path).astype(np.float32)
    return Table(x=x, columns=[names[i] for i in keep], labels=labels, label_column=label_column, classes=list(values))


def read_table(path: str | Path, *, label_column: str | None = None) -> Table:
    """A CSV or ARFF (optionally .gz) table, chosen by the file name."""
    name = Path(path).name.lower()
    if name.endswith((".arff", ".arff.gz")):
        return read_arff(path, label_column=label_column)
    return read_csv(path, label_column=label_column)
