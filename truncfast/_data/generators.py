"""Synthetic data for the effective gradient flow: clusters, frames, the paper's scenario, whole problems.

Everything here produces the inputs of :func:`truncfast.integrate` — data ``X``
(N, M), ``labels`` (N,), ``targets`` (Q, M) and an initial state ``(R, b)`` —
in the paper's setting (docs/theory.md §§3, 6, 7):

* :func:`make_clusters` — Q well-separated Gaussian clusters in R^M, 10² to 10⁷
  points, generated chunk by chunk (float64, seeded, bitwise deterministic and
  independent of memory limits), optionally straight into a ``.npy`` memmap;
* :func:`paper_2d` — the two-cluster scenario of docs/theory.md §7 (frames R = (I, −I));
* files and scikit-learn's data sets through ``loaders``;
* :func:`make_problem` — all of the above plus targets pulled back through an
  output layer (:func:`truncfast.pullback_targets`) and an initial state whose
  truncations are cluster-separated where the geometry allows it.
"""

from __future__ import annotations

import math
import operator
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from truncfast import _config
from truncfast._errors import InputError
from truncfast._data.loaders import load_file, load_sklearn
from truncfast._flow.model import pullback_targets

__all__ = [
    "Problem",
    "make_clusters",
    "simplex_vertices",
    "separated_frames",
    "toward_frames",
    "paper_2d",
    "make_problem",
    "subsample",
]

#: Rows per generation chunk (``_config.GEN_CHUNK_ROWS``).
GEN_CHUNK = _config.GEN_CHUNK_ROWS


@dataclass
class Problem:
    """One simulation's inputs (shapes as in docs/api.md).

    ``centres`` are the cluster centres (synthetic data) or class centroids;
    ``W_out``, ``b_out``, ``Y`` the output layer and labels that ``targets`` were
    pulled back from; ``projection`` maps input space to the plane used by the
    figures (``(mean (M,), components (2, M))``, identity part for M = 2).
    """

    X: np.ndarray
    labels: np.ndarray
    targets: np.ndarray
    R0: np.ndarray
    b0: np.ndarray
    centres: np.ndarray
    W_out: np.ndarray
    b_out: np.ndarray
    Y: np.ndarray
    name: str = "data"
    class_names: list[str] = field(default_factory=list)
    description: str = ""
    #: names of the input coordinates for figures (e.g. principal components); [] = x_1, x_2, ...
    axis_names: list[str] = field(default_factory=list)

    @property
    def N(self) -> int:
        return int(self.X.shape[0])

    @property
    def M(self) -> int:
        return int(self.X.shape[1])

    @property
    def L(self) -> int:
        return int(self.R0.shape[0])

    @property
    def Q(self) -> int:
        return int(self.targets.shape[0])

    def cluster_sizes(self) -> np.ndarray:
        """Points per cluster, (Q,) int64."""
        return np.bincount(self.labels, minlength=self.Q).astype(np.int64)


# --------------------------------------------------------------------------- geometry


def simplex_vertices(count: int, dim: int, edge: float) -> np.ndarray:
    """The ``count`` vertices of a regular ``dim``-simplex with edge length ``edge``.

    Needs ``count ≤ dim + 1``.  Built from the standard basis of R^{dim+1}
    centred and expressed in an orthonormal basis of the hyperplane Σx = 0;
    the first vertex is moved to the origin.
    """
    if count > dim + 1:
        raise InputError(f"clusters: a regular simplex in R^{dim} has at most {dim + 1} vertices, asked for {count}")
    E = np.eye(dim + 1) - 1.0 / (dim + 1)
    # orthonormal basis of {Σx = 0}: the first dim left-singular vectors of the centring matrix
    U, _, _ = np.linalg.svd(E)
    V = E @ U[:, :dim]  # (dim+1, dim): all vertices, edge √2
    V = V * (edge / np.sqrt(2.0))
    V = V - V[0]
    return V[:count].copy()


def _lowdin_frame(directions: np.ndarray) -> np.ndarray:
    """Orthogonal R whose orthant {R z ≥ 0} holds every row of ``directions`` strictly inside.

    ``directions`` is (M, M) with linearly independent unit rows u_k whose Gram
    matrix G has positive entries.  The symmetric (Löwdin) orthonormalisation
    E = G^{-1/2} U gives u_k = Σ_i (G^{1/2})_{ki} e_i, and G^{1/2} has positive
    entries for the Gram matrix of a regular simplex, so every u_k has positive
    coordinates in the frame E.
    """
    G = directions @ directions.T
    w, V = np.linalg.eigh(G)
    return (V @ np.diag(w ** -0.5) @ V.T) @ directions


def separated_frames(vertices: np.ndarray, Q: int) -> np.ndarray:
    """Frames R_j (Q, M, M) for clusters at the first Q of M+1 regular-simplex ``vertices``.

    Layer j's cone ``{R_j z + b_j ≥ 0}`` with apex at vertex j contains every other
    vertex strictly inside (the directions to the M other vertices of the full
    simplex, completed by phantom vertices when Q < M + 1, have pairwise angles of
    60°, so :func:`_lowdin_frame` applies): the truncations are cluster-separated
    (docs/theory.md §6, Def. 3.1).
    """
    V = np.asarray(vertices, dtype=np.float64)
    M = V.shape[1]
    if V.shape[0] != M + 1:
        raise InputError(f"vertices: expected the {M + 1} vertices of a simplex in R^{M}, got {V.shape[0]}")
    R = np.empty((Q, M, M))
    for j in range(Q):
        others = np.delete(V, j, axis=0) - V[j]
        others = others / np.max(np.abs(others), axis=1, keepdims=True)  # scaled first: the norm cannot underflow
        U = others / np.linalg.norm(others, axis=1, keepdims=True)
        R[j] = _lowdin_frame(U)
    return R


def toward_frames(centres: np.ndarray, L: int | None = None) -> np.ndarray:
    """Frames whose orthant diagonal points from centre j to the mean of the other centres.

    A Householder reflection maps the diagonal 1/√M to that direction, so the
    cone of layer j opens towards the other clusters.  This does not guarantee
    cluster-separated truncations (use :func:`separated_frames` for that); the
    general form of the flow does not need them.  Layer ℓ uses centre ℓ mod Q.
    """
    C = np.asarray(centres, dtype=np.float64)
    Q, M = C.shape
    L = Q if L is None else L
    ones = np.ones(M) / np.sqrt(M)
    R = np.empty((L, M, M))
    for l in range(L):
        j = l % Q
        d = (C.mean(axis=0) * Q - C[j]) / max(Q - 1, 1) - C[j] if Q > 1 else ones
        big = np.max(np.abs(d))
        d = d / big if big > 0 else d  # scaled first: the norm cannot underflow or overflow
        nd = np.linalg.norm(d)
        d = ones if nd == 0 else d / nd
        v = ones - d
        nv = np.linalg.norm(v)
        if nv < 1e-12:
            R[l] = np.eye(M)
        else:
            v = v / nv
            R[l] = np.eye(M) - 2.0 * np.outer(v, v)  # symmetric: maps 1/√M ↔ d
    return R


# --------------------------------------------------------------------------- synthetic data


def _cluster_sizes(n: int, Q: int, weights: Any = None) -> np.ndarray:
    if weights is None:
        w = np.ones(Q)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (Q,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise InputError(f"weights: expected {Q} positive numbers, got {weights!r}")
    w = w / w.sum()
    sizes = np.floor(w * n).astype(np.int64)
    # hand out the remainder to the largest fractional parts, ties to the lower index
    rest = n - sizes.sum()
    order = np.argsort(-(w * n - sizes), kind="stable")
    sizes[order[:rest]] += 1
    if np.any(sizes == 0):
        raise InputError(f"n: {n} points leave cluster(s) {np.flatnonzero(sizes == 0).tolist()} empty")
    return sizes


def make_clusters(
    n: int,
    centres: Any,
    *,
    spread: float = 0.1,
    weights: Any = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters around ``centres`` (Q, M): ``n`` points, float64, deterministic.

    Cluster j gets ``≈ n·weights_j`` points (equal weights by default), stored as a
    contiguous block of rows; each coordinate is ``centre + spread·N(0, 1)``.
    Rows are generated in chunks of :data:`GEN_CHUNK` with one generator per
    chunk, so a 10⁷-point set never needs more than one chunk of scratch and the
    values depend only on ``seed``.  With ``out`` (a ``.npy`` path) the data are
    written into a memory-mapped file, which is returned opened read-only.

    Returns ``(X (n, M), labels (n,) int64)``.
    """
    C = np.asarray(centres, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] < 1 or C.shape[1] < 1:
        raise InputError(f"centres: expected shape (Q, M), got {C.shape}")
    if not (isinstance(n, (int, np.integer)) and n >= C.shape[0]):
        raise InputError(f"n: expected an integer ≥ the number of clusters ({C.shape[0]}), got {n!r}")
    if not (np.isfinite(spread) and spread >= 0):
        raise InputError(f"spread: expected a non-negative number, got {spread!r}")
    Q, M = C.shape
    sizes = _cluster_sizes(int(n), Q, weights)
    labels = np.repeat(np.arange(Q, dtype=np.int64), sizes)
    if out is not None:
        out = os.fspath(out)
        tmp = out + f".{os.getpid()}.tmp.npy"
        X = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float64, shape=(int(n), M))
    else:
        X = np.empty((int(n), M))
    root = np.random.SeedSequence(int(seed))
    for c, start in enumerate(range(0, int(n), GEN_CHUNK)):
        stop = min(start + GEN_CHUNK, int(n))
        rng = np.random.default_rng(np.random.SeedSequence(entropy=root.entropy, spawn_key=(c,)))
        block = rng.standard_normal((stop - start, M))
        block *= spread
        block += C[labels[start:stop]]
        X[start:stop] = block
    if out is not None:
        X.flush()
        del X
        os.replace(tmp, out)
        X = np.load(out, mmap_mode="r")
    return X, labels


def paper_2d(n_per_cluster: int = 100, spread: float = 0.1, seed: int = 0) -> tuple[np.ndarray, ...]:
    """The two-cluster scenario of docs/theory.md §7 (Prop. 4.2 in the plane).

    Centres (0, 0) and (10, 10), frames R = (I, −I), biases b = ((0, 0), (10, 10)),
    pulled-back targets ỹ = ((2, 2), (8, 8)).  Layer 1's cone {z ≥ 0} has its apex
    in cluster 1 and contains cluster 2; layer 2's cone {z ≤ 10} has its apex in
    cluster 2 and contains cluster 1: the truncations are cluster-separated.

    Returns ``(X, labels, centres, R0, b0, targets)``.
    """
    centres = np.array([[0.0, 0.0], [10.0, 10.0]])
    X, labels = make_clusters(2 * n_per_cluster, centres, spread=spread, seed=seed)
    R0 = np.stack([np.eye(2), -np.eye(2)])
    b0 = np.array([[0.0, 0.0], [10.0, 10.0]])
    targets = np.array([[2.0, 2.0], [8.0, 8.0]])
    return X, labels, centres, R0, b0, targets


def subsample(labels: np.ndarray, per_cluster: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices of at most ``per_cluster`` points of every cluster (deterministic).

    Used by the figures: τ^(L) of a few thousand points shows the geometry as
    well as that of 10⁷, and fancy-indexing a memmap reads only those rows.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picks = []
    for j in np.unique(labels):
        idx = np.flatnonzero(labels == j)
        if idx.size > per_cluster:
            idx = np.sort(rng.choice(idx, per_cluster, replace=False))
        picks.append(idx)
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


# --------------------------------------------------------------------------- loaders


def _random_rotations(L: int, M: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Q, Rr = np.linalg.qr(rng.standard_normal((L, M, M)))
    return Q * np.sign(np.einsum("lii->li", Rr))[:, None, :]


def _output_layer(targets: np.ndarray, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An output layer (W_out, b_out) and labels Y = W_out ỹ_j + b_out (Q, M).

    ``"identity"``: W_out = I, b_out = 0.  ``"random"``: a seeded well-conditioned
    W_out (singular values in [0.5, 2]) and b_out.  Either way
    :func:`truncfast.pullback_targets` returns the targets (to rounding).
    """
    Q, M = targets.shape
    if kind == "identity":
        W, bo = np.eye(M), np.zeros(M)
    elif kind == "random":
        rng = np.random.default_rng(seed + 7919)
        U = _random_rotations(1, M, seed + 1)[0]
        V = _random_rotations(1, M, seed + 2)[0]
        W = U @ np.diag(rng.uniform(0.5, 2.0, M)) @ V
        bo = rng.standard_normal(M)
    else:
        raise InputError(f"output: unknown output layer {kind!r}; choose 'identity' or 'random'")
    Y = targets @ W.T + bo
    return W, bo, Y


def _int_arg(name: str, value: Any, low: int | None) -> int:
    """An integer argument (NumPy integers too; bools, floats and strings refused), ≥ ``low``."""
    try:
        v = None if isinstance(value, (bool, np.bool_)) else operator.index(value)
    except TypeError:
        v = None
    if v is None or (low is not None and v < low):
        need = "an integer" if low is None else f"an integer ≥ {low}"
        raise InputError(f"{name}: expected {need}, got {value!r} ({type(value).__name__})")
    return int(v)


def _real_arg(name: str, value: Any, low: float | None, strict: bool) -> float:
    """A finite real argument, > ``low`` (``strict``) or ≥ ``low``."""
    ok = not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.integer, np.floating))
    v = float(value) if ok else math.nan
    if not math.isfinite(v) or (low is not None and (v <= low if strict else v < low)):
        need = "a finite number" if low is None else f"a finite number {'>' if strict else '≥'} {low:g}"
        raise InputError(f"{name}: expected {need}, got {value!r}")
    return v


def make_problem(
    source: str = "paper-2d",
    *,
    n: int = 200,
    dim: int = 2,
    clusters: int = 2,
    spread: float = 0.1,
    separation: float = 10.0,
    weights: Any = None,
    seed: int = 0,
    path: str | None = None,
    label_column: int = -1,
    labels_path: str | None = None,
    layers: int = 0,
    init: str = "auto",
    target_shift: float = 2.0,
    output: str = "identity",
    data_file: str | None = None,
) -> Problem:
    """Build a complete :class:`Problem` (data, targets, initial state).

    ``source``: ``"paper-2d"`` (docs/theory.md §7, fixed geometry, ``n`` points in total),
    ``"clusters"`` (``clusters`` Gaussian clusters of std ``spread`` in R^``dim``,
    centres ``separation`` apart), ``"iris"`` / ``"digits"`` (scikit-learn, PCA to
    ``dim``), ``"file"`` (:func:`load_file`).

    Targets: ``ỹ_j = c_j + target_shift · R_jᵀ 1`` — a point beyond cluster j along
    the diagonal of its layer's cone, where the collapse of Prop. 4.2 moves the
    cluster — labelled through an output layer (``output``) and pulled back with
    :func:`truncfast.pullback_targets`.

    ``init``: ``"auto"`` (cluster-separated frames where the geometry gives them:
    the paper's R = (I, −I), or simplex frames for ``clusters`` with Q ≤ dim + 1;
    otherwise ``"toward"``), ``"separated"`` (insist on them), ``"toward"``
    (:func:`toward_frames`) or ``"random"`` (seeded random rotations).  In every
    case layer ℓ's apex sits at the centre of cluster ℓ mod Q, so that cluster is
    partially truncated and the flow has something to do; a layer that repeats a
    cluster (ℓ ≥ Q) has its apex moved back along its cone's axis by
    ``_config.REPEAT_APEX_SHIFT · separation · (ℓ // Q)``, so that no point sits on a
    sector boundary of the initial state (docs/guarantees.md: the precondition of
    backend agreement).  ``layers = 0`` means L = Q.
    Real data (iris, digits, files) are rescaled so their class centroids are on
    average ``separation`` apart, which makes ``target_shift`` mean the same thing
    as for synthetic clusters.
    """
    n, dim, clusters, seed, layers, label_column = (
        _int_arg("n", n, 1), _int_arg("dim", dim, 1), _int_arg("clusters", clusters, 1), _int_arg("seed", seed, 0),
        _int_arg("layers", layers, 0), _int_arg("label_column", label_column, None))
    spread, separation = _real_arg("spread", spread, 0.0, False), _real_arg("separation", separation, 0.0, True)
    target_shift = _real_arg("target_shift", target_shift, None, False)
    for name, v in (("separation", separation), ("spread", spread), ("target_shift", target_shift)):
        if abs(v) > _config.GENERATOR_MAX_SCALE:  # the flow's squared distances would overflow float64
            raise InputError(f"{name}: {v:g} is too large; keep it at most {_config.GENERATOR_MAX_SCALE:g} in "
                             "magnitude (the losses are squares of distances and must stay finite)")
    names: list[str] = []
    description = ""
    if source == "paper-2d":
        if n < 2 or n % 2:
            raise InputError(f"n: the paper-2d scenario needs an even number of points ≥ 2, got {n}")
        X, labels, centres, R0, b0, targets = paper_2d(n // 2, spread=spread, seed=seed)
        if layers not in (0, 2):
            raise InputError(f"layers: the paper-2d scenario has L = 2 layers, got {layers}")
        if init not in ("auto", "separated"):
            raise InputError(f"init: the paper-2d scenario uses its own frames R = (I, −I), got init = {init!r}")
        W, bo, Y = _output_layer(targets, output, seed)
        targets = pullback_targets(W, bo, Y)
        return Problem(X, labels, targets, R0, b0, centres, W, bo, Y, "paper-2d", ["cluster 1", "cluster 2"],
                       "two clusters in the plane with opposite frames R = (I, −I) (docs/theory.md §7)")
    if source == "clusters":
        Q, M = clusters, dim
        if Q < 1 or M < 1:
            raise InputError(f"clusters: need at least one cluster and dimension, got Q = {Q}, M = {M}")
        simplex = Q <= M + 1
        if init == "separated" and not simplex:
            raise InputError(f"init: cluster-separated frames need clusters ≤ dim + 1, got {Q} clusters in R^{M}")
        if simplex:
            full = simplex_vertices(M + 1, M, separation)
            centres = full[:Q]
        else:
            rng = np.random.default_rng(seed + 104729)
            # random centres on a cube of side ~separation·Q^(1/M); spread ≪ separation keeps them apart
            centres = rng.uniform(0, separation * max(1.0, Q ** (1.0 / M)), size=(Q, M))
        X, labels = make_clusters(n, centres, spread=spread, weights=weights, seed=seed, out=data_file)
        names = [f"cluster {j + 1}" for j in range(Q)]
        description = f"{Q} Gaussian clusters (std {spread:g}) in R^{M}, centres {separation:g} apart"
    elif source in ("iris", "digits", "file"):
        if source == "file":
            if not path:
                raise InputError("path: data.source = 'file' needs data.path")
            X, labels, names = load_file(path, label_column=label_column, labels_path=labels_path)
            description = f"data from {os.path.basename(path)}"
        else:
            X, labels, names = load_sklearn(source, dim)
            description = f"scikit-learn {source}, standardised, PCA to {dim} dimensions"
        Q = int(labels.max()) + 1
        M = X.shape[1]
        centres = np.stack([np.asarray(X[labels == j]).mean(axis=0) for j in range(Q)])
        if Q > 1 and not isinstance(X, np.memmap):
            gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)[np.triu_indices(Q, 1)].mean()
            if gaps > 0:
                scale = separation / gaps
                X = X * scale
                centres = centres * scale
        if init == "separated":
            raise InputError(f"init: 'separated' frames exist only for synthetic sources, not {source!r}")
    else:
        raise InputError(f"source: unknown data source {source!r}")

    L = Q if layers == 0 else layers
    if init in ("auto", "separated") and source == "clusters" and Q <= M + 1:
        if L != Q:
            raise InputError(f"layers: cluster-separated frames need one layer per cluster (L = {Q}), got {L}")
        R0 = separated_frames(simplex_vertices(M + 1, M, 1.0), Q)  # frames are scale-free: no under/overflow
    elif init in ("auto", "toward"):
        R0 = toward_frames(centres, L)
    elif init == "random":
        R0 = _random_rotations(L, M, seed + 31)
    else:
        raise InputError(f"init: unknown initialisation {init!r}; choose 'auto', 'separated', 'toward' or 'random'")
    own = np.arange(L) % Q
    b0 = -np.einsum("lij,lj->li", R0, centres[own])  # apex of layer ℓ at its cluster's centre
    # A layer that repeats a cluster (ℓ ≥ Q) must not repeat its apex: points an earlier layer
    # projected onto its boundary (or apex) would lie exactly on the later boundary, where H(0)
    # is decided by rounding and backends may disagree.  Moving the apex back along the cone's
    # axis by s·R_ℓᵀ1 adds s to every pre-activation: those points are then inside by s.
    b0 += (_config.REPEAT_APEX_SHIFT * separation / np.sqrt(M) * (np.arange(L) // Q))[:, None]
    firsts = [int(np.flatnonzero(own == j)[0]) if np.any(own == j) else 0 for j in range(Q)]
    t = centres + target_shift * np.einsum("qij,i->qj", R0[firsts], np.ones(M))
    W, bo, Y = _output_layer(t, output, seed)
    targets = pullback_targets(W, bo, Y)
    axes = [f"principal component {i + 1}" for i in range(M)] if source in ("iris", "digits") else []
    return Problem(X, labels, targets, R0, b0, centres, W, bo, Y, source, names, description, axes)
