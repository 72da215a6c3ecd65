"""truncfast.jax: the custom VJP against jax.grad of a pure-JAX version of the loss.

The oracle writes C_E in jax.numpy (docs/theory.md §§3, 4) with min(u, 0) = u − relu(u),
whose derivative at u = 0 is 1 (relu'(0) = 0 in JAX): a pre-activation exactly 0
counts as truncated, H(0) = 0, as in truncfast (jnp.minimum would split ties ½–½).
R moves on O(M) only, through R = expm((W − Wᵀ)/2) R₀, for the reason given in
tests/test_torch_frontend.py.  64-bit mode is switched on for this module only.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from conftest import RTOL, assert_rel, make_problem

import truncfast as tf
from truncfast.jax import effective_loss


@pytest.fixture(autouse=True, scope="module")
def x64():
    """64-bit mode for this module, restored afterwards.

    The process-wide setting, not the ``jax.enable_x64`` context manager: that one is
    thread-local, and under jit XLA may run the host callback on another thread, where
    JAX would narrow the callback's float64 results to float32 and reject them.
    """
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def jax_loss(R, b, X, labels, targets):
    """C_E in plain JAX: τ_ℓ(z) = z − R_ℓᵀ min(R_ℓ z + b_ℓ, 0), composed."""
    z = X
    for l in range(R.shape[0]):
        u = z @ R[l].T + b[l]
        z = z - (u - jax.nn.relu(u)) @ R[l]
    d = z - targets[labels]
    return jnp.sum(d * d) / (2 * X.shape[0])


def skew(W):
    return 0.5 * (W - jnp.swapaxes(W, -1, -2))


def exp_param(W, R0):
    return jax.vmap(jax.scipy.linalg.expm)(skew(W)) @ R0


def arrays(p):
    return [jnp.asarray(a) for a in p.euclid]


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("kind", ["random", "boundary"])
def test_matches_pure_jax(rng, kind, jit):
    """Loss and the gradients in W (R = expm(skew W) R₀), b, X, targets within 1e-12 of jax.grad."""
    p = make_problem(rng, N=40, M=4, L=3, Q=3, kind=kind)
    R0, b, X, labels, T = arrays(p)
    # W = 0 for boundary data keeps R = R₀ exactly, so pre-activations exactly 0 exercise H(0) = 0
    W = jnp.zeros_like(R0) if kind == "boundary" else 0.3 * jax.random.normal(jax.random.key(1), R0.shape)
    results = []
    for fn in (effective_loss, jax_loss):
        vg = jax.value_and_grad(lambda W, b, X, T, fn=fn: fn(exp_param(W, R0), b, X, labels, T), argnums=(0, 1, 2, 3))
        if jit:
            vg = jax.jit(vg)
        loss, grads = vg(W, b, X, T)
        results.append((loss, *grads))
    for name, ours, ref in zip(("loss", "W", "b", "X", "targets"), *results):
        assert ours.dtype == jnp.float64
        assert_rel(np.asarray(ours), np.asarray(ref), RTOL, name)


def test_same_numbers_as_numpy_api_and_tangent_gradient(rng):
    p = make_problem(rng, N=30, M=3, L=2, Q=2)
    args = arrays(p)
    loss, (gR, gb) = jax.value_and_grad(effective_loss, argnums=(0, 1))(*args)
    ref_b, omega = tf.gradient(*p.euclid)
    assert float(loss) == tf.loss(*p.euclid)
    np.testing.assert_array_equal(np.asarray(gb), ref_b)
    np.testing.assert_array_equal(np.asarray(gR), omega @ p.R)
    # R's gradient is the tangent projection P_A(∇_R C Rᵀ) R of the plain Euclidean gradient
    G = jax.grad(jax_loss)(*args) @ jnp.swapaxes(args[0], 1, 2)
    assert_rel(np.asarray(gR), np.asarray(skew(G) @ args[0]), RTOL, "tangent part")


def test_one_host_call_with_only_the_perturbed_gradients(rng, monkeypatch):
    import truncfast.jax as tfj

    calls = []
    real = tfj.loss_and_gradients

    def spy(*a, **kw):
        calls.append((kw["want_state"], kw["want_x"], kw["want_targets"]))
        return real(*a, **kw)

    monkeypatch.setattr(tfj, "loss_and_gradients", spy)
    args = arrays(make_problem(rng, N=20, M=3, L=2, Q=2))
    effective_loss(*args)
    jax.grad(effective_loss, argnums=1)(*args)
    jax.grad(effective_loss, argnums=2)(*args)
    jax.jit(jax.grad(effective_loss, argnums=4))(*args)
    assert calls == [(False, False, False), (True, False, False), (False, True, False), (False, False, True)]


def test_vmap(rng):
    p = make_problem(rng, N=20, M=3, L=2, Q=2)
    R, b, X, labels, T = arrays(p)
    bs = jnp.stack([b, b + 0.5, b - 0.5])
    values = jax.vmap(lambda b: effective_loss(R, b, X, labels, T))(bs)
    grads = jax.vmap(jax.grad(lambda b: effective_loss(R, b, X, labels, T)))(bs)
    for k in range(3):
        bk = np.asarray(bs[k])
        assert float(values[k]) == tf.loss(p.R, bk, p.X, p.labels, p.targets)
        np.testing.assert_array_equal(np.asarray(grads[k]), tf.gradient(p.R, bk, p.X, p.labels, p.targets)[0])


def test_float32_without_x64(rng):
    """Default JAX mode: float32 in, float32 out, computed in float64 on the host."""
    p = make_problem(rng, N=20, M=3, L=2, Q=2)
    with jax.enable_x64(False):
        args = arrays(p)
        assert args[0].dtype == jnp.float32 and args[3].dtype == jnp.int32
        loss, gb = jax.value_and_grad(effective_loss, argnums=1)(*args)
        assert loss.dtype == gb.dtype == jnp.float32
        host = [np.asarray(a) for a in args]
    assert float(loss) == np.float32(tf.loss(*host))
    np.testing.assert_array_equal(np.asarray(gb), tf.gradient(*host)[0].astype(np.float32))


# ------------------------------------------------------------------- errors ---

def test_shape_errors_at_trace_time_with_the_numpy_message(rng):
    p = make_problem(rng, N=10, M=3, L=2, Q=2)
    R, b, X, labels, T = arrays(p)
    cases = [(R, b, X[:, :2], labels, T), (R, b[:1], X, labels, T), (R, b, X, labels[:5], T),
             (R, b, X, labels.astype(jnp.float64), T), (R[:, :2], b, X, labels, T), (R, b, X, labels, T[:, None])]
    for args in cases:
        host = [np.asarray(a) for a in args]
        with pytest.raises(tf.InputError) as numpy_err:
            tf.loss(*host)
        with pytest.raises(tf.InputError) as jax_err:
            jax.jit(effective_loss)(*args)  # raised while tracing, before anything runs
        assert str(jax_err.value) == str(numpy_err.value)


@pytest.mark.parametrize("how", ["eager", "grad"])
def test_value_errors_raise_input_error(rng, how):
    p = make_problem(rng, N=10, M=3, L=2, Q=2)
    R, b, X, labels, T = arrays(p)
    f = effective_loss if how == "eager" else jax.grad(effective_loss, argnums=1)
    for args, match in (((2 * R, b, X, labels, T), "R: layer 0 is not orthogonal"),
                        ((R, b, X.at[4, 1].set(jnp.inf), labels, T), r"X: contains inf at index \[4, 1\]"),
                        ((R, b, X, labels + 5, T), "labels: value .* out of range")):
        with pytest.raises(tf.InputError, match=match):
            f(*args)


def test_value_errors_under_jit_carry_the_message(rng):
    """Inside jit the host call runs after tracing; JAX reports the error with our message in it."""
    p = make_problem(rng, N=10, M=3, L=2, Q=2)
    R, b, X, labels, T = arrays(p)
    with pytest.raises(jax.errors.JaxRuntimeError, match="InputError: R: layer 0 is not orthogonal"):
        jax.jit(effective_loss)(2 * R, b, X, labels, T)


def test_not_an_array():
    with pytest.raises(tf.InputError, match="X: expected a JAX or NumPy array, got list"):
        effective_loss(jnp.eye(2)[None], jnp.zeros((1, 2)), [[0.0, 1.0]], jnp.zeros(1, int), jnp.zeros((1, 2)))
