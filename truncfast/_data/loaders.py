"""Data from files and from scikit-learn's bundled sets, for the effective gradient flow.

``.npy`` / ``.npz`` / ``.csv`` with a label column (large ``.npy`` files
memory-mapped), and iris or digits reduced by PCA to a small M (needs the
``real`` extra).  Every problem is refused with the file, line and value.
"""

from __future__ import annotations

import os
import numpy as np

from truncfast import _config
from truncfast._errors import InputError

__all__ = ["load_file", "load_sklearn"]


def _relabel(raw: np.ndarray, what: str) -> tuple[np.ndarray, list[str]]:
    """Map arbitrary label values to 0..Q-1 (sorted order); returns the names too."""
    raw = np.asarray(raw)
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)):
            raise InputError(f"{what}: labels contain NaN or inf")
        if not np.all(raw == np.round(raw)):
            bad = np.flatnonzero(raw != np.round(raw))[0]
            raise InputError(f"{what}: labels must be integers, row {bad} has {raw[bad]!r}")
    values, labels = np.unique(raw, return_inverse=True)
    names = [str(v.item() if hasattr(v, "item") else v) for v in values]
    if raw.dtype.kind == "f":
        names = [str(int(float(v))) for v in values]
    return labels.astype(np.int64).reshape(-1), names


def _split_label_column(A: np.ndarray, label_column: int, what: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if A.ndim != 2 or A.shape[1] < 2:
        raise InputError(f"{what}: expected a 2-D table with at least one data column and a label column, got shape {A.shape}")
    ncol = A.shape[1]
    if not -ncol <= label_column < ncol:
        raise InputError(f"{what}: label column {label_column} is out of range for {ncol} columns")
    lc = label_column % ncol
    labels, names = _relabel(A[:, lc], what)
    keep = [c for c in range(ncol) if c != lc]
    X = np.empty((A.shape[0], ncol - 1))
    # copy in row chunks: a memmapped table is read once, never all at once
    for start in range(0, A.shape[0], _config.GEN_CHUNK_ROWS):
        X[start:start + _config.GEN_CHUNK_ROWS] = A[start:start + _config.GEN_CHUNK_ROWS][:, keep]
    return X, labels, names


def load_file(
    path: str | os.PathLike,
    *,
    label_column: int = -1,
    labels_path: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load data and labels from ``.npy``, ``.npz`` or ``.csv``.

    * ``.npy`` with ``labels_path`` (another ``.npy`` of N labels): X is returned
      memory-mapped read-only (``np.load(mmap_mode="r")``) — nothing is copied, so
      files larger than memory work.  Without ``labels_path`` the file is an
      (N, M+1) table; column ``label_column`` holds the labels and the other
      columns are copied (chunk by chunk from the memmap) into a contiguous array.
    * ``.npz``: arrays ``X`` and ``labels`` if present, else a single table as above.
    * ``.csv``: comma-separated numbers, an optional header line, labels in
      ``label_column``.

    Labels may be any integers (or strings in CSV); they are mapped to 0..Q-1 in
    sorted order and the original values returned as names.

    Returns ``(X, labels, names)``.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise InputError(f"path: no such file {p!r}")
    X, labels, names = _load_any(p, label_column, labels_path)
    _check_finite_rows(X, p)
    return X, labels, names


def _check_finite_rows(X: np.ndarray, p: str) -> None:
    """Name the first non-finite value of a loaded file (chunk by chunk: X may be a memmap)."""
    for start in range(0, X.shape[0], _config.GEN_CHUNK_ROWS):
        block = np.asarray(X[start:start + _config.GEN_CHUNK_ROWS])
        bad = ~np.isfinite(block)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise InputError(f"data file {p!r} contains {float(block[r, c])} (NaN or inf) at row {start + r}, "
                             f"data column {c}; every value must be finite")


def _load_any(p: str, label_column: int, labels_path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    ext = os.path.splitext(p)[1].lower()
    if ext == ".npy":
        A = np.load(p, mmap_mode="r")
        if labels_path is not None:
            lab = np.load(os.fspath(labels_path), mmap_mode="r")
            if A.ndim != 2:
                raise InputError(f"path: expected a 2-D array (N, M), got shape {A.shape}")
            if lab.shape != (A.shape[0],):
                raise InputError(f"labels_path: expected {A.shape[0]} labels, got shape {lab.shape}")
            labels, names = _relabel(np.asarray(lab), "labels_path")
            return A, labels, names
        return _split_label_column(A, label_column, "path")
    if ext == ".npz":
        with np.load(p) as z:
            if "X" in z.files and "labels" in z.files:
                X = np.asarray(z["X"], dtype=np.float64)
                if X.ndim != 2 or z["labels"].shape != (X.shape[0],):
                    raise InputError(f"path: X {X.shape} and labels {z['labels'].shape} do not match")
                labels, names = _relabel(z["labels"], "path")
                return X, labels, names
            if len(z.files) != 1:
                raise InputError(f"path: a .npz needs arrays 'X' and 'labels' (or one table), found {z.files}")
            return _split_label_column(np.asarray(z[z.files[0]]), label_column, "path")
    if ext in (".csv", ".txt"):
        return _load_csv(p, label_column)
    raise InputError(f"path: unsupported file type {ext!r} (use .npy, .npz or .csv)")


def _load_csv(p: str, label_column: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    with open(p, encoding="utf-8") as fh:
        first = fh.readline()
    cells = [c.strip() for c in first.split(",")]
    try:
        [float(c) for i, c in enumerate(cells) if i != label_column % max(len(cells), 1)]
        skip = 0
    except ValueError:
        skip = 1  # a header line
    raw = np.loadtxt(p, delimiter=",", skiprows=skip, dtype=str, ndmin=2)
    if raw.shape[1] < 2:
        raise InputError(f"path: expected at least one data column and a label column, got {raw.shape[1]} column(s)")
    ncol = raw.shape[1]
    if not -ncol <= label_column < ncol:
        raise InputError(f"path: label column {label_column} is out of range for {ncol} columns")
    lc = label_column % ncol
    keep = [c for c in range(ncol) if c != lc]
    try:
        X = raw[:, keep].astype(np.float64)
    except ValueError as exc:
        raise InputError(f"path: a data column is not numeric ({exc})") from None
    col = np.char.strip(raw[:, lc])
    try:
        col = col.astype(np.float64)
    except ValueError:
        pass  # string class names
    labels, names = _relabel(col, "path")
    return X, labels, names


def load_sklearn(name: str, dim: int = 2) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's bundled ``"iris"`` (150 × 4, 3 classes) or ``"digits"`` (1797 × 64, 10 classes).

    The data ship inside the scikit-learn wheel: no download.  Features are
    standardised and projected onto the first ``dim`` principal components, so
    the flow runs in a small input space R^dim.  Needs the optional extra
    ``pip install "truncfast[real]"``.
    """
    try:
        from sklearn import datasets
    except ImportError:
        raise InputError(
            f"data.source = {name!r} needs scikit-learn, which is not installed; "
            "install it with: pip install \"truncfast[real]\" (or pip install scikit-learn)"
        ) from None
    loaders = {"iris": datasets.load_iris, "digits": datasets.load_digits}
    if name not in loaders:
        raise InputError(f"source: unknown scikit-learn data set {name!r}; choose 'iris' or 'digits'")
    bunch = loaders[name]()
    A = np.asarray(bunch.data, dtype=np.float64)
    if not 1 <= dim <= A.shape[1]:
        raise InputError(f"dim: {name} has {A.shape[1]} features, cannot reduce to {dim}")
    A = A - A.mean(axis=0)
    sd = A.std(axis=0)
    A = A / np.where(sd > 0, sd, 1.0)
    # PCA by SVD; fix the signs (largest loading positive) so the result is reproducible
    _, _, Vt = np.linalg.svd(A, full_matrices=False)
    comps = Vt[:dim]
    comps = comps * np.sign(comps[np.arange(dim), np.abs(comps).argmax(axis=1)])[:, None]
    X = np.ascontiguousarray(A @ comps.T)
    names = [str(t) for t in getattr(bunch, "target_names", np.unique(bunch.target))]
    return X, np.asarray(bunch.target, dtype=np.int64), names


# --------------------------------------------------------------------------- problems
