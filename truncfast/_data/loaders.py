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
            bad = int(np.flatnonzero(~np.isfinite(raw))[0])
            raise InputError(f"{what}: labels must be integers, row {bad} has {float(raw[bad])!r}")
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
    if not os.path.isfile(p):
        raise InputError(f"path: {p!r} is not a file")
    X, labels, names = _load_any(p, label_column, labels_path)
    _check_finite_rows(X, p)  # (a CSV was checked line by line already, naming the line)
    return X, labels, names


def _load_npy(p: str, what: str, mmap: bool = True) -> np.ndarray:
    """``np.load`` of a .npy file, refusing anything but a plain numeric array with a clear message."""
    try:  # the header first: a text file named .npy, or an object (pickled) array, is refused by name
        with open(p, "rb") as fh:
            magic = fh.read(6)
            if magic != b"\x93NUMPY":
                raise InputError(f"{what}: {p!r} is not a NumPy .npy file (it starts with {magic!r}, not the "
                                 "\\x93NUMPY signature)")
            fh.seek(0)
            major, _ = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            _, _, dtype = read(fh, max_header_size=1 << 20)
    except InputError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{what}: cannot read {p!r} as a NumPy .npy file ({type(exc).__name__}: {exc})") from None
    if dtype.hasobject:
        raise InputError(f"{what}: {p!r} holds Python objects (pickled, dtype {dtype}), which truncfast never "
                         "loads; save plain numbers (numpy.save of a float or int array)")
    try:
        A = np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{what}: cannot read {p!r} as a NumPy .npy file ({type(exc).__name__}: {exc})") from None
    if not isinstance(A, np.ndarray) or A.dtype.kind not in "fiub":
        raise InputError(f"{what}: {p!r} holds an array of dtype {getattr(A, 'dtype', type(A).__name__)}; "
                         "expected numbers")
    return A


def _check_finite_rows(X: np.ndarray, p: str) -> None:
    """Name the first non-finite value of a loaded file (chunk by chunk: X may be a memmap)."""
    for start in range(0, X.shape[0], _config.GEN_CHUNK_ROWS):
        block = np.asarray(X[start:start + _config.GEN_CHUNK_ROWS])
        bad = ~np.isfinite(block)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise InputError(f"path: data file {p!r} contains {float(block[r, c])} (NaN or inf) at row {start + r}, "
                             f"data column {c}; every value must be finite")


def _load_any(p: str, label_column: int, labels_path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    ext = os.path.splitext(p)[1].lower()
    if ext == ".npy":
        A = _load_npy(p, "path")
        if labels_path is not None:
            lab = _load_npy(os.fspath(labels_path), "labels_path")
            if A.ndim != 2:
                raise InputError(f"path: expected a 2-D array (N, M), got shape {A.shape}")
            if lab.shape != (A.shape[0],):
                raise InputError(f"labels_path: expected {A.shape[0]} labels, got shape {lab.shape}")
            labels, names = _relabel(np.asarray(lab), "labels_path")
            return A, labels, names
        return _split_label_column(A, label_column, "path")
    if ext == ".npz":
        try:
            z = np.load(p, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign zip raises many types
            raise InputError(f"path: cannot read {p!r} as a NumPy .npz file ({type(exc).__name__}: {exc})") from None
        if not hasattr(z, "files"):
            raise InputError(f"path: {p!r} is a .npy file named .npz; rename it")
        with z:
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
    """A comma-separated table, checked line by line: every problem names the file, the line
    and the value (a wrong number of columns, a non-numeric data cell, NaN or inf, an empty
    label, a text label among numeric ones, a non-integer numeric label)."""
    try:
        with open(p, encoding="utf-8-sig") as fh:  # a byte-order mark must not read as a header cell
            lines = fh.read().splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"path: {p!r} is not a UTF-8 text file ({exc.reason} at byte {exc.start})") from None
    rows = [(n, [c.strip() for c in line.split(",")]) for n, line in enumerate(lines, start=1) if line.strip()]
    if not rows:
        raise InputError(f"path: {p!r} holds no data")
    ncol = len(rows[0][1])
    if ncol < 2:
        raise InputError(f"path: {p!r} line {rows[0][0]}: expected at least one data column and a label "
                         f"column, got {ncol} column(s)")
    if not -ncol <= label_column < ncol:
        raise InputError(f"path: label column {label_column} is out of range for the {ncol} columns of {p!r}")
    lc = label_column % ncol
    keep = [c for c in range(ncol) if c != lc]

    def numeric(cells):
        try:
            [float(cells[c]) for c in keep]
            return True
        except ValueError:
            return False

    if not numeric(rows[0][1]):
        rows = rows[1:]  # a header line
    if not rows:
        raise InputError(f"path: {p!r} holds a header line but no data")
    X = np.empty((len(rows), ncol - 1))
    raw = []
    for r, (n, cells) in enumerate(rows):
        if len(cells) != ncol:
            raise InputError(f"path: {p!r} line {n} has {len(cells)} column(s), expected {ncol} "
                             f"(as on line {rows[0][0]})")
        for j, c in enumerate(keep):
            try:
                X[r, j] = float(cells[c])
            except ValueError:
                raise InputError(f"path: {p!r} line {n}, column {c + 1}: {cells[c]!r} is not a number") from None
        if cells[lc] == "":
            raise InputError(f"path: {p!r} line {n}: the label (column {lc + 1}) is empty")
        raw.append(cells[lc])
    for r, (n, _) in enumerate(rows):
        if not np.all(np.isfinite(X[r])):
            c = int(np.flatnonzero(~np.isfinite(X[r]))[0])
            raise InputError(f"path: data file {p!r} contains {X[r, c]} (NaN or inf) at line {n}, data column "
                             f"{c}; every value must be finite")
    return (X, *_csv_labels(p, rows, raw))


def _csv_labels(p: str, rows, raw: list[str]) -> tuple[np.ndarray, list[str]]:
    """Labels of a CSV: all numbers (integers, mapped to 0..Q−1 in numeric order) or all
    class names (mapped in sorted order).  A text label among numbers — a stray ``café``
    among 0/1 — or a fractional one is refused, naming its line."""
    nums = []
    for v in raw:
        try:
            nums.append(float(v))
        except ValueError:
            nums.append(None)
    is_num = [x is not None for x in nums]
    if any(is_num) and not all(is_num):
        text = is_num.count(False) < is_num.count(True)  # the minority is the stray one
        r = is_num.index(not text)
        kind = "text" if text else "a number"
        raise InputError(f"path: {p!r} line {rows[r][0]}: label {raw[r]!r} is {kind} while the other labels are "
                         f"{'numbers' if text else 'text'}; every label must be of one kind")
    if all(is_num):
        arr = np.array(nums, dtype=np.float64)
        for r, x in enumerate(arr):
            if not np.isfinite(x) or x != np.round(x):
                raise InputError(f"path: {p!r} line {rows[r][0]}: label {raw[r]!r} is not an integer")
        return _relabel(arr, "path")
    return _relabel(np.array(raw), "path")


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
