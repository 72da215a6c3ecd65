"""The paper's diagnostics as functions: sector moments (Def. 3.4) and the hypotheses of Prop. 4.2 (docs/theory.md §§6, 7).

:func:`sector_moments` groups the points reaching a layer by (cluster, sector
code) — codes from the backend's kernels — and returns each group's mass, mean
and centred second moment.  :func:`check_prop42` evaluates, for every cluster
at its own layer, truncfast's operational reading of the hypotheses of
Prop. 4.2 [4.10, 4.14–4.17] (the formulas are missing from our text of the
paper, docs/theory.md §7 states the reading), the bound of the type of [4.30]
on the collapse time, and, given a trajectory, the measured collapse time and
the hypotheses along the recorded states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from truncfast import _config
from truncfast._arrays import as_host_array
from truncfast._errors import InputError
from truncfast._flow.exact import solve_bias_component
from truncfast._flow.problem import euclid_args, state_and_data

__all__ = ["SectorMoments", "sector_moments", "Prop42Check", "check_prop42"]


@dataclass(eq=False)
class SectorMoments:
    """Moments of every cluster in every occupied sector S_I at one layer (Def. 3.4, docs/theory.md §6).

    One row per occupied (cluster, sector) pair, sorted by cluster then code:
    ``cluster`` (K,), ``code`` (K,) uint64 (bit i = h_i, as :func:`truncfast.sector_codes`),
    ``count`` (K,), ``mass`` (K,) = count / N_j (the share of cluster j in S_I),
    ``mean`` (K, M) and ``second`` (K, M, M) = (1/count) Σ (v − mean)(v − mean)ᵀ of
    the points' coordinates ``v``: ``R_ℓ z`` in the layer's frame (``frame="layer"``)
    or ``z`` itself (``frame="input"``), z = τ^(ℓ)(x) the point reaching layer ℓ.
    ``cluster_sizes`` (Q,) are the N_j.
    """

    layer: int
    frame: str
    cluster: np.ndarray
    code: np.ndarray
    count: np.ndarray
    mass: np.ndarray
    mean: np.ndarray
    second: np.ndarray
    cluster_sizes: np.ndarray

    def rows(self, j: int) -> np.ndarray:
        """Indices of the rows of cluster j."""
        return np.flatnonzero(self.cluster == j)

    def m0(self, j: int) -> np.ndarray:
        """(M,) share of cluster j untruncated in direction i (the m0 of docs/theory.md §6)."""
        M = self.mean.shape[1]
        bits = ((self.code[:, None] >> np.arange(M, dtype=np.uint64)) & np.uint64(1)).astype(np.float64)
        k = self.rows(j)
        return (self.mass[k, None] * bits[k]).sum(axis=0)


def _layer_points(bk, R, b, X, layer: int):
    """Codes (N,) at ``layer`` along the composition and the points z reaching it (N, M), from the kernels."""
    codes = np.asarray(bk.codes(R[:layer + 1], b[:layer + 1], X))[:, layer]
    z = X if layer == 0 else np.asarray(bk.truncate(R[:layer], b[:layer], X))
    return codes, z


def _grouped(keys_cluster, keys_code, V, Q):
    """Grouped count, mean and centred scatter of the rows of V by (cluster, code), two passes."""
    order = np.lexsort((keys_code, keys_cluster))
    cl, cd, Vs = keys_cluster[order], keys_code[order], V[order]
    N, M = Vs.shape
    new = np.ones(N, dtype=bool)
    new[1:] = (cl[1:] != cl[:-1]) | (cd[1:] != cd[:-1])
    starts = np.flatnonzero(new)
    count = np.diff(np.append(starts, N))
    mean = np.add.reduceat(Vs, starts, axis=0) / count[:, None]
    gid = np.cumsum(new) - 1
    second = np.zeros((len(starts), M, M))
    rows = _config.SECTOR_MOMENT_ROWS
    for s in range(0, N, rows):  # bounded scratch: rows × M² doubles
        d = Vs[s:s + rows] - mean[gid[s:s + rows]]
        g = gid[s:s + rows]
        loc = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        second[g[loc]] += np.add.reduceat(d[:, :, None] * d[:, None, :], loc, axis=0)
    second /= count[:, None, None]
    return cl[starts], cd[starts], count, mean, second


def _labels_and_layer(bk, labels, X, layer, L):
    """Validated labels (Q = max label + 1) and a layer index 0..L−1."""
    arr = as_host_array(labels, "labels")
    Q = max(1, int(arr.max()) + 1) if arr.dtype.kind in "iu" and arr.size else 1
    labels = bk.prepare_labels(labels, X, Q, Q_name="labels")
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= int(layer) < L:
        raise InputError(f"layer: expected an integer layer index 0..{L - 1}, got {layer!r}")
    return labels, Q, int(layer)


def sector_moments(R: Any, b: Any, X: Any, labels: Any, layer: int, *, frame: str = "layer",
                   backend: str = "auto") -> SectorMoments:
    """Mass, mean and centred second moment of every cluster in every occupied sector at ``layer``.

    ``layer`` is 0..L−1 (hidden layer ℓ+1).  The points are taken along the
    composition, z = τ^(ℓ)(x) (docs/theory.md §2), their sector is the code of
    :func:`truncfast.sector_codes` at that layer, and their coordinates are
    ``v = R_ℓ z`` (``frame="layer"``, the frame of §6) or z (``frame="input"``).
    For a cluster at its own layer under cluster separation z = x and the
    restricted moments of §6 are ``E[1_{S_I} v] = mass·mean`` and
    ``E[1_{S_I} v vᵀ] = mass·(second + mean meanᵀ)``.  Labels are 0..Q−1 with
    Q = max(labels) + 1.  Needs M ≤ 64 (codes); in-memory data.
    """
    bk, R, b, X = state_and_data(R, b, X, backend)
    L, M = b.shape
    if M > _config.MAX_CODE_WIDTH:
        raise InputError(f"R: sector codes are uint64 bitmasks and need M ≤ {_config.MAX_CODE_WIDTH}, got M = {M}")
    if frame not in ("layer", "input"):
        raise InputError(f"frame: expected 'layer' or 'input', got {frame!r}")
    labels, Q, layer = _labels_and_layer(bk, labels, X, layer, L)
    codes, z = _layer_points(bk, R, b, X, layer)
    V = z @ R[layer].T if frame == "layer" else np.asarray(z)
    cl, cd, count, mean, second = _grouped(np.asarray(labels), codes, V, Q)
    sizes = np.bincount(labels, minlength=Q).astype(np.int64)
    return SectorMoments(layer, frame, cl.astype(np.int64), cd.astype(np.uint64), count.astype(np.int64),
                         count / sizes[cl], mean, second, sizes)


# ------------------------------------------------------------- Prop. 4.2 ---

@dataclass(eq=False)
class Prop42Check:
    """Prop. 4.2's hypotheses for every cluster j at its layer j, and its collapse time (docs/theory.md §7).

    Arrays of length Q.  At the state:

    * ``separated`` — the §6 assumption (layer j acts on cluster j alone);
    * ``partial_every_direction`` [4.10] — 0 < m0_i < 1 for every direction i;
    * ``positive_mass`` and ``h414`` — the share of the cluster in the positive
      sector S_{1..M}, and whether it is ≤ ``eps`` ([4.14], mass concentrated in
      its complement);
    * ``offdiag_moment`` and ``h415`` — κ = Σ_I mass_I |E[u | S_I]| / (E|u|²)^{1/2} over
      the off-diagonal sectors (I ≠ ∅, {1..M}), u = R_j x + b_j, and whether κ ≤ ``eps``
      ([4.15], small first-degree moments there);
    * ``margin``, ``reach``, ``allowed_rotation`` and ``h416`` — at the limit bias
      b* = −R_j ỹ_j, w = R_j(x − ỹ_j) has every entry ≤ −``margin``; ``reach`` = max |w|;
      the cluster stays in the negative sector for every bias within ``bias_radius``
      (∞-norm) of b* ([4.17]) and every rotation Q R_j by an angle ≤
      ``allowed_rotation`` = 2 asin((margin − bias_radius)/(2 reach)) (radians);
      ``h416`` = margin > bias_radius ([4.16]);
    * ``time_bound`` — max_i (N/n_i) ln((b_i − β*_i)/(θ_i − β*_i)) with n_i the points
      truncated in direction i, β* = −R_j ỹ_j, θ_i = −max v_i: an upper bound on the
      collapse time s₀ of the biases-only flow at fixed R (the type of [4.30]);
      0 if the cluster is already in the negative sector, inf if the fixed-R flow
      never collapses it;
    * ``exact_fixed_R_time`` — the exact collapse time of that flow (§7's event
      solution; the bound is ≥ it).

    With a ``trajectory`` (recorded states of a run from this state):
    ``measured_collapse_time`` (``trajectory.collapse_times``), and over the recorded
    states up to the collapse (all of them if none) ``positive_mass_max``,
    ``offdiag_moment_max``, ``rotation_max`` (largest angle of R_j(s) R_j(0)ᵀ, radians)
    and ``h414_along``, ``h415_along``, ``h416_along`` (rotation_max ≤ allowed_rotation).
    """

    eps: float
    bias_radius: float
    separated: np.ndarray
    partial_every_direction: np.ndarray
    positive_mass: np.ndarray
    h414: np.ndarray
    offdiag_moment: np.ndarray
    h415: np.ndarray
    margin: np.ndarray
    reach: np.ndarray
    allowed_rotation: np.ndarray
    h416: np.ndarray
    time_bound: np.ndarray
    exact_fixed_R_time: np.ndarray
    along: dict = field(default_factory=dict)

    def __getattr__(self, name: str):
        along = self.__dict__.get("along", {})
        if name in along:
            return along[name]
        raise AttributeError(name)

    def to_dict(self) -> dict:
        """Plain Python values (lists, floats, None for NaN), e.g. for JSON."""
        def clean(v):
            v = np.asarray(v)
            return [None if (isinstance(x, float) and math.isnan(x)) else x for x in v.tolist()]
        out = {k: clean(getattr(self, k)) for k in ("separated", "partial_every_direction", "positive_mass",
                                                      "h414", "offdiag_moment", "h415", "margin", "reach",
                                                      "allowed_rotation", "h416", "time_bound",
                                                      "exact_fixed_R_time")}
        out.update({k: clean(v) for k, v in self.along.items()})
        out["eps"], out["bias_radius"] = self.eps, self.bias_radius
        return out

    def table(self) -> str:
        """A text table, one line per cluster."""
        head = (f"{'cluster':>7} {'sep':>4} {'4.10':>5} {'pos.mass':>9} {'4.14':>5} {'kappa':>7} {'4.15':>5} "
                f"{'margin':>8} {'allowed':>8} {'4.16':>5} {'bound':>9} {'exact':>9}")
        extra = "measured" in "".join(self.along)
        if extra:
            head += f" {'measured':>9} {'rot.run':>8}"
        lines = [head]
        for j in range(len(self.separated)):
            yes = lambda v: "yes" if v else "no"
            line = (f"{j:>7} {yes(self.separated[j]):>4} {yes(self.partial_every_direction[j]):>5} "
                    f"{self.positive_mass[j]:>9.3g} {yes(self.h414[j]):>5} {self.offdiag_moment[j]:>7.3g} "
                    f"{yes(self.h415[j]):>5} {self.margin[j]:>8.3g} {math.degrees(self.allowed_rotation[j]):>7.3g}° "
                    f"{yes(self.h416[j]):>5} {self.time_bound[j]:>9.4g} {self.exact_fixed_R_time[j]:>9.4g}")
            if extra:
                line += (f" {self.along['measured_collapse_time'][j]:>9.4g} "
                         f"{math.degrees(self.along['rotation_max'][j]):>7.3g}°")
            lines.append(line)
        return "\n".join(lines)


def _cluster_state(R_j, b_j, v, codes_j, y_rot, M):
    """Quantities of one cluster at its layer from its points' frame coordinates v (N_j, M)."""
    u = v + b_j
    full = np.uint64((1 << M) - 1) if M < 64 else np.uint64(2**64 - 1)
    pos_mass = float(np.mean(codes_j == full))
    h = u > 0
    m0 = h.mean(axis=0)
    off = (codes_j != full) & (codes_j != 0)
    rms = math.sqrt(float(np.mean(np.sum(u * u, axis=1))))
    kappa = 0.0
    if off.any() and rms > 0:
        for c in np.unique(codes_j[off]):
            sel = codes_j == c
            kappa += float(sel.mean()) * float(np.linalg.norm(u[sel].mean(axis=0)))
        kappa /= rms
    w = v - y_rot  # R_j (x − ỹ_j)
    margin = float(-w.max())
    reach = float(np.sqrt(np.max(np.sum(w * w, axis=1))))
    return m0, pos_mass, kappa, margin, reach


def _time_bound(v, b_j, y_rot, N):
    """Upper bound of the fixed-R collapse time (docs/theory.md §7) and the exact one (event solution)."""
    beta_star = -y_rot
    theta = -v.max(axis=0)
    n = np.sum(v + b_j <= 0, axis=0)
    if np.all(b_j <= theta):
        bound = 0.0 if np.all(beta_star <= theta) else math.inf
    else:
        s = []
        for i in range(v.shape[1]):
            if b_j[i] <= theta[i]:
                s.append(0.0 if beta_star[i] <= theta[i] else math.inf)
            elif theta[i] <= beta_star[i] or n[i] == 0:
                s.append(math.inf)
            else:
                s.append(N / n[i] * math.log((b_j[i] - beta_star[i]) / (theta[i] - beta_star[i])))
        bound = max(s)
    exact = []
    for i in range(v.shape[1]):
        sol = solve_bias_component(v[:, i], b_j[i], beta_star[i], N)
        Nj = v.shape[0]
        if sol.counts[0] == Nj and sol.direction <= 0:
            exact.append(0.0)
            continue
        hit = np.flatnonzero((sol.counts == Nj) & (sol.direction < 0))
        exact.append(float(sol.event_times[hit[0]]) if hit.size else math.inf)
    return bound, max(exact)


def _rotation_angle(Q: np.ndarray) -> float:
    """Largest rotation angle (radians) of an orthogonal matrix: max |arg λ|."""
    return float(np.max(np.abs(np.angle(np.linalg.eigvals(Q)))))


def check_prop42(R: Any, b: Any, X: Any, labels: Any, targets: Any, *, trajectory: Any = None,
                 eps: float | None = None, bias_radius: float = 0.0, backend: str = "auto") -> Prop42Check:
    """Which hypotheses of Prop. 4.2 hold for each cluster at the state (R, b), and its collapse time.

    Needs L == Q (cluster j at its own layer j, the setting of Prop. 4.2) and
    non-empty clusters.  The hypotheses are read as in docs/theory.md §7
    ("Checking Prop. 4.2"): [4.10] partial truncation in every direction,
    [4.14] positive-sector mass ≤ ``eps``, [4.15] off-diagonal first moments ≤
    ``eps``, [4.16]/[4.17] the cluster in the negative sector at every bias within
    ``bias_radius`` of its limit, for rotations up to a computed angle.  The time
    bound is the fixed-R bound of the type of [4.30]; with ``trajectory`` (a
    :class:`truncfast.Trajectory` started here) the measured collapse time and the
    hypotheses along its recorded states are added.  See :class:`Prop42Check`.
    """
    eps = _config.PROP42_EPS if eps is None else eps
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise InputError(f"eps: expected a finite number ≥ 0, got {eps!r}")
    if not (isinstance(bias_radius, (int, float)) and math.isfinite(bias_radius) and bias_radius >= 0):
        raise InputError(f"bias_radius: expected a finite number ≥ 0, got {bias_radius!r}")
    p = euclid_args(R, b, X, labels, targets, backend)
    L, M = p.b.shape
    Q = p.targets.shape[0]
    if L != Q:
        raise InputError(f"targets: Prop. 4.2 looks at cluster j at its own layer j and needs L == Q, "
                         f"got L = {L}, Q = {Q}")
    if M > _config.MAX_CODE_WIDTH:
        raise InputError(f"R: sector codes need M ≤ {_config.MAX_CODE_WIDTH}, got M = {M}")
    sizes, viol = p.bk.separation(p.R, p.b, p.X, p.labels, Q)
    if not np.all(sizes > 0):
        raise InputError(f"labels: cluster {int(np.argmin(sizes))} is empty")
    N = p.X.shape[0]
    st = {k: np.zeros(Q) for k in ("pos", "kappa", "margin", "reach", "bound", "exact")}
    partial = np.zeros(Q, dtype=bool)
    lab = np.asarray(p.labels)
    for j in range(Q):
        codes, z = _layer_points(p.bk, p.R, p.b, p.X, j)
        sel = lab == j
        v = z[sel] @ p.R[j].T
        y_rot = p.R[j] @ p.targets[j]
        m0, st["pos"][j], st["kappa"][j], st["margin"][j], st["reach"][j] = _cluster_state(
            p.R[j], p.b[j], v, codes[sel], y_rot, M)
        partial[j] = bool(np.all((m0 > 0) & (m0 < 1)))
        st["bound"][j], st["exact"][j] = _time_bound(v, p.b[j], y_rot, N)
    allowed = np.where(st["margin"] > bias_radius,
                       2 * np.arcsin(np.minimum(1.0, (st["margin"] - bias_radius) / (2 * np.maximum(st["reach"], 1e-300)))),
                       0.0)
    out = Prop42Check(float(eps), float(bias_radius), viol.sum(axis=1) == 0, partial, st["pos"], st["pos"] <= eps,
                      st["kappa"], st["kappa"] <= eps, st["margin"], st["reach"], allowed,
                      st["margin"] > bias_radius, st["bound"], st["exact"])
    if trajectory is not None:
        out.along = _along(trajectory, p, Q, M, allowed, eps)
    return out


def _along(traj, p, Q, M, allowed, eps) -> dict:
    """The hypotheses over the recorded states of ``traj`` up to each cluster's collapse."""
    Rs, bs, times = np.asarray(traj.Rs), np.asarray(traj.bs), np.asarray(traj.times)
    if Rs.ndim != 4 or Rs.shape[1:] != p.R.shape:
        raise InputError(f"trajectory: recorded states of shape {Rs.shape[1:]} do not match R {p.R.shape}")
    s0 = np.asarray(traj.collapse_times, dtype=np.float64)
    lab = np.asarray(p.labels)
    pos_max, kap_max, rot_max = np.zeros(Q), np.zeros(Q), np.zeros(Q)
    for k in range(len(times)):
        for j in range(Q):
            if not np.isnan(s0[j]) and times[k] > s0[j]:
                continue
            codes, z = _layer_points(p.bk, Rs[k], bs[k], p.X, j)
            sel = lab == j
            v = z[sel] @ Rs[k][j].T
            _, pm, kap, _, _ = _cluster_state(Rs[k][j], bs[k][j], v, codes[sel], Rs[k][j] @ p.targets[j], M)
            pos_max[j] = max(pos_max[j], pm)
            kap_max[j] = max(kap_max[j], kap)
            rot_max[j] = max(rot_max[j], _rotation_angle(Rs[k][j] @ Rs[0][j].T))
    return {"measured_collapse_time": s0, "positive_mass_max": pos_max, "offdiag_moment_max": kap_max,
            "rotation_max": rot_max, "h414_along": pos_max <= eps, "h415_along": kap_max <= eps,
            "h416_along": rot_max <= allowed}
