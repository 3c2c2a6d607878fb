"""Downloads into the user cache, each checked by SHA-256, and the `.sha256` sidecar files that
let every later load check a cached file again.

Tests never reach this module's network code: they monkeypatch `download_file` / `fetch_openml_npz`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qaprune.errors import DataFormatError

ENV_OFFLINE = "QAPRUNE_OFFLINE"


class DownloadError(OSError):
    """A download failed or its checksum did not match; the message names each URL tried."""


def downloads_allowed() -> bool:
    """False when $QAPRUNE_OFFLINE is set to anything but "" or "0"."""
    return os.environ.get(ENV_OFFLINE, "").strip() in ("", "0")


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar(path: str | Path) -> Path:
    """The checksum file next to `path`: `<name>.sha256`."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def write_sidecar(path: str | Path) -> str:
    """Write `<name>.sha256` ("<hex>  <name>", as sha256sum does) and return the hex digest."""
    digest = sha256_of(path)
    sidecar(path).write_text(f"{digest}  {Path(path).name}\n")
    return digest


def verify_sidecar(path: str | Path) -> None:
    """If `<name>.sha256` exists next to `path`, check the file against it (DataFormatError)."""
    side = sidecar(path)
    if not side.is_file():
        return
    words = side.read_text().split()
    expected = words[0].lower() if words else ""
    actual = sha256_of(path)
    if actual != expected:
        raise DataFormatError(
            f"{path}: SHA-256 mismatch (expected {expected or 'nothing'} from {side.name}, "
            f"got {actual}); the file is corrupt or was changed: delete it and {side.name} "
            f"so that it is fetched again"
        )


def download_file(urls: Sequence[str], dest: str | Path, *, sha256: str, timeout: float = 60.0) -> Path:
    """Fetch the first URL that works to `dest`, checking its SHA-256; writes the sidecar too.

    Raises DownloadError naming every URL tried and why it failed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
            got = sha256_of(tmp)
            if got != sha256:
                raise DownloadError(f"SHA-256 {got} != expected {sha256}")
            os.replace(tmp, dest)
            write_sidecar(dest)
            return dest
        except (OSError, ValueError) as exc:
            failures.append(f"{url}: {exc}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DownloadError("; ".join(failures) or "no URL to download from")


def fetch_openml_npz(*, data_id: int, dest: str | Path, cache: str | Path) -> Path:
    """Fetch OpenML dataset `data_id` (scikit-learn checks OpenML's MD5; its raw files go under
    `cache`/openml) and store it as an .npz
    with arrays x (float32), y (int64, index into sorted classes), classes, columns; plus sidecar."""
    from sklearn.datasets import fetch_openml  # heavy: imported only when downloading

    try:
        bunch = fetch_openml(
            data_id=data_id, data_home=str(cache), as_frame=False, parser="liac-arff", n_retries=2, delay=1.0
        )
    except Exception as exc:  # sklearn raises URLError, HTTPError, OpenMLError, ValueError...
        raise DownloadError(f"OpenML data_id={data_id}: {type(exc).__name__}: {exc}") from exc
    labels = np.asarray(bunch.target).astype(str)
    classes, y = np.unique(labels, return_inverse=True)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part.npz")
    np.savez(
        tmp,
        x=np.asarray(bunch.data, dtype=np.float32),
        y=y.astype(np.int64).reshape(-1),
        classes=classes.astype(str),
        columns=np.asarray(bunch.feature_names, dtype=str),
    )
    os.replace(tmp, dest)
    write_sidecar(dest)
    return dest
