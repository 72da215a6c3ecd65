"""Shared tolerances, fixtures and random-problem factories of the test suite.

Generic on purpose: any test module may use them.

* Tolerances live here and only here (``RTOL`` is the 1e-12 relative agreement
  that docs/api.md promises between backends and oracles).
* ``backend`` runs a test once per backend that ``tf.backends()`` reports
  available ("numpy", "numba", "c" as soon as the C core is built, and "dask"
  on a LocalCluster started once per session).
* ``rng`` is a NumPy generator seeded from the test's node id (reproducible).
* ``make_problem`` / ``random_problem`` build random problems, optionally with
  points exactly on sector boundaries (signed-permutation R, integer data).

Module-level helpers can be imported by tests: ``from conftest import RTOL, ...``.
"""

from __future__ import annotations

import os

# scikit-learn runs its array-API estimator check only with this set before
# scipy is first imported (Numba imports scipy, so: here, before truncfast);
# without it that check of tests/test_sklearn_frontend.py would be skipped.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import dataclasses  # noqa: E402
import zlib

import numpy as np
import pytest

import truncfast as tf

try:  # property tests: the same examples on every run, so CI cannot flake on a new draw
    import os as _os

    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("ci", derandomize=True, database=None)
    _hyp_settings.register_profile("explore", derandomize=False)  # new examples each run
    _hyp_settings.load_profile(_os.environ.get("TRUNCFAST_HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    pass

#: Relative agreement of backends with the oracles (naive loop, PyTorch), in
#: the norm of the compared quantity (docs/api.md: "agree to 1e-12 relative").
RTOL = 1e-12
#: For quantities that go through matrix inverses or products of layers
#: (layers ↔ cumulative maps, layer-by-layer networks, pseudo-inverses).
RTOL_COMPOSED = 1e-10
#: Central finite differences (step FD_EPS) against analytic derivatives.
FD_EPS = 1e-6
FD_RTOL = 1e-6

AVAILABLE_BACKENDS = [name for name, status in tf.backends().items() if status == "available"]


def seed_of(text: str) -> int:
    return zlib.crc32(text.encode())


@pytest.fixture(scope="session")
def dask_cluster():
    """A dask.distributed LocalCluster (in-process workers, 2 × 1 thread) for the whole session.

    Started on first use by the ``backend`` fixture's "dask" parameter; every
    dask computation of those tests runs on it (it is the default client).
    """
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                       dashboard_address=":0", silence_logs=50)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(params=AVAILABLE_BACKENDS)
def backend(request) -> str:
    """Every backend available here: numpy, numba, the C core once it is built, and dask
    (in-memory data cut into blocks and run on a LocalCluster, ``dask_cluster``)."""
    if request.param == "dask":
        client = request.getfixturevalue("dask_cluster")
        with client.as_current():
            yield request.param
        return
    yield request.param


@pytest.fixture
def rng(request) -> np.random.Generator:
    return np.random.default_rng(seed_of(request.node.nodeid))


# ----------------------------------------------------------------- helpers ---

def rel_err(actual, expected) -> float:
    """‖actual − expected‖ / ‖expected‖ (Frobenius); absolute if expected is 0."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    diff = float(np.linalg.norm((actual - expected).ravel()))
    scale = float(np.linalg.norm(expected.ravel()))
    return diff / scale if scale > 0 else diff


def assert_rel(actual, expected, rtol: float = RTOL, what: str = "") -> None:
    """Relative agreement in the norm of the quantity (exact if expected is zero)."""
    err = rel_err(actual, expected)
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:.1g}"


def random_orthogonal(rng: np.random.Generator, M: int) -> np.ndarray:
    """Haar-random orthogonal matrix: QR of a Gaussian with the sign fix."""
    q, r = np.linalg.qr(rng.standard_normal((M, M)))
    return q * np.sign(np.diag(r))


def signed_permutation(rng: np.random.Generator, M: int) -> np.ndarray:
    return np.eye(M)[rng.permutation(M)] * rng.choice([-1.0, 1.0], size=M)[:, None]


@dataclasses.dataclass
class Problem:
    R: np.ndarray
    b: np.ndarray
    X: np.ndarray
    labels: np.ndarray
    targets: np.ndarray
    W_out: np.ndarray
    b_out: np.ndarray
    Y: np.ndarray

    @property
    def euclid(self):
        """Arguments of loss / gradient: (R, b, X, labels, targets)."""
        return self.R, self.b, self.X, self.labels, self.targets

    @property
    def standard(self):
        """Arguments of standard_loss / standard_gradient."""
        return self.R, self.b, self.X, self.labels, self.W_out, self.b_out, self.Y


def make_problem(rng: np.random.Generator, N: int = 12, M: int = 3, L: int = 2, Q: int = 2,
                 P: int | None = None, kind: str = "random") -> Problem:
    """A random problem.

    ``kind="random"``: Haar R, Gaussian biases and data (mixed sectors).
    ``kind="boundary"``: signed-permutation R, integer biases and data, so many
    pre-activations are exactly 0 at every layer (H(0) = 0 is exercised).
    Every cluster is non-empty when N ≥ Q.  ``P`` is the output width
    (default M) of ``W_out`` (P, M), ``b_out`` (P,), ``Y`` (Q, P).
    """
    P = M if P is None else P
    labels = rng.integers(0, Q, size=N)
    labels[: min(N, Q)] = np.arange(min(N, Q))
    labels = rng.permutation(labels)
    if kind == "random":
        R = np.array([random_orthogonal(rng, M) for _ in range(L)])
        b = 0.7 * rng.standard_normal((L, M))
        X = rng.standard_normal((N, M))
        targets = rng.standard_normal((Q, M))
    elif kind == "boundary":
        R = np.array([signed_permutation(rng, M) for _ in range(L)])
        b = rng.integers(-1, 2, size=(L, M)).astype(np.float64)
        X = rng.integers(-2, 3, size=(N, M)).astype(np.float64)
        targets = rng.integers(-2, 3, size=(Q, M)) / 2.0
    else:  # pragma: no cover
        raise ValueError(kind)
    W_out = rng.standard_normal((P, M))
    b_out = rng.standard_normal(P)
    Y = rng.standard_normal((Q, P))
    return Problem(R, b, X, labels, targets, W_out, b_out, Y)



TRAJECTORY_FIELDS = ("R", "b", "times", "steps", "loss", "grad_b_norm", "omega_norm", "ortho_defect", "counts",
                     "Rs", "bs")


def assert_trajectories_bitwise(a, b) -> None:
    """Two Trajectory objects hold the same bytes in every record and the same state."""
    for name in TRAJECTORY_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and x.dtype == y.dtype, name
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), f"{name} differs bitwise"
    assert a.reorthonormalizations == b.reorthonormalizations
    assert a.last_step == b.last_step
    np.testing.assert_array_equal(a.collapse_times, b.collapse_times)


@pytest.fixture
def random_problem(rng):
    """Factory: ``random_problem(N=..., M=..., L=..., Q=..., P=..., kind=...)``."""

    def factory(**kw) -> Problem:
        return make_problem(rng, **kw)

    return factory


def separated_problem(rng: np.random.Generator, M: int, Q: int, n_per: int = 12,
                      spread: float = 0.1, scale: float = 10.0) -> Problem:
    """Cluster-separated data with L = Q ≤ M (docs/theory.md §6).

    Cluster j is centred at c_j = scale·e_j; layer j's cone K_j has its apex
    near c_j (so it truncates cluster j partially) and a frame R_j that maps
    every other direction c_k − c_j into the open positive orthant with margin
    (built by Procrustes from vectors w_k = scale·e_k' + c·1 with the same Gram
    matrix), so τ_j leaves every other cluster — before or after its own
    truncation — untouched.
    """
    assert 1 <= Q <= M
    C = scale * np.eye(M)[:Q]
    c = scale * (np.sqrt(M + 1.0) - 1.0) / M  # margin: coordinates ≥ c > 0
    R = np.empty((Q, M, M))
    for j in range(Q):
        others = [k for k in range(Q) if k != j]
        if not others:
            R[j] = random_orthogonal(rng, M)
            continue
        D = np.array([C[k] - C[j] for k in others]).T  # (M, Q-1)
        Wt = np.array([scale * np.eye(M)[i] + c for i in range(len(others))]).T
        u, _, vt = np.linalg.svd(Wt @ D.T)
        R[j] = u @ vt
        assert np.allclose(R[j] @ D, Wt, atol=1e-9 * scale)
    b = np.array([-R[j] @ C[j] for j in range(Q)]) + rng.uniform(-0.05, 0.05, size=(Q, M))
    labels = rng.permutation(np.repeat(np.arange(Q), n_per))
    X = C[labels] + spread * rng.standard_normal((len(labels), M))
    targets = C + rng.standard_normal((Q, M))
    P = M
    return Problem(R, b, X, labels, targets, rng.standard_normal((P, M)), rng.standard_normal(P),
                   rng.standard_normal((Q, P)))


def pytest_collection_modifyitems(config, items):
    """Keep ``@pytest.mark.slow`` tests out of the default run (CI's budget).

    They run when the marker is selected explicitly: ``pytest -m slow``.
    """
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
