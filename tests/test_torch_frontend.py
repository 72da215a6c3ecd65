"""truncfast.torch: the custom operator against opcheck, gradcheck, plain autograd and tf.integrate.

Oracles: PyTorch autograd of the loss written as tensor ops (docs/theory.md §4,
τ_ℓ(z) = z − R_ℓᵀ min(R_ℓ z + b_ℓ, 0)), finite differences (gradcheck) and
the NumPy API.  R is only ever moved on O(M): gradcheck and autograd go
through a parametrisation R = φ(W) with values in O(M), because the loss is
defined there only (a perturbed R is refused) and the operator returns the
tangent part of the gradient, exact exactly for such parametrisations.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import naive
from conftest import RTOL, assert_rel, make_problem

import truncfast as tf
from truncfast.torch import effective_loss

OP = torch.ops.truncfast.effective_loss.default


# ------------------------------------------------------------------ helpers ---

def torch_loss(R, b, X, labels, targets):
    """C_E by plain autograd: τ_ℓ(z) = z − R_ℓᵀ min(R_ℓ z + b_ℓ, 0), composed (docs/theory.md §§3, 4)."""
    z = X
    for l in range(R.shape[0]):
        z = z - torch.clamp(z @ R[l].T + b[l], max=0.0) @ R[l]
    d = z - targets[labels]
    return (d * d).sum() / (2 * X.shape[0])


def skew(W):
    return 0.5 * (W - W.transpose(-1, -2))


def exp_param(W, R0):
    """R = expm((W − Wᵀ)/2) R₀ ∈ O(M) for any W."""
    return torch.linalg.matrix_exp(skew(W)) @ R0


class OrthogonalStack(torch.nn.Module):
    """L matrices kept on O(M) by torch.nn.utils.parametrizations.orthogonal (matrix_exp map)."""

    def __init__(self, R0: np.ndarray):
        super().__init__()
        L, M, _ = R0.shape
        self.layers = torch.nn.ModuleList(torch.nn.Linear(M, M, bias=False, dtype=torch.float64) for _ in range(L))
        for lin, Rl in zip(self.layers, R0):
            torch.nn.utils.parametrizations.orthogonal(lin, orthogonal_map="matrix_exp")
            with torch.no_grad():
                lin.weight = torch.tensor(Rl)

    def originals(self):
        return [lin.parametrizations.weight.original for lin in self.layers]

    def rotations(self, originals):
        params = {f"layers.{i}.parametrizations.weight.original": W for i, W in enumerate(originals)}
        return torch.func.functional_call(self, params, ())

    def forward(self):
        return torch.stack([lin.weight for lin in self.layers])


def tensors(p, requires_grad=True, dtype=torch.float64):
    R, b, X, T = (torch.tensor(a, dtype=dtype, requires_grad=requires_grad) for a in (p.R, p.b, p.X, p.targets))
    return R, b, X, torch.tensor(p.labels), T


def margin(R, b, X) -> float:
    """Smallest |pre-activation| over all points and layers: finite differences must not cross a kink."""
    out = np.inf
    for x in X:
        z = np.array(x)
        for Rl, bl in zip(R, b):
            out = min(out, np.abs(Rl @ z + bl).min())
            z = naive.tau_layer(Rl, bl, z)
    return out


def smooth_problem(rng, **kw):
    """A random problem whose points are all ≥ 1e-3 away from every sector boundary."""
    for _ in range(100):
        p = make_problem(rng, **kw)
        if margin(p.R, p.b, p.X) > 1e-3:
            return p
    raise AssertionError("no problem with a margin found")  # pragma: no cover


# ------------------------------------------------------------------ opcheck ---

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("wanted", [(True, True, True), (True, False, False), (False, True, False),
                                    (False, False, True), (False, False, False)])
def test_opcheck(rng, dtype, wanted):
    p = make_problem(rng, N=20, M=3, L=2, Q=2)
    R, b, X, labels, T = tensors(p, dtype=dtype, requires_grad=False)
    want_state, want_x, want_t = wanted
    R.requires_grad_(want_state)
    b.requires_grad_(want_state)
    X.requires_grad_(want_x)
    T.requires_grad_(want_t)
    result = torch.library.opcheck(OP, (R, b, X, labels.to(torch.int32), T, *wanted, "auto"))
    assert set(result.values()) == {"SUCCESS"}, result


# ------------------------------------------------------------- values, API ---

@pytest.mark.parametrize("kind", ["random", "boundary"])
def test_same_numbers_as_numpy_api(rng, kind):
    p = make_problem(rng, N=30, M=4, L=3, Q=3, kind=kind)
    R, b, X, labels, T = tensors(p)
    loss = effective_loss(R, b, X, labels, T)
    loss.backward()
    gb, omega = tf.gradient(*p.euclid)
    assert loss.dtype == torch.float64 and loss.shape == ()
    assert_rel(loss.item(), tf.loss(*p.euclid), RTOL, "loss")
    assert_rel(b.grad.numpy(), gb, RTOL, "grad b")
    assert_rel(R.grad.numpy(), omega @ p.R, RTOL, "grad R = omega @ R")


def test_tangent_part_of_the_euclidean_gradient(rng):
    """R.grad is the projection P_A(∇_R C Rᵀ) R of plain autograd's Euclidean gradient."""
    p = make_problem(rng, N=30, M=4, L=3, Q=2)
    R, b, X, labels, T = tensors(p)
    effective_loss(R, b, X, labels, T).backward()
    R2 = torch.tensor(p.R, requires_grad=True)
    torch_loss(R2, torch.tensor(p.b), torch.tensor(p.X), labels, torch.tensor(p.targets)).backward()
    G = R2.grad @ R2.detach().transpose(1, 2)
    tangent = skew(G) @ R2.detach()
    assert_rel(R.grad.numpy(), tangent.numpy(), RTOL, "tangent part")
    # and the normal part really is what was dropped: the Euclidean gradient differs
    assert float((R2.grad - tangent).abs().max()) > 1e-6


@pytest.mark.parametrize("kind", ["random", "boundary"])
def test_matches_plain_autograd_through_exp_parametrisation(rng, kind):
    """Loss and every gradient (W of R = expm(skew W) R₀, b, X, targets) within 1e-12 of autograd."""
    p = make_problem(rng, N=40, M=4, L=3, Q=3, kind=kind)
    R0 = torch.tensor(p.R)
    W0 = 0.3 * torch.randn(p.R.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    if kind == "boundary":  # W = 0 keeps R = R₀ exactly: pre-activations exactly 0 test H(0) = 0 (clamp's rule)
        W0.zero_()
    labels = torch.tensor(p.labels)
    results = []
    for fn in (effective_loss, torch_loss):
        W, b, X, T = (a.clone().requires_grad_() for a in (W0, torch.tensor(p.b), torch.tensor(p.X),
                                                          torch.tensor(p.targets)))
        loss = fn(exp_param(W, R0), b, X, labels, T)
        loss.backward()
        results.append((loss.detach(), W.grad, b.grad, X.grad, T.grad))
    for name, ours, ref in zip(("loss", "W", "b", "X", "targets"), *results):
        assert_rel(ours.numpy(), ref.numpy(), RTOL, name)


def test_matches_plain_autograd_through_torch_orthogonal(rng):
    """The same through torch.nn.utils.parametrizations.orthogonal (the parameter PyTorch users train)."""
    p = make_problem(rng, N=40, M=3, L=2, Q=2)
    labels = torch.tensor(p.labels)
    grads = []
    for fn in (effective_loss, torch_loss):
        stack = OrthogonalStack(p.R)
        with torch.no_grad():  # move off the initial point so the map is not at its base
            for W in stack.originals():
                W.add_(0.2 * torch.ones_like(W).tril(-1))
        b = torch.tensor(p.b, requires_grad=True)
        loss = fn(stack(), b, torch.tensor(p.X), labels, torch.tensor(p.targets))
        loss.backward()
        grads.append([W.grad.clone() for W in stack.originals()] + [b.grad])
    for ours, ref in zip(*grads):
        assert_rel(ours.numpy(), ref.numpy(), RTOL, "orthogonal parametrisation")


# ---------------------------------------------------------------- gradcheck ---

def test_gradcheck_through_exp_parametrisation(rng):
    p = smooth_problem(rng, N=10, M=3, L=2, Q=2)
    R0 = torch.tensor(p.R)
    labels = torch.tensor(p.labels)
    W = (0.01 * torch.randn(p.R.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    args = [W.requires_grad_()] + [torch.tensor(a, requires_grad=True) for a in (p.b, p.X, p.targets)]
    assert margin(exp_param(W, R0).detach().numpy(), p.b, p.X) > 1e-4

    def f(W, b, X, T):
        return effective_loss(exp_param(W, R0), b, X, labels, T)

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_through_torch_orthogonal(rng):
    p = smooth_problem(rng, N=10, M=3, L=2, Q=2)
    stack = OrthogonalStack(p.R)
    originals = [W.detach().clone().requires_grad_() for W in stack.originals()]
    labels, X, T = torch.tensor(p.labels), torch.tensor(p.X), torch.tensor(p.targets)
    b = torch.tensor(p.b, requires_grad=True)

    def f(b, *originals):
        return effective_loss(stack.rotations(list(originals)), b, X, labels, T)

    assert torch.autograd.gradcheck(f, (b, *originals), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_data_and_targets(rng):
    """b, X and targets directly (R fixed on O(M))."""
    p = smooth_problem(rng, N=10, M=3, L=3, Q=2)
    R, labels = torch.tensor(p.R), torch.tensor(p.labels)
    args = tuple(torch.tensor(a, requires_grad=True) for a in (p.b, p.X, p.targets))
    assert torch.autograd.gradcheck(lambda b, X, T: effective_loss(R, b, X, labels, T), args,
                                    eps=1e-6, atol=1e-8, rtol=1e-6)


def test_perturbed_rotation_is_refused(rng):
    """Why gradcheck goes through a parametrisation: off O(M) the loss is not defined."""
    p = make_problem(rng, N=10, M=3, L=2, Q=2)
    R, b, X, labels, T = tensors(p)
    bumped = R.detach().clone()
    bumped[1, 0, 0] += 1e-6  # the step of gradcheck's central differences
    with pytest.raises(tf.InputError, match="R: layer 1 is not orthogonal"):
        effective_loss(bumped, b, X, labels, T)


# ------------------------------------------------------------- training loop ---

def test_sgd_equals_lie_euler_step_for_step(rng):
    """torch.optim.SGD(lr=dt) on (W, b) with R = expm(skew W) R_k, W = 0 re-based after each step, is Lie–Euler.

    At W = 0: ∂C/∂W = skew(∂C/∂R · R_kᵀ) = omega (R_k orthogonal, omega antisymmetric),
    so the step sets W = −dt·omega and R_{k+1} = expm(−dt·omega) R_k, b_{k+1} = b_k − dt·grad_b:
    the definition of integrate(method="lie-euler") (CONTRACT).
    """
    p = make_problem(rng, N=200, M=4, L=3, Q=3)
    dt, steps = 0.2, 10
    traj = tf.integrate(*p.euclid, dt=dt, steps=steps, method="lie-euler", record_every=1)
    X, labels, T = torch.tensor(p.X), torch.tensor(p.labels), torch.tensor(p.targets)
    Rk = torch.tensor(p.R)
    W = torch.zeros_like(Rk, requires_grad=True)
    b = torch.tensor(p.b, requires_grad=True)
    opt = torch.optim.SGD([W, b], lr=dt)
    moved = 0.0
    for k in range(steps + 1):
        assert_rel(Rk.numpy(), traj.Rs[k], RTOL, f"R at step {k}")
        assert_rel(b.detach().numpy(), traj.bs[k], RTOL, f"b at step {k}")
        if k == steps:
            break
        opt.zero_grad()
        loss = effective_loss(exp_param(W, Rk), b, X, labels, T)
        assert_rel(loss.item(), traj.loss[k], RTOL, f"loss at step {k}")
        loss.backward()
        opt.step()
        with torch.no_grad():
            Rk = exp_param(W, Rk)
            W.zero_()
        moved = max(moved, float(np.abs(Rk.numpy() - p.R).max()))
    assert moved > 1e-3 and traj.reorthonormalizations == 0


# ----------------------------------------------------------- dtypes, copies ---

def test_float32_in_float32_out(rng):
    p = make_problem(rng, N=30, M=3, L=2, Q=2)
    R, b, X, labels, T = tensors(p, dtype=torch.float32)
    loss = effective_loss(R, b, X, labels.to(torch.int16), T)
    loss.backward()
    assert loss.dtype == R.grad.dtype == b.grad.dtype == X.grad.dtype == T.grad.dtype == torch.float32
    # the kernels compute in float64 on the float32 values (the NumPy API on the same float32
    # arrays, orthogonality tolerance widened to float32 as there): the result is that, rounded once
    as32 = [a.detach().numpy() for a in (R, b, X)] + [p.labels, T.detach().numpy()]
    assert loss.item() == np.float32(tf.loss(*as32))
    gb, omega = tf.gradient(*as32)
    np.testing.assert_array_equal(b.grad.numpy(), gb.astype(np.float32))
    np.testing.assert_array_equal(R.grad.numpy(), (omega @ as32[0].astype(np.float64)).astype(np.float32))


def test_float64_contiguous_tensors_are_not_copied(rng, monkeypatch):
    import truncfast._embed as embed

    seen = {}
    real = embed.euclid_general

    def spy(bk, R, b, X, labels, targets, want_grad):
        seen.update(R=R, b=b, X=X, targets=targets)
        return real(bk, R, b, X, labels, targets, want_grad)

    monkeypatch.setattr(embed, "euclid_general", spy)
    p = make_problem(rng, N=30, M=3, L=2, Q=2)
    R, b, X, labels, T = tensors(p)
    effective_loss(R, b, X, labels, T)
    for name, t in (("R", R), ("b", b), ("X", X), ("targets", T)):
        assert np.shares_memory(seen[name], t.detach().numpy()), name


def test_only_required_gradients_are_computed(rng, monkeypatch):
    import truncfast.torch as tft

    calls = []
    real = tft.loss_and_gradients

    def spy(*args, **kw):
        calls.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(tft, "loss_and_gradients", spy)
    p = make_problem(rng, N=30, M=3, L=2, Q=2)
    R, b, X, labels, T = tensors(p, requires_grad=False)
    b.requires_grad_()
    effective_loss(R, b, X, labels, T).backward()
    assert R.grad is None and b.grad is not None
    with torch.no_grad():
        out = effective_loss(R, b, X, labels, T)
    assert not out.requires_grad
    X.requires_grad_()
    effective_loss(R, b, X, labels, T).backward()
    assert [(c["want_state"], c["want_x"], c["want_targets"]) for c in calls] == [
        (True, False, False), (False, False, False), (True, True, False)]


def test_second_derivatives_are_refused(rng):
    p = make_problem(rng, N=10, M=3, L=2, Q=2)
    R, b, X, labels, T = tensors(p)
    (g,) = torch.autograd.grad(effective_loss(R, b, X, labels, T), b, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), b)


# ------------------------------------------------------------------- errors ---

def _bad_cases(p):
    R, b, X, labels, T = tensors(p, requires_grad=False)
    return {
        "not orthogonal": ((2 * R, b, X, labels, T), "R: layer 0 is not orthogonal"),
        "X width": ((R, b, X[:, :2], labels, T), r"X: expected shape \(\?, 3\)"),
        "b shape": ((R, b[:1], X, labels, T), r"b: expected shape \(2, 3\)"),
        "float labels": ((R, b, X, labels.double(), T), "labels: expected an integer array"),
        "label range": ((R, b, X, labels + 7, T), "labels: value .* out of range"),
        "NaN": ((R, b, X.index_fill(0, torch.tensor([3]), float("nan")), labels, T), r"X: contains nan at index \[3, 0\]"),
        "meta": ((R, b, X.to("meta"), labels, T), "X: is a meta tensor"),
        "not a tensor": ((R, b, p.X, labels, T), "X: expected a torch.Tensor"),
        "bfloat16": ((R, b, X, labels, T.to(torch.bfloat16)), "targets: dtype torch.bfloat16"),
        "complex": ((R, b, X.to(torch.complex128), labels, T), "X: expected a real numeric array"),
    }


@pytest.mark.parametrize("case", ["not orthogonal", "X width", "b shape", "float labels", "label range", "NaN",
                                  "meta", "not a tensor", "bfloat16", "complex"])
def test_bad_input_raises_input_error(rng, case):
    args, match = _bad_cases(make_problem(rng, N=10, M=3, L=2, Q=2))[case]
    with pytest.raises(tf.InputError, match=match):
        effective_loss(*args)


def test_same_message_as_numpy_api(rng):
    p = make_problem(rng, N=10, M=3, L=2, Q=2)
    R, b, X, labels, T = tensors(p, requires_grad=False)
    with pytest.raises(tf.InputError) as numpy_err:
        tf.loss(p.R, p.b, p.X[:, :2], p.labels, p.targets)
    with pytest.raises(tf.InputError) as torch_err:
        effective_loss(R, b, X[:, :2], labels, T)
    assert str(torch_err.value) == str(numpy_err.value)


def test_direct_operator_call_validates_too(rng):
    p = make_problem(rng, N=10, M=3, L=2, Q=2)
    R, b, X, labels, T = tensors(p, requires_grad=False)
    with pytest.raises(tf.InputError, match="labels: value"):
        OP(R, b, X, labels - 1, T, False, False, False, "auto")
