"""Data generators, loaders and problem construction (truncfast.data)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import truncfast as tf
from truncfast import data


def _full(M: int) -> int:
    return (1 << M) - 1


# --------------------------------------------------------------------------- generators


def test_make_clusters_is_deterministic_float64_and_sized():
    C = np.array([[0.0, 0.0, 0.0], [5.0, 0.0, 1.0]])
    X1, l1 = data.make_clusters(1001, C, spread=0.2, weights=[1, 3], seed=7)
    X2, l2 = data.make_clusters(1001, C, spread=0.2, weights=[1, 3], seed=7)
    X3, _ = data.make_clusters(1001, C, spread=0.2, weights=[1, 3], seed=8)
    assert X1.dtype == np.float64 and X1.shape == (1001, 3) and l1.dtype == np.int64
    assert np.array_equal(X1, X2) and np.array_equal(l1, l2)
    assert not np.array_equal(X1, X3)
    sizes = np.bincount(l1)
    assert sizes.sum() == 1001 and abs(sizes[1] - 3 * sizes[0]) <= 3
    # each cluster sits around its centre with the asked spread
    for j in range(2):
        assert np.allclose(X1[l1 == j].mean(axis=0), C[j], atol=0.05)
        assert np.allclose(X1[l1 == j].std(axis=0), 0.2, atol=0.03)


def test_make_clusters_chunked_memmap_matches_memory(tmp_path):
    """More rows than one generation chunk, written straight into a .npy memmap."""
    n = data.GEN_CHUNK + 1234
    C = np.eye(2) * 10
    X, labels = data.make_clusters(n, C, seed=3)
    Xm, lm = data.make_clusters(n, C, seed=3, out=tmp_path / "x.npy")
    assert isinstance(Xm, np.memmap) and not Xm.flags.writeable
    assert np.array_equal(X, Xm) and np.array_equal(labels, lm)
    assert not list(tmp_path.glob("*.tmp*"))  # the temporary file was moved into place


def test_make_clusters_rejects_bad_arguments():
    with pytest.raises(tf.InputError, match="n:"):
        data.make_clusters(1, np.zeros((2, 2)))
    with pytest.raises(tf.InputError, match="weights"):
        data.make_clusters(10, np.zeros((2, 2)), weights=[1, -1])
    with pytest.raises(tf.InputError, match="spread"):
        data.make_clusters(10, np.zeros((2, 2)), spread=-1.0)


@pytest.mark.parametrize("count,dim", [(2, 1), (3, 2), (4, 3), (3, 5)])
def test_simplex_vertices_are_equidistant(count, dim):
    V = data.simplex_vertices(count, dim, 4.0)
    D = np.linalg.norm(V[:, None] - V[None], axis=-1)[np.triu_indices(count, 1)]
    assert np.allclose(D, 4.0)


@pytest.mark.parametrize("Q,M", [(2, 2), (3, 2), (4, 3), (2, 4), (5, 4)])
def test_clusters_problem_is_cluster_separated(Q, M):
    """Def. 3.1: τ_ℓ leaves every cluster j ≠ ℓ untruncated, and partially truncates cluster ℓ."""
    p = data.make_problem("clusters", n=400 * Q, dim=M, clusters=Q, spread=0.1, separation=10.0)
    assert p.L == Q and p.Q == Q and p.M == M
    assert np.max(tf.orthogonality_defect(p.R0)) < 1e-12
    codes = tf.sector_codes(p.R0, p.b0, p.X)
    for l in range(Q):
        for j in range(Q):
            own = codes[p.labels == j, l]
            if j != l:
                assert np.all(own == _full(M)), (l, j)
            else:
                assert np.mean(own != _full(M)) > 0.5  # the apex sits in the cluster
    # targets lie inside every cone: a collapsed cluster is not truncated further
    assert np.all(tf.sector_codes(p.R0, p.b0, p.targets) == _full(M))
    # and the separated form accepts the problem
    tf.gradient(p.R0, p.b0, p.X, p.labels, p.targets, form="separated")


def test_paper_2d_is_theory_section_7():
    p = data.make_problem("paper-2d", n=200)
    assert np.array_equal(p.R0, np.stack([np.eye(2), -np.eye(2)]))
    assert np.array_equal(p.b0, [[0, 0], [10, 10]])
    assert np.allclose(p.targets, [[2, 2], [8, 8]])
    assert np.array_equal(p.cluster_sizes(), [100, 100])


def test_targets_are_pulled_back_through_the_output_layer():
    a = data.make_problem("clusters", n=300, dim=3, clusters=3, output="identity")
    b = data.make_problem("clusters", n=300, dim=3, clusters=3, output="random")
    assert not np.allclose(b.W_out, np.eye(3))
    assert np.allclose(tf.pullback_targets(b.W_out, b.b_out, b.Y), b.targets)
    assert np.allclose(a.targets, b.targets, atol=1e-10)  # same ỹ whatever the output layer
    # ỹ_j = c_j + shift · R_jᵀ 1
    assert np.allclose(a.targets, a.centres + 2.0 * np.einsum("qij,i->qj", a.R0, np.ones(3)))


@pytest.mark.parametrize("init", ["toward", "random"])
def test_other_initialisations(init):
    p = data.make_problem("clusters", n=300, dim=2, clusters=5, layers=3, init=init)
    assert p.L == 3 and p.Q == 5
    assert np.max(tf.orthogonality_defect(p.R0)) < 1e-12
    assert np.isfinite(tf.loss(p.R0, p.b0, p.X, p.labels, p.targets))


def test_make_problem_errors_name_the_argument():
    with pytest.raises(tf.InputError, match="^source"):
        data.make_problem("nope")
    with pytest.raises(tf.InputError, match="^init"):
        data.make_problem("clusters", clusters=5, dim=2, init="separated")
    with pytest.raises(tf.InputError, match="^path"):
        data.make_problem("file")


def test_subsample_caps_each_cluster_deterministically():
    labels = np.repeat([0, 1, 2], [10, 500, 50])
    idx = data.subsample(labels, 40)
    assert np.array_equal(idx, data.subsample(labels, 40))
    assert np.array_equal(np.bincount(labels[idx]), [10, 40, 40])
    assert np.all(np.diff(idx) > 0)


# --------------------------------------------------------------------------- loaders


def test_load_npy_table_with_label_column(tmp_path):
    X, labels = data.make_clusters(300, np.eye(3) * 4, seed=1)
    table = np.column_stack([labels * 2 + 1, X])  # labels 1, 3, 5 in column 0
    np.save(tmp_path / "t.npy", table)
    Xl, ll, names = data.load_file(tmp_path / "t.npy", label_column=0)
    assert np.array_equal(Xl, X) and np.array_equal(ll, labels) and names == ["1", "3", "5"]
    assert Xl.flags.c_contiguous


def test_load_npy_with_labels_file_is_memory_mapped(tmp_path):
    X, labels = data.make_clusters(300, np.eye(2) * 4, seed=1)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", labels)
    Xl, ll, _ = data.load_file(tmp_path / "x.npy", labels_path=tmp_path / "y.npy")
    assert isinstance(Xl, np.memmap)
    assert np.array_equal(Xl, X) and np.array_equal(ll, labels)
    # the engine takes the read-only memmap as it is
    p_targets = np.zeros((2, 2))
    assert np.isfinite(tf.loss(np.stack([np.eye(2)]), np.zeros((1, 2)), Xl, ll, p_targets))


def test_load_npz_and_csv(tmp_path):
    X, labels = data.make_clusters(60, np.eye(2) * 4, seed=2)
    np.savez(tmp_path / "d.npz", X=X, labels=labels)
    Xz, lz, _ = data.load_file(tmp_path / "d.npz")
    assert np.array_equal(Xz, X) and np.array_equal(lz, labels)
    with open(tmp_path / "d.csv", "w") as fh:
        fh.write("x1,x2,species\n")
        for row, lab in zip(X, labels):
            fh.write(f"{float(row[0])!r},{float(row[1])!r},{'ab'[lab]}\n")
    Xc, lc, names = data.load_file(tmp_path / "d.csv")
    assert np.array_equal(Xc, X) and np.array_equal(lc, labels) and names == ["a", "b"]


def test_loader_errors(tmp_path):
    with pytest.raises(tf.InputError, match="no such file"):
        data.load_file(tmp_path / "missing.npy")
    (tmp_path / "d.parquet").write_text("x")
    with pytest.raises(tf.InputError, match="unsupported"):
        data.load_file(tmp_path / "d.parquet")
    np.save(tmp_path / "f.npy", np.array([[0.0, 0.5], [1.0, 1.0]]))
    with pytest.raises(tf.InputError, match="integers"):
        data.load_file(tmp_path / "f.npy")


def test_file_problem_runs_through_the_engine(tmp_path):
    X, labels = data.make_clusters(200, np.array([[0.0, 0.0], [6.0, 1.0], [2.0, 7.0]]), seed=4)
    np.savez(tmp_path / "d.npz", X=X, labels=labels)
    p = data.make_problem("file", path=str(tmp_path / "d.npz"))
    assert p.Q == 3 and p.L == 3 and p.N == 200
    traj = tf.integrate(p.R0, p.b0, p.X, p.labels, p.targets, dt=0.05, steps=20)
    assert traj.loss[-1] < traj.loss[0]


def test_iris_reduced_by_pca():
    pytest.importorskip("sklearn")
    X, labels, names = data.load_sklearn("iris", dim=3)
    assert X.shape == (150, 3) and names == ["setosa", "versicolor", "virginica"]
    assert np.array_equal(np.bincount(labels), [50, 50, 50])
    var = X.var(axis=0)
    assert np.all(np.diff(var) <= 1e-12)  # principal components, by decreasing variance
    p = data.make_problem("iris", dim=2)
    traj = tf.integrate(p.R0, p.b0, p.X, p.labels, p.targets, dt=0.05, steps=30)
    assert traj.loss[-1] < traj.loss[0]


def test_missing_scikit_learn_is_a_clean_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn` fail
    with pytest.raises(tf.InputError, match=r"pip install"):
        data.load_sklearn("iris")
