"""Where dataset files are looked for, in order (DESIGN.md, "Data resolution"):

1. an explicit `path` (a file or a folder): only there;
2. the `data_dir` argument (`--data-dir`), then each folder in $QAPRUNE_DATA (os.pathsep-separated);
3. system locations where packages put datasets (/usr/share/datasets, e.g. Debian's
   dataset-fashion-mnist, /usr/local/share/datasets, <sys.prefix>/share/datasets);
4. the user cache: $QAPRUNE_CACHE, else $XDG_CACHE_HOME/qaprune, else ~/.cache/qaprune;
   a dataset that can be downloaded is fetched there (SHA-256 checked) unless $QAPRUNE_OFFLINE=1;
5. else `DataNotFoundError`, listing every folder looked in and how to get the data.

Inside each folder a dataset sits in one of its sub-folders (`mnist/`, ...) or directly in it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qaprune.data.download import DownloadError, downloads_allowed
from qaprune.errors import DataNotFoundError

ENV_DATA = "QAPRUNE_DATA"
ENV_CACHE = "QAPRUNE_CACHE"
SYSTEM_DIRS: tuple[str, ...] = ("/usr/share/datasets", "/usr/local/share/datasets")

Alternative = tuple[str, ...]  # file names that must all be present
Group = tuple[Alternative, ...]  # alternatives, the first present one wins


@dataclass(frozen=True)
class Layout:
    """How one dataset's files are named and where they sit inside a data folder.

    subdirs: sub-folders tried in each data folder, in order; with `flat`, the folder itself too
    (off for MNIST / Fashion-MNIST, whose file names are the same: no silent mix-up). groups: each
    group is one needed part (e.g. the training set); its alternatives are tried
    in order (full IDX files before the 10k npz subset). howto: how a user gets the files.
    """

    name: str
    subdirs: tuple[str, ...]
    groups: tuple[Group, ...]
    howto: str
    flat: bool = True  # files may also sit directly in a data folder (an explicit path: always)


@dataclass(frozen=True)
class Found:
    """The folder a dataset was found in, one tuple of paths per layout group, and why there."""

    folder: Path
    files: tuple[tuple[Path, ...], ...]
    where: str


def cache_dir() -> Path:
    """The user cache: $QAPRUNE_CACHE, else $XDG_CACHE_HOME/qaprune, else ~/.cache/qaprune."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "qaprune"


def system_dirs() -> list[Path]:
    """Folders where system packages install datasets, in the order they are searched."""
    dirs = [Path(d) for d in SYSTEM_DIRS] + [Path(sys.prefix) / "share" / "datasets"]
    return list(dict.fromkeys(dirs))


def search_roots(*, data_dir: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """(folder, why) pairs in resolution order, without an explicit path: data_dir argument,
    $QAPRUNE_DATA, system locations, user cache."""
    roots: list[tuple[Path, str]] = []
    if data_dir:
        roots.append((Path(data_dir).expanduser(), "data_dir argument"))
    for part in os.environ.get(ENV_DATA, "").split(os.pathsep):
        if part.strip():
            roots.append((Path(part.strip()).expanduser(), f"${ENV_DATA}"))
    roots += [(d, "system location") for d in system_dirs()]
    roots.append((cache_dir(), "user cache"))
    return roots


def explicit_path(path: str | os.PathLike, *, dataset: str) -> Path:
    """An explicit file or folder; DataNotFoundError when it does not exist."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataNotFoundError(f"dataset {dataset!r}: path {p} does not exist")
    return p


def match_folder(folder: Path, layout: Layout) -> tuple[tuple[tuple[Path, ...], ...] | None, str]:
    """The chosen files per group when `folder` holds the dataset, else (None, what is missing)."""
    if not folder.is_dir():
        return None, "no such folder"
    chosen, missing = [], []
    for group in layout.groups:
        alt = next((a for a in group if all((folder / f).is_file() for f in a)), None)
        if alt is None:
            others = f" (or one of {len(group) - 1} other names)" if len(group) > 1 else ""
            missing.append(" + ".join(group[0]) + others)
        else:
            chosen.append(tuple(folder / f for f in alt))
    if missing:
        return None, "missing " + "; ".join(missing)
    return tuple(chosen), ""


def find_dataset(
    layout: Layout,
    *,
    path: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    fetch: Callable[[Path], None] | None = None,
) -> Found:
    """Find a dataset's files (order in the module docstring). `fetch(folder)` downloads them
    into the cache folder given; it runs only when every other place failed."""
    subdirs = layout.subdirs + (("",) if layout.flat or path is not None else ())
    if path is not None:
        p = explicit_path(path, dataset=layout.name)
        roots = [(p if p.is_dir() else p.parent, "path argument")]
    else:
        roots = search_roots(data_dir=data_dir)
    looked: list[str] = []
    for root, why in roots:
        if not root.is_dir():
            looked.append(f"{root} ({why}): no such folder")
            continue
        for sub in subdirs:
            folder = root / sub if sub else root
            files, missing = match_folder(folder, layout)
            if files is not None:
                return Found(folder=folder, files=files, where=why)
            looked.append(f"{folder} ({why}): {missing}")
    note = "not tried (an explicit path was given)" if path is not None else _try_fetch(layout, fetch)
    if isinstance(note, Found):
        return note
    raise DataNotFoundError(not_found_message(layout, looked, note))


def _try_fetch(layout: Layout, fetch: Callable[[Path], None] | None) -> Found | str:
    if fetch is None:
        return "not available for this dataset"
    if not downloads_allowed():
        return "skipped ($QAPRUNE_OFFLINE is set)"
    folder = cache_dir() / layout.subdirs[0]
    try:
        fetch(folder)
    except DownloadError as exc:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # leave no empty folder behind
        return f"failed: {exc}"
    files, missing = match_folder(folder, layout)
    if files is None:
        return f"finished but {folder} is still {missing}"
    return Found(folder=folder, files=files, where="downloaded to the user cache")


def not_found_message(layout: Layout, looked: list[str], download: str) -> str:
    """The DataNotFoundError text: every folder looked in, the download outcome, how to get it."""
    lines = [f"dataset {layout.name!r} not found. Looked in, in this order:"]
    lines += [f"  {entry}" for entry in looked]
    lines.append(f"Download into the user cache: {download}.")
    lines.append(f"How to get it: {layout.howto}")
    lines.append(
        f"Then pass data_dir=DIR (CLI: --data-dir DIR) or set {ENV_DATA}=DIR, with the files in "
        f"DIR/{layout.subdirs[0]}/"
        + (" or directly in DIR" if layout.flat else "")
        + "; or pass path= to a file or folder."
    )
    return "\n".join(lines)
