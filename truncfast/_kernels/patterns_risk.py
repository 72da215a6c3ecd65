"""Numba kernels of the at-risk search (docs/theory.md §11): the bounds and the scan of a generation.

Two bounds, both proofs including rounding (derivations in ``pattern_state``):

* the Lipschitz bound of §11, for *plain* generations: ``A ρ + C0 < m``
  (``bound_coefficients``, ``reference_coefficients``);
* the pattern-affine bound, for generations whose points are split into
  *slots* (one per group, with a centre c): a point of the group with pattern
  h is an affine function of x at every state while it keeps h, so its
  pre-activations move by at most ``κ δ + Δ_slot`` with δ = |x − c|,
  κ = (2L − 1) ν^{2L−2} ε and Δ_slot the change at c of the pattern-h affine
  pre-activations (``slot_constants``); the test is ``κ δ + A_ρ ρ + C_slot < m``.

``risk_scan`` walks a generation's slots and, inside each, its margin buckets
(``patterns_generations``), testing only the entries the bound can reach.
"""

from __future__ import annotations

import numpy as np
from truncfast._kernels.numba_cache import jit

__all__ = ["risk_scan", "bound_coefficients", "rounding_coefficients", "norm_bound", "reference_coefficients",
           "slot_constants", "INFLATE"]


@jit
def risk_scan(Ad, Ar, C, shrink, summary_starts, bmin, bmaxr, bmaxd, slot_b, srho, sd, idx, m, rho, d, gen_of,
              gen_id, limit):
    """Points of one generation that the bound cannot prove safe, in entry order.

    Entry k of slot s is safe when ``Ad[s] δ_k + Ar ρ_k + C[s] < m_k · shrink``.
    Inside a slot, buckets come in increasing m: the scan stops at the first
    bucket whose smallest margin beats the bound for the slot's largest δ and
    ρ (every later bucket of the slot is then safe), skips buckets safe for
    their own largest δ and ρ, and tests the entries of the others one by one.
    Tombstones (gen_of ≠ gen_id) are skipped.  Stops after ``limit + 1``
    points when ``limit ≥ 0``.
    """
    S = slot_b.shape[0] - 1
    qend = np.empty(S, np.int64)
    total = 0
    for s in range(S):
        lim = Ad[s] * sd[s] + Ar * srho[s] + C[s]
        q = slot_b[s]
        while q < slot_b[s + 1] and not (lim < bmin[q] * shrink):
            q += 1
        qend[s] = q
        total += summary_starts[q] - summary_starts[slot_b[s]]
    out = np.empty(total, dtype=np.int64)
    no = 0
    for s in range(S):
        c = C[s]
        a = Ad[s]
        for q in range(slot_b[s], qend[s]):
            if a * bmaxd[q] + Ar * bmaxr[q] + c < bmin[q] * shrink:
                continue
            for k in range(summary_starts[q], summary_starts[q + 1]):
                p = idx[k]
                if gen_of[p] != gen_id:
                    continue
                if not (a * np.float64(d[k]) + Ar * np.float64(rho[k]) + c < np.float64(m[k]) * shrink):
                    out[no] = p
                    no += 1
                    if no == limit + 1:
                        return out[:no]
    return out[:no]


# --------------------------------------------------------------- bound ---

_U = 2.0 ** -53
#: Relative inflation of computed norms (their rounding: ≤ (M² + 3) u, M ≤ 64).
INFLATE = 1.0 + 1e-11


@jit
def bound_coefficients(L, M, nu, eps, beta, bnorm, rounding):
    """(A, C0) of the sufficient test ``A ρ + C0 < m (1 − 10⁻¹⁵)``; (inf, inf) when ε ≥ ½ or not finite.

    ``rounding`` is the safety factor of the floating-point term (see
    ``pattern_state``): c = rounding · L (M + 2)² u ν^{2L+2}.
    """
    if not (eps < 0.5):
        return np.inf, np.inf
    p = nu ** (2 * L)
    c = rounding * L * (M + 2) ** 2 * _U * p * nu * nu
    a1 = nu * (1.0 + c)
    a0 = nu * c * bnorm
    # d_1 ≤ ε ρ + β, d_{ℓ+1} ≤ ν² d_ℓ + (ν + 1) ε ρ + β  ⇒  d_L ≤ ν^{2L} ((1 + (L − 1)(ν + 1)) ε ρ + L β)
    k1 = p * (1.0 + (L - 1) * (nu + 1.0)) * eps
    k0 = L * p * beta
    A = (k1 + c) * a1 * (1.0 + 1e-12)
    C0 = (k1 * a0 + k0 + c * (a0 + bnorm)) * (1.0 + 1e-12)
    if not (np.isfinite(A) and np.isfinite(C0)):
        return np.inf, np.inf
    return A, C0


@jit
def norm_bound(R):
    """ν ≥ max_ℓ ‖R_ℓ‖₂ from the Gram defect: ‖R‖₂² ≤ 1 + ‖RᵀR − I‖_F, plus the Gram's rounding.

    The computed Gram entries are off by ≤ γ_M (|R|ᵀ|R|)_ij, whose Frobenius
    norm is ≤ ‖R‖_F² ≤ M ν²: hence the division by 1 − 4 M² u.
    """
    L, M, _ = R.shape
    dmax = 0.0
    for l in range(L):
        d2 = 0.0
        for i in range(M):
            for j in range(M):
                s = 0.0
                for k in range(M):
                    s += R[l, k, i] * R[l, k, j]
                if i == j:
                    s -= 1.0
                d2 += s * s
        dmax = max(dmax, np.sqrt(d2))
    return np.sqrt((1.0 + dmax * INFLATE) / (1.0 - 4.0 * M * M * _U)) * INFLATE


@jit
def _bnorm(b):
    m = 0.0
    for l in range(b.shape[0]):
        s = 0.0
        for i in range(b.shape[1]):
            s += b[l, i] * b[l, i]
        m = max(m, np.sqrt(s))
    return m


@jit
def reference_coefficients(R, b, Rs, bs, nus, bns, rounding, A, C0, kappa, Ar, Cp):
    """Coefficients of both bounds between the state (R, b) and each reference (Rs[g], bs[g]).

    Lipschitz bound: (A[g], C0[g]).  Pattern-affine bound: kappa[g] =
    (2L − 1) ν^{2L−2} ε ≥ max_ℓ ‖K_ℓ(θ) − K_ℓ(θᶜ)‖₂ for every pattern (K_ℓ = R_ℓ P_{ℓ−1} ⋯ P_1,
    P = Rᵀ diag(h) R: ‖ΔP‖ ≤ 2νε, so ‖ΔA_j‖ ≤ 2 j ν^{2j−1} ε and
    ‖ΔK_ℓ‖ ≤ ε ν^{2ℓ−2} + ν ‖ΔA_{ℓ−1}‖), and the rounding (Ar[g], Cp[g]).
    ε = max_ℓ ‖R_ℓ − Rs[g]_ℓ‖_F, β = max_ℓ |b_ℓ − bs[g]_ℓ|, ν and B the larger of
    the two states' (ν of the references precomputed in ``nus``, B in ``bns``),
    every norm inflated by ``INFLATE`` for its rounding.
    """
    L, M = b.shape
    nu_now = norm_bound(R)
    bnow = _bnorm(b)
    for g in range(Rs.shape[0]):
        eps = 0.0
        beta = 0.0
        for l in range(L):
            s = 0.0
            for i in range(M):
                for k in range(M):
                    d = R[l, i, k] - Rs[g, l, i, k]
                    s += d * d
            eps = max(eps, np.sqrt(s))
            s = 0.0
            for i in range(M):
                d = b[l, i] - bs[g, l, i]
                s += d * d
            beta = max(beta, np.sqrt(s))
        nu = max(nu_now, nus[g])
        bn = max(bnow, bns[g]) * INFLATE
        A[g], C0[g] = bound_coefficients(L, M, nu, eps * INFLATE, beta * INFLATE, bn, rounding)
        kappa[g] = (2 * L - 1) * nu ** (2 * L - 2) * eps * INFLATE * (1.0 + 1e-12)
        Ar[g], Cp[g] = rounding_coefficients(L, M, nu, bn, rounding)
        if not (np.isfinite(kappa[g]) and np.isfinite(Ar[g]) and np.isfinite(Cp[g])):
            kappa[g], Ar[g], Cp[g] = np.inf, np.inf, np.inf


@jit
def rounding_coefficients(L, M, nu, bnorm, rounding):
    """(Ar, Cp): a computed point's rounding at both states is ≤ Ar ρ + Cp (``bound_coefficients`` with ε = β = 0).

    c = rounding · L (M + 2)² u ν^{2L+2}; ρ' = ν (1 + c) ρ + ν c B; rounding ≤ c (ρ' + B).
    """
    c = rounding * L * (M + 2) ** 2 * _U * nu ** (2 * L + 2)
    Ar = c * nu * (1.0 + c) * (1.0 + 1e-12)
    Cp = c * (nu * c * bnorm + bnorm) * (1.0 + 1e-12)
    return Ar, Cp


@jit
def _pattern_pre(R, b, c, key, u, K, want_K):
    """Pre-activations u (L, M) of the pattern-``key`` affine maps at the point c, and max_ℓ |z_ℓ| (|c| included);
    with ``want_K`` also their linear parts K (L, M, M), u_ℓ = K_ℓ x + k_ℓ.

    z_0 = c; v = R_ℓ z; u_ℓ = v + b_ℓ; t = v where the key's bit is set, −b_ℓ elsewhere;
    z_ℓ = R_ℓᵀ t — the forward pass of §5 with the pattern imposed, whatever c's own
    pattern; K_ℓ = R_ℓ A_{ℓ−1}, A_ℓ = R_ℓᵀ diag(h_ℓ) K_ℓ, A_0 = I.
    """
    L, M = b.shape
    z = c.copy()
    t = np.empty(M)
    A = np.eye(M)
    zm = 0.0
    for i in range(M):
        zm += z[i] * z[i]
    zm = np.sqrt(zm)
    for l in range(L):
        for i in range(M):
            s = 0.0
            for k in range(M):
                s += R[l, i, k] * z[k]
            u[l, i] = s + b[l, i]
            t[i] = s if (key[l] >> np.uint64(i)) & np.uint64(1) else -b[l, i]
        n2 = 0.0
        for k in range(M):
            s = 0.0
            for i in range(M):
                s += R[l, i, k] * t[i]
            z[k] = s
            n2 += s * s
        zm = max(zm, np.sqrt(n2))
        if want_K:
            for i in range(M):
                for j in range(M):
                    s = 0.0
                    for k in range(M):
                        s += R[l, i, k] * A[k, j]
                    K[l, i, j] = s
            for k in range(M):
                for j in range(M):
                    s = 0.0
                    for i in range(M):
                        if (key[l] >> np.uint64(i)) & np.uint64(1):
                            s += R[l, i, k] * K[l, i, j]
                    A[k, j] = s
    return zm


@jit
def slot_constants(R, b, Rc, bc, centres, keys, Ar, Cp, nu, kappa, exact, out, kap):
    """C[s] and κ[s] of the pattern-affine test for every slot.

    C[s] = Δ_s (1 + 10⁻¹²) + Ar ρ_c + 2 Cp with Δ_s = max_ℓ |U_ℓ(c_s; θ) − U_ℓ(c_s; θᶜ)|_∞,
    U the pattern-affine pre-activations of the slot's group (``_pattern_pre``) at
    the current state θ = (R, b) and the reference θᶜ = (Rc, bc), ρ_c the larger of
    the two passes' max |z_ℓ|: the two computed passes of c are off by at most the
    rounding of a point with ρ = ρ_c (Ar ρ_c + Cp), the point's own by Ar ρ + Cp.
    κ[s] = the generation's ``kappa`` ((2L − 1) ν^{2L−2} ε), or with ``exact``
    max_ℓ ‖K_ℓ(θ) − K_ℓ(θᶜ)‖_F computed, plus its rounding 16 L M² u ν^{2L}
    (each computed entry of K is off by ≤ 2 L M u ν^{2L}, at two states), never
    above ``kappa``.
    """
    L, M = b.shape
    u = np.empty((L, M))
    uc = np.empty((L, M))
    K1 = np.empty((L, M, M))
    K0 = np.empty((L, M, M))
    slack = 16.0 * L * M * M * _U * nu ** (2 * L)
    for s in range(centres.shape[0]):
        z1 = _pattern_pre(R, b, centres[s], keys[s], u, K1, exact)
        z0 = _pattern_pre(Rc, bc, centres[s], keys[s], uc, K0, exact)
        dl = 0.0
        for l in range(L):
            for i in range(M):
                dl = max(dl, abs(u[l, i] - uc[l, i]))
        out[s] = dl * (1.0 + 1e-12) + Ar * max(z0, z1) + 2.0 * Cp
        if not np.isfinite(out[s]):
            out[s] = np.inf
        kap[s] = kappa
        if exact:
            worst = 0.0
            for l in range(L):
                f = 0.0
                for i in range(M):
                    for j in range(M):
                        dd = K1[l, i, j] - K0[l, i, j]
                        f += dd * dd
                worst = max(worst, np.sqrt(f))
            kx = worst * INFLATE + slack
            if kx < kappa:
                kap[s] = kx
