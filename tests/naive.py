"""Slow, obviously-correct oracles written straight from docs/theory.md §§1–6.

One point at a time, one layer at a time, plain NumPy on vectors.  Nothing
here imports truncfast: the engine is compared against these loops, never the
other way round.  Conventions: H(0) = 0 (a pre-activation exactly 0 counts as
truncated), every loss carries 1/(2N) over all points.
"""

from __future__ import annotations

import numpy as np


def heaviside(u):
    """H(u) with H(0) = 0, componentwise (docs/theory.md §0)."""
    return np.array([1.0 if ui > 0.0 else 0.0 for ui in u])


def antisym(A):
    """P_A(A) = (A − Aᵀ)/2."""
    return 0.5 * (A - A.T)


# ---------------------------------------------------------------- §§2, 4 ---

def tau_layer(Rl, bl, z):
    """τ_ℓ(z) = z − R_ℓᵀ min(R_ℓ z + b_ℓ, 0) (docs/theory.md §4, first form)."""
    return z - Rl.T @ np.minimum(Rl @ z + bl, 0.0)


def tau(R, b, x, upto=None):
    """τ^(ℓ)(x) = τ_ℓ ∘ … ∘ τ_1 (x); all layers unless ``upto`` is given."""
    z = np.array(x, dtype=np.float64)
    for l in range(len(R) if upto is None else upto):
        z = tau_layer(R[l], b[l], z)
    return z


def truncate(R, b, X):
    return np.array([tau(R, b, x) for x in X]).reshape(len(X), -1)


def codes(R, b, X):
    """(N, L) uint64: bit i of [n, ℓ] is H((R_ℓ τ^(ℓ-1)(x_n) + b_ℓ)_i)."""
    N, L = len(X), len(R)
    out = np.zeros((N, L), dtype=np.uint64)
    for n in range(N):
        z = np.array(X[n], dtype=np.float64)
        for l in range(L):
            u = R[l] @ z + b[l]
            code = 0
            for i, ui in enumerate(u):
                if ui > 0.0:
                    code |= 1 << i
            out[n, l] = np.uint64(code)
            z = tau_layer(R[l], b[l], z)
    return out


# ------------------------------------------------------------------- §3 ---

def pullback_targets(W_out, b_out, Y):
    """ỹ_j = W⁺ (y_j − b): the minimum-norm least-squares solution."""
    return np.array([np.linalg.lstsq(W_out, y - b_out, rcond=None)[0] for y in Y])


def loss(R, b, X, labels, targets):
    N = len(X)
    total = 0.0
    for x, j in zip(X, labels):
        d = tau(R, b, x) - targets[j]
        total += d @ d
    return total / (2 * N)


def standard_loss(R, b, X, labels, W_out, b_out, Y):
    N = len(X)
    total = 0.0
    for x, j in zip(X, labels):
        d = W_out @ tau(R, b, x) + b_out - Y[j]
        total += d @ d
    return total / (2 * N)


# ------------------------------------------------------------------- §5 ---

def _point_gradient(R, b, x, error_of):
    """Forward and backward pass of docs/theory.md §5 for one point.

    ``error_of(z_L)`` returns the error vector e.  Returns (grad_b, G) of this
    point, not yet divided by N, G not yet antisymmetrised.
    """
    L, M = len(R), len(x)
    z = np.array(x, dtype=np.float64)
    saved = []
    for l in range(L):
        v = R[l] @ z
        u = v + b[l]
        h = heaviside(u)
        t = np.maximum(v, -b[l])  # = h ⊙ u − b = R_ℓ z_ℓ (clamp form of §4)
        z = R[l].T @ t
        saved.append((v, h, t))
    g = error_of(z)
    gb = np.zeros((L, M))
    G = np.zeros((L, M, M))
    for l in range(L - 1, -1, -1):
        v, h, t = saved[l]
        r = R[l] @ g
        gb[l] = -(1.0 - h) * r
        G[l] = np.outer(h * r, v) - np.outer(r, t)
        g = R[l].T @ (h * r)
    return gb, G


def gradient(R, b, X, labels, targets):
    """(grad_b, omega) of the Euclidean loss, docs/theory.md §5."""
    N = len(X)
    L, M = np.shape(b)
    gb = np.zeros((L, M))
    G = np.zeros((L, M, M))
    for x, j in zip(X, labels):
        pgb, pG = _point_gradient(R, b, x, lambda z, j=j: z - targets[j])
        gb += pgb
        G += pG
    return gb / N, np.array([antisym(Gl) for Gl in G]) / N


def standard_gradient(R, b, X, labels, W_out, b_out, Y):
    """(grad_b, omega, grad_W_out, grad_b_out) of the standard loss."""
    N = len(X)
    L, M = np.shape(b)
    gb = np.zeros((L, M))
    G = np.zeros((L, M, M))
    gW = np.zeros(np.shape(W_out))
    gbo = np.zeros(np.shape(b_out))
    for x, j in zip(X, labels):
        zL = tau(R, b, x)
        res = W_out @ zL + b_out - Y[j]
        gW += np.outer(res, zL)
        gbo += res
        pgb, pG = _point_gradient(R, b, x, lambda z, res=res: W_out.T @ res)
        gb += pgb
        G += pG
    return gb / N, np.array([antisym(Gl) for Gl in G]) / N, gW / N, gbo / N


# ------------------------------------------------------------------- §6 ---

def moments(R, b, X, labels, targets):
    """Constrained moments of docs/theory.md §6, cluster j at layer j (L == Q)."""
    N = len(X)
    Q, M = np.shape(targets)
    out = {k: [] for k in ("pi", "m0", "m1", "m2", "tbar", "target_rotated")}
    for j in range(Q):
        pts = [x for x, lab in zip(X, labels) if lab == j]
        m0 = np.zeros(M)
        m1 = np.zeros((M, M))
        m2 = np.zeros((M, M))
        for x in pts:
            v = R[j] @ x
            h = heaviside(v + b[j])
            for i in range(M):
                m0[i] += h[i]
                for k in range(M):
                    m1[i, k] += h[i] * v[k]
                    m2[i, k] += h[i] * v[i] * v[k]
        n = len(pts)
        m0, m1, m2 = m0 / n, m1 / n, m2 / n
        out["pi"].append(n / N)
        out["m0"].append(m0)
        out["m1"].append(m1)
        out["m2"].append(m2)
        out["tbar"].append(np.array([m1[k, k] - (1.0 - m0[k]) * b[j][k] for k in range(M)]))
        out["target_rotated"].append(R[j] @ targets[j])
    return {k: np.array(v) for k, v in out.items()}


def separated_gradient(R, b, X, labels, targets):
    """(grad_b, omega) from the moment formulas [3.39–3.41] of docs/theory.md §6."""
    mom = moments(R, b, X, labels, targets)
    Q, M = np.shape(targets)
    gb = np.zeros((Q, M))
    om = np.zeros((Q, M, M))
    for j in range(Q):
        pi, m0, m1, m2, tb, y = (mom[k][j] for k in ("pi", "m0", "m1", "m2", "tbar", "target_rotated"))
        gb[j] = pi * (1.0 - m0) * (b[j] + y)  # ∂_s b = −grad_b
        for i in range(M):
            for k in range(M):
                om[j, i, k] = 0.5 * pi * (m2[i, k] - m2[k, i] - y[i] * m1[i, k] + y[k] * m1[k, i]
                                          + y[i] * tb[k] - y[k] * tb[i])
    return gb, om


def separation_violations(R, b, X, labels, Q):
    """Set of (cluster j, layer ℓ ≠ j, count) where τ_ℓ truncates points of cluster j."""
    L = len(R)
    counts = {}
    for x, j in zip(X, labels):
        z = np.array(x, dtype=np.float64)
        for l in range(L):
            if l != j and (R[l] @ z + b[l] <= 0.0).any():
                counts[(int(j), l)] = counts.get((int(j), l), 0) + 1
            z = tau_layer(R[l], b[l], z)
    return {(j, l, n) for (j, l), n in counts.items()}


# ------------------------------------------------------------------- §1 ---

def relu_network(Ws, bs, W_last, b_last, x):
    """Hidden states x⁽¹⁾..x⁽ᴸ⁾ and output x⁽ᴸ⁺¹⁾ of the layer-by-layer network."""
    states = []
    h = np.array(x, dtype=np.float64)
    for W, c in zip(Ws, bs):
        h = np.maximum(W @ h + c, 0.0)
        states.append(h)
    return states, W_last @ h + b_last


def cumulative(Ws, bs):
    """W^(ℓ) = W_ℓ W^(ℓ-1), b^(ℓ) = W_ℓ b^(ℓ-1) + b_ℓ, W^(0) = I, b^(0) = 0."""
    M = len(bs[0])
    Wc, bc = [], []
    W, c = np.eye(M), np.zeros(M)
    for Wl, bl in zip(Ws, bs):
        W, c = Wl @ W, Wl @ c + bl
        Wc.append(W)
        bc.append(c)
    return np.array(Wc), np.array(bc)


def boundary_margin(R, b, X):
    """Smallest |pre-activation| along the composition, relative to its scale:
    min over points n, layers ℓ and directions i of |u_ℓ,i| / (|z_{ℓ−1}| + |b_ℓ|),
    u_ℓ = R_ℓ z_{ℓ−1} + b_ℓ, z_ℓ = τ_ℓ(z_{ℓ−1}).  Of order 1e-16 when a point sits on a
    sector boundary up to rounding (where H is decided by rounding)."""
    worst = np.inf
    for x in X:
        z = np.array(x, dtype=np.float64)
        for Rl, bl in zip(R, b):
            u = Rl @ z + bl
            worst = min(worst, float(np.min(np.abs(u))) / (np.linalg.norm(z) + np.linalg.norm(bl)))
            z = tau_layer(Rl, bl, z)
    return worst
