"""The paper's diagnostics: tf.sector_moments (Def. 3.4), tf.check_prop42 (Prop. 4.2, docs/theory.md §7)
and tf.neural_collapse (NC1–NC4, Papyan, Han and Donoho 2020).

Oracles: per-point loops of tests/naive.py for the sector moments; direct
transcriptions of the NC definitions (loops over points, classes and pairs) and
an exact simplex where every metric is known; for Prop. 4.2 the scenario of
docs/paper_differences.md (§3), the exact event solution of the fixed-R bias
flow (tf.exact_bias_events, §7) and integrated runs.
"""

from __future__ import annotations

import itertools
import math

import naive
import numpy as np
import pytest
from conftest import AVAILABLE_BACKENDS, make_problem

import truncfast as tf
from truncfast import data

LOCAL = [b for b in AVAILABLE_BACKENDS if b != "dask"]


# ------------------------------------------------------------ sector moments ---

@pytest.mark.parametrize("backend", LOCAL)
@pytest.mark.parametrize("layer", [0, 2])
def test_sector_moments_match_per_point_loops(rng, backend, layer):
    p = make_problem(rng, N=300, M=3, L=3, Q=3)
    sm = tf.sector_moments(p.R, p.b, p.X, p.labels, layer, backend=backend)
    groups: dict = {}
    for x, j in zip(p.X, p.labels):
        z = naive.tau(p.R, p.b, x, upto=layer)
        u = p.R[layer] @ z + p.b[layer]
        code = sum(1 << i for i in range(3) if u[i] > 0.0)
        groups.setdefault((int(j), code), []).append(p.R[layer] @ z)
    assert len(sm.count) == len(groups) and sm.count.sum() == 300
    for k in range(len(sm.count)):
        v = np.array(groups[(int(sm.cluster[k]), int(sm.code[k]))])
        assert sm.count[k] == len(v)
        assert sm.mass[k] == len(v) / np.sum(p.labels == sm.cluster[k])
        np.testing.assert_allclose(sm.mean[k], v.mean(axis=0), rtol=1e-12, atol=1e-13)
        c = sum(np.outer(r - v.mean(axis=0), r - v.mean(axis=0)) for r in v) / len(v)
        np.testing.assert_allclose(sm.second[k], c, rtol=1e-11, atol=1e-13)
    for j in range(3):  # masses of a cluster add up to 1; m0 is the untruncated share per direction
        assert abs(sm.mass[sm.rows(j)].sum() - 1.0) < 1e-15
        h = np.array([[(c >> i) & 1 for i in range(3)] for (jj, c), v in groups.items() if jj == j for _ in v])
        np.testing.assert_allclose(sm.m0(j), h.mean(axis=0), rtol=1e-15)


def test_sector_moments_bad_input(rng):
    p = make_problem(rng, N=20, M=3, L=2, Q=2)
    with pytest.raises(tf.InputError, match="^layer:"):
        tf.sector_moments(p.R, p.b, p.X, p.labels, 2)
    with pytest.raises(tf.InputError, match="^frame:"):
        tf.sector_moments(p.R, p.b, p.X, p.labels, 0, frame="other")
    with pytest.raises(tf.InputError, match="^labels:"):
        tf.sector_moments(p.R, p.b, p.X, p.labels[:-1], 0)


# ------------------------------------------------------------- neural collapse ---

def nc_direct(H, y, W, pred):
    """NC1–NC4 written out with loops (the formulas of truncfast/_flow/neural_collapse.py)."""
    N, M = H.shape
    C = max(y) + 1
    mu = [np.mean([H[n] for n in range(N) if y[n] == c], axis=0) for c in range(C)]
    mg = sum(H[n] for n in range(N)) / N
    Sw = sum(np.outer(H[n] - mu[y[n]], H[n] - mu[y[n]]) for n in range(N)) / N
    Sb = sum(np.outer(mu[c] - mg, mu[c] - mg) for c in range(C)) / C
    nc1 = np.trace(Sw @ np.linalg.pinv(Sb)) / C
    norms = [np.linalg.norm(mu[c] - mg) for c in range(C)]
    cos = [np.dot(mu[a] - mg, mu[c] - mg) / (norms[a] * norms[c]) for a, c in itertools.permutations(range(C), 2)]
    pi = [sum(1 for n in range(N) if y[n] == c) / N for c in range(C)]
    wbar = sum(pi[c] * W[c] for c in range(C))
    Wt = np.array([W[c] - wbar for c in range(C)])
    Mt = np.array([mu[c] - mg for c in range(C)])
    nc3 = np.sum((Wt / np.linalg.norm(Wt) - Mt / np.linalg.norm(Mt)) ** 2)
    ncc = [min(range(C), key=lambda c: np.linalg.norm(H[n] - mu[c])) for n in range(N)]
    nc4 = sum(1 for n in range(N) if pred[n] != ncc[n]) / N
    return dict(nc1=nc1, nc2_equinorm=np.std(norms) / np.mean(norms), nc2_equiangular=np.std(cos),
                nc2_maxangle=np.mean([abs(c + 1 / (C - 1)) for c in cos]), nc3=nc3, nc4=nc4)


def test_neural_collapse_on_an_exact_simplex():
    C, M = 4, 5
    V = data.simplex_vertices(C, M, 3.0) + np.array([1.0, -2.0, 0.5, 0.0, 0.3])  # any offset
    y = np.repeat(np.arange(C), 7)
    nc = tf.neural_collapse(V[y], y, classifier=V, predictions=y)
    assert nc["nc1"] <= 1e-28  # Σ_W = 0 up to the rounding of the class means
    for key in ("nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "nc3"):
        assert abs(nc[key]) < 1e-14, (key, nc[key])
    assert nc["nc4"] == 0.0
    # the same simplex seen through a wrong classifier: NC3 and NC4 are not 0
    nc = tf.neural_collapse(V[y], y, classifier=V[::-1], predictions=(y + 1) % C)
    assert nc["nc3"] > 0.5 and nc["nc4"] == 1.0


def test_neural_collapse_matches_the_direct_transcription(rng):
    C, M, N = 3, 4, 90
    y = rng.permutation(np.arange(N) % C)
    centres = 2.0 * rng.standard_normal((C, M))
    H = centres[y] + 0.7 * rng.standard_normal((N, M))
    W = rng.standard_normal((C, M))
    pred = rng.integers(0, C, N)
    got = tf.neural_collapse(H, y, classifier=W, predictions=pred)
    want = nc_direct(H, y, W, pred)
    for key, val in want.items():
        assert abs(got[key] - val) <= 1e-12 * max(1.0, abs(val)), (key, got[key], val)
    assert got["nc1"] > 0.01 and got["nc4"] > 0.1
    assert all(math.isnan(v) for v in tf.neural_collapse(H, np.zeros(N, dtype=int)).values())


# ------------------------------------------------------------------ Prop. 4.2 ---

@pytest.fixture(scope="module")
def paper():
    """The scenario of docs/paper_differences.md §3 (theory.md §7): two clusters of 100 points."""
    X, labels, centres, R0, b0, T = data.paper_2d(100, 0.1, 0)
    return R0, b0, X, labels, T


def test_prop42_hypotheses_at_the_initial_state(paper):
    R0, b0, X, labels, T = paper
    chk = tf.check_prop42(R0, b0, X, labels, T)
    for j in range(2):
        v = X[labels == j] @ R0[j].T
        u = v + b0[j]
        assert chk.separated[j]
        assert chk.partial_every_direction[j] == bool(np.all((u > 0).mean(axis=0) > 0) and np.all((u > 0).mean(axis=0) < 1))
        assert chk.positive_mass[j] == np.mean(np.all(u > 0, axis=1))
        assert chk.h414[j] == (chk.positive_mass[j] <= 0.1)
        w = v - R0[j] @ T[j]
        assert chk.margin[j] == -w.max() and chk.margin[j] > 1.0  # the limit bias puts it deep in S_∅
        assert chk.h416[j]
    assert chk.partial_every_direction.all()  # both apices sit at their cluster's centre: [4.10] holds
    assert not chk.h414.any()  # a quarter of each cluster is in the positive sector at s = 0


def test_prop42_time_bound_holds_for_the_fixed_R_flow(paper):
    """The bound is ≥ the exact collapse time of the biases-only flow (event solution), which an
    integrated biases-only run reproduces to its step."""
    R0, b0, X, labels, T = paper
    chk = tf.check_prop42(R0, b0, X, labels, T)
    events = tf.exact_bias_events(R0, b0, X, labels, T)
    for j in range(2):
        t_dir = []
        for sol in events[j]:
            full = np.flatnonzero(sol.counts == np.sum(labels == j))
            t_dir.append(float(sol.event_times[full[0]]))
        assert abs(chk.exact_fixed_R_time[j] - max(t_dir)) <= 1e-12
        assert chk.time_bound[j] >= chk.exact_fixed_R_time[j]
        assert chk.time_bound[j] <= 3 * chk.exact_fixed_R_time[j]  # and not vacuous here
    dt = 0.002
    traj = tf.integrate(R0, b0, X, labels, T, dt=dt, steps=500, train_weights=False)
    measured = traj.collapse_times
    assert np.all(np.abs(measured - chk.exact_fixed_R_time) <= 0.02)
    assert np.all(measured <= chk.time_bound + dt)


def test_prop42_along_the_full_flow_flags_the_stalled_cluster(paper):
    """Full flow (theory §7, paper_differences §3): cluster 1 collapses, R₂ turns by 45° — beyond the
    rotation range in which [4.16] keeps cluster 2 in the negative sector — and cluster 2 stalls."""
    R0, b0, X, labels, T = paper
    traj = tf.integrate(R0, b0, X, labels, T, dt=0.05, steps=400)
    chk = tf.check_prop42(R0, b0, X, labels, T, trajectory=traj)
    assert np.isfinite(chk.measured_collapse_time[0]) and np.isnan(chk.measured_collapse_time[1])
    assert chk.measured_collapse_time[0] <= chk.time_bound[0] + 0.05
    assert chk.rotation_max[0] < math.radians(1.0) and chk.h416_along[0]
    assert abs(math.degrees(chk.rotation_max[1]) - 45.0) < 1.0 and not chk.h416_along[1]
    assert 0.3 < chk.allowed_rotation[1] < math.radians(45.0)
    d = chk.to_dict()
    assert d["measured_collapse_time"][1] is None and "eps" in d
    assert "cluster" in chk.table()


def test_prop42_needs_one_layer_per_cluster(paper):
    R0, b0, X, labels, T = paper
    with pytest.raises(tf.InputError, match="^targets:.*L == Q"):
        tf.check_prop42(R0[:1], b0[:1], X, labels, T)
    with pytest.raises(tf.InputError, match="^eps:"):
        tf.check_prop42(R0, b0, X, labels, T, eps=-1.0)
