"""PyTorch references: the equivalent ReLU network and two gradient-descent trainers.

The effective flow (docs/theory.md §§4–5) is the gradient flow of a deep ReLU network
written in aligned cumulative parameters (R, b).  This module builds that
network in ordinary *layer* weights and trains it with PyTorch, so that the
engine can be checked against, and timed against, what a user would otherwise
write:

* :class:`ReLUNetwork` — hidden layers ``x⁽ℓ⁾ = σ(W_ℓ x⁽ℓ⁻¹⁾ + b_ℓ)`` and an affine
  output layer, built from (R, b) via :func:`truncfast.cumulative_to_layers`
  with aligned cumulative weights ``W^(ℓ) = D_ℓ R_ℓ`` (D_ℓ positive diagonal) and
  cumulative biases ``b^(ℓ) = D_ℓ β_ℓ``.  Because ``σ(D v) = D σ(v)``, its
  truncation maps are exactly those of (R, β) (docs/theory.md §4) for every choice of D.
* :func:`cumulative_gd` — reference (a): autograd on the *same* Euclidean loss
  C_E in the cumulative parameters (R, b as tensors), gradient descent on b and
  the exponential-map retraction ``R ← expm(−dt·P_A(∇_R C Rᵀ)) R``.  Its iterates
  equal ``truncfast.integrate(method="lie-euler")`` to rounding (docs/api.md).
* :func:`train_backprop` — reference (b): plain full-batch gradient descent on
  every layer weight and bias (hidden and output) on the standard loss C_std,
  recording the loss and the truncation counts read off the network's own
  activations (sector codes of the pre-activations, docs/theory.md §2).

PyTorch is optional: it is imported lazily, and a missing install raises an
:class:`ImportError` naming the command that installs the tested version.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from truncfast._flow.model import cumulative_to_layers
from truncfast._validate import check_problem

__all__ = [
    "TORCH_INSTALL",
    "require_torch",
    "ReLUNetwork",
    "GDResult",
    "cumulative_loss",
    "cumulative_gd",
    "train_backprop",
    "truncation_counts",
]

#: The PyTorch version the references are tested with (the ``test`` extra pins it).
TORCH_INSTALL = "pip install torch==2.13.0"


def require_torch():
    """Import and return :mod:`torch`, or raise an ImportError saying how to install it."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"truncfast.backprop needs PyTorch, which is not installed ({exc}); install it with: {TORCH_INSTALL}"
        ) from None
    return torch


# --------------------------------------------------------------------------- the network


@dataclass
class ReLUNetwork:
    """A ReLU network of L hidden layers of width M and an affine output layer (docs/theory.md §1).

    ``Ws`` (L, M, M), ``bs`` (L, M): hidden layer weights and biases;
    ``W_last`` (P, M), ``b_last`` (P,): the output layer W_{L+1}, b_{L+1} (layer,
    not cumulative, parameters).  Arrays are NumPy float64; :meth:`tensors`
    gives PyTorch leaves to train.
    """

    Ws: np.ndarray
    bs: np.ndarray
    W_last: np.ndarray
    b_last: np.ndarray

    @property
    def L(self) -> int:
        return int(self.Ws.shape[0])

    @classmethod
    def from_cumulative(cls, R: Any, b: Any, W_out: Any = None, b_out: Any = None,
                        d: Any = None) -> "ReLUNetwork":
        """The network whose truncation maps are those of (R, b) (docs/theory.md §4).

        ``d`` (L, M) > 0 are the diagonals of D_ℓ (default 1: W^(ℓ) = R_ℓ); the
        cumulative weights are ``W^(ℓ) = diag(d_ℓ) R_ℓ`` and biases ``d_ℓ ⊙ b_ℓ``.
        ``W_out`` (P, M), ``b_out`` (P,) are the *cumulative* output weight and bias
        W^(L+1), b^(L+1) of :func:`truncfast.standard_loss` (default: identity, 0),
        so ``W_{L+1} = W^(L+1) (W^(L))⁻¹`` and ``b_{L+1} = b^(L+1) − W_{L+1} b^(L)``.
        """
        R = np.asarray(R, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        L, M, _ = R.shape
        d = np.ones((L, M)) if d is None else np.asarray(d, dtype=np.float64)
        if d.shape != (L, M) or not np.all(d > 0):
            raise ValueError(f"d: expected positive diagonals of shape ({L}, {M}), got shape {d.shape}")
        Wc = d[:, :, None] * R
        bc = d * b
        Ws, bs = cumulative_to_layers(Wc, bc)
        W_out = np.eye(M) if W_out is None else np.asarray(W_out, dtype=np.float64)
        b_out = np.zeros(W_out.shape[0]) if b_out is None else np.asarray(b_out, dtype=np.float64)
        # W_{L+1} = W^(L+1) (W^(L))⁻¹  ⇔  W^(L)ᵀ W_{L+1}ᵀ = W^(L+1)ᵀ
        W_last = np.linalg.solve(Wc[-1].T, W_out.T).T
        b_last = b_out - W_last @ bc[-1]
        return cls(Ws, bs, W_last, b_last)

    def tensors(self, requires_grad: bool = False) -> list:
        """``[W_1..W_L, b_1..b_L, W_{L+1}, b_{L+1}]`` as fresh float64 tensors."""
        torch = require_torch()
        arrs = [*self.Ws, *self.bs, self.W_last, self.b_last]
        return [torch.tensor(a, dtype=torch.float64, requires_grad=requires_grad) for a in arrs]

    @classmethod
    def from_tensors(cls, params: list) -> "ReLUNetwork":
        L = (len(params) - 2) // 2
        a = [p.detach().cpu().numpy().copy() for p in params]
        return cls(np.stack(a[:L]), np.stack(a[L:2 * L]), a[2 * L], a[2 * L + 1])

    def cumulative(self) -> tuple[np.ndarray, np.ndarray]:
        """Cumulative hidden weights and biases W^(ℓ), b^(ℓ) (docs/theory.md §1)."""
        from truncfast._flow.model import layers_to_cumulative

        return layers_to_cumulative(self.Ws, self.bs)

    def forward(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(output (N, P), pre-activation sector codes (N, L) uint64)`` for the rows of X."""
        torch = require_torch()
        with torch.no_grad():
            out, pre = _forward(self.tensors(), torch.as_tensor(np.asarray(X, dtype=np.float64)))
        return out.numpy(), _codes(pre)

    def truncate(self, X: Any) -> np.ndarray:
        """τ^(L)(x) read off the network: ``(W^(L))⁻¹ (x⁽ᴸ⁾ − b^(L))`` (docs/theory.md §2)."""
        torch = require_torch()
        params = self.tensors()
        with torch.no_grad():
            z = torch.as_tensor(np.asarray(X, dtype=np.float64))
            for l in range(self.L):
                z = torch.relu(z @ params[l].T + params[self.L + l])
        Wc, bc = self.cumulative()
        return np.linalg.solve(Wc[-1], (z.numpy() - bc[-1]).T).T


def _forward(params: list, X):
    """Output and list of pre-activations of the layer-weight network (tensors)."""
    import torch

    L = (len(params) - 2) // 2
    z = X
    pre = []
    for l in range(L):
        u = z @ params[l].T + params[L + l]
        pre.append(u)
        z = torch.relu(u)
    return z @ params[2 * L].T + params[2 * L + 1], pre


def _codes(pre: list) -> np.ndarray:
    """Sector codes (N, L) uint64 from pre-activations: bit i set iff u_i > 0 (H(0) = 0)."""
    M = pre[0].shape[1]
    weights = (np.uint64(1) << np.arange(M, dtype=np.uint64))
    cols = [((u.detach().numpy() > 0).astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64) for u in pre]
    return np.stack(cols, axis=1)


def truncation_counts(codes: np.ndarray, M: int) -> np.ndarray:
    """Per layer: points (untruncated, partially truncated, fully truncated), (L, 3) int64.

    Same classes and order as a :class:`truncfast.Trajectory`'s ``counts`` summed over clusters.
    """
    full_mask = np.uint64((1 << M) - 1) if M < 64 else np.uint64(2**64 - 1)
    unt = (codes == full_mask).sum(axis=0)
    full = (codes == 0).sum(axis=0)
    return np.stack([unt, codes.shape[0] - unt - full, full], axis=1).astype(np.int64)


# --------------------------------------------------------------------------- results


@dataclass
class GDResult:
    """What a reference trainer recorded.

    ``steps`` (K,): recorded step indices (0, every ``record_every``, and the last);
    ``loss`` (K,): loss *before* that step's update (at the state of that step);
    ``wall`` (K,): seconds since the loop started when that state was reached;
    ``counts`` (K, L, 3): untruncated / partially / fully truncated points per layer.
    ``state``: the final parameters (``(R, b)`` for :func:`cumulative_gd`, a
    :class:`ReLUNetwork` for :func:`train_backprop`); ``seconds_per_step``: loop
    wall time over the number of steps.
    """

    steps: np.ndarray
    loss: np.ndarray
    wall: np.ndarray
    counts: np.ndarray
    state: Any
    seconds_per_step: float
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- reference (a)


def cumulative_loss(R, b, X, T):
    """C_E of docs/theory.md §3 as a differentiable tensor expression (the forms of docs/theory.md §4).

    ``T`` holds every row's target ỹ_{j(n)} (N, M).  Returns ``(loss, [R_ℓ z_{ℓ-1} + b_ℓ])``.
    """
    import torch

    z = X
    pre = []
    for l in range(R.shape[0]):
        u = z @ R[l].T + b[l]
        pre.append(u)
        z = (torch.relu(u) - b[l]) @ R[l]  # τ_ℓ(z) = R_ℓᵀ (σ(R_ℓ z + b_ℓ) − b_ℓ)
    return ((z - T) ** 2).sum() / (2 * X.shape[0]), pre


def cumulative_gd(R: Any, b: Any, X: Any, labels: Any, targets: Any, *, dt: float, steps: int,
                  record_every: int = 1, train_weights: bool = True, train_biases: bool = True,
                  reorthonormalize_tol: float | None = None) -> GDResult:
    """Reference (a): gradient descent with autograd on C_E in (R, b), exponential retraction.

    One step: ``(∇_b C, ∇_R C)`` by autograd at the current state, ``Ω_ℓ = P_A(∇_{R_ℓ} C R_ℓᵀ)``,
    then ``b ← b − dt ∇_b C`` and ``R_ℓ ← expm(−dt Ω_ℓ) R_ℓ`` for every layer at once —
    the definition of ``integrate(method="lie-euler")`` (docs/theory.md §9), whose iterates
    this reproduces to rounding.  Like the integrator, R is re-orthonormalised
    (polar factor) after a step whose defect max|RᵀR − I| exceeds
    ``reorthonormalize_tol`` (default ``_config.REORTHONORMALIZE_TOL``).
    Stops early, with ``info["diverged"] = True``, at the first non-finite loss
    (as :func:`train_backprop`; never a run of NaN).
    """
    torch = require_torch()
    from truncfast import _config

    R, b, X, labels, targets = check_problem(R, b, X, labels, targets)
    tol = _config.REORTHONORMALIZE_TOL if reorthonormalize_tol is None else reorthonormalize_tol
    Xt = torch.from_numpy(np.ascontiguousarray(X))
    Tt = torch.from_numpy(targets)[torch.from_numpy(labels.astype(np.int64))]
    Rt, bt = torch.tensor(R), torch.tensor(b)
    M = R.shape[1]
    eye = torch.eye(M, dtype=torch.float64)
    rec_steps, losses, walls, counts = [], [], [], []
    info: dict = {"diverged": False}
    t0 = time.perf_counter()
    for k in range(steps + 1):
        Rk = Rt.clone().requires_grad_(train_weights)
        bk = bt.clone().requires_grad_(train_biases)
        loss, pre = cumulative_loss(Rk, bk, Xt, Tt)
        lv = loss.detach().item()
        if k % record_every == 0 or k == steps or not np.isfinite(lv):
            rec_steps.append(k)
            losses.append(lv)
            walls.append(time.perf_counter() - t0)
            counts.append(truncation_counts(_codes(pre), M))
        if k == steps or not np.isfinite(lv):
            info["diverged"] = not np.isfinite(lv)
            break
        loss.backward()
        with torch.no_grad():
            if train_biases:
                bt = bt - dt * bk.grad
            if train_weights:
                G = Rk.grad @ Rt.transpose(1, 2)
                omega = 0.5 * (G - G.transpose(1, 2))
                Rt = torch.linalg.matrix_exp(-dt * omega) @ Rt
                gram = Rt.transpose(1, 2) @ Rt - eye
                if float(gram.abs().max()) > tol:
                    U, _, Vh = torch.linalg.svd(Rt)
                    Rt = U @ Vh
    wall = time.perf_counter() - t0
    return GDResult(np.array(rec_steps), np.array(losses), np.array(walls), np.stack(counts),
                    (Rt.numpy().copy(), bt.numpy().copy()), wall / max(steps, 1), info)


# --------------------------------------------------------------------------- reference (b)


def train_backprop(net: ReLUNetwork, X: Any, labels: Any, Y: Any, *, lr: float, steps: int,
                   record_every: int = 1, train_output: bool = True, record_networks: bool = False) -> GDResult:
    """Reference (b): full-batch gradient descent on the layer weights, standard loss.

    Loss ``C_std = 1/(2N) Σ_n |x⁽ᴸ⁺¹⁾(x_n) − y_{labels[n]}|²`` (docs/theory.md §3, ``Y`` is (Q, P));
    every step updates ``p ← p − lr ∂C/∂p`` for all W_ℓ, b_ℓ (ℓ ≤ L) and, with
    ``train_output``, the output layer — ordinary backprop, no cumulative
    parameters, no retraction.  Truncation counts are read off the network's
    own pre-activations.  Stops early (``info["diverged"]``) if the loss is not finite.
    With ``record_networks`` the network at every recorded step is kept in
    ``info["networks"]`` (a list of :class:`ReLUNetwork`, for trajectory-level
    comparisons such as ``truncfast compare``'s alignment defect).
    """
    torch = require_torch()
    X = np.ascontiguousarray(np.asarray(X, dtype=np.float64))
    labels = np.asarray(labels, dtype=np.int64)
    Y = np.asarray(Y, dtype=np.float64)
    N, M = X.shape
    Xt = torch.from_numpy(X)
    Yt = torch.from_numpy(Y)[torch.from_numpy(labels)]
    params = net.tensors(requires_grad=True)
    if not train_output:
        params[-2].requires_grad_(False)
        params[-1].requires_grad_(False)
    trained = [p for p in params if p.requires_grad]
    rec_steps, losses, walls, counts = [], [], [], []
    info: dict = {"diverged": False}
    if record_networks:
        info["networks"] = []
    t0 = time.perf_counter()
    k = 0
    for k in range(steps + 1):
        out, pre = _forward(params, Xt)
        loss = ((out - Yt) ** 2).sum() / (2 * N)
        lv = loss.detach().item()
        if k % record_every == 0 or k == steps or not np.isfinite(lv):
            rec_steps.append(k)
            losses.append(lv)
            walls.append(time.perf_counter() - t0)
            counts.append(truncation_counts(_codes(pre), M))
            if record_networks:
                info["networks"].append(ReLUNetwork.from_tensors(params))
        if k == steps or not np.isfinite(lv):
            info["diverged"] = not np.isfinite(lv)
            break
        grads = torch.autograd.grad(loss, trained)
        with torch.no_grad():
            for p, g in zip(trained, grads):
                p -= lr * g
    wall = time.perf_counter() - t0
    return GDResult(np.array(rec_steps), np.array(losses), np.array(walls), np.stack(counts),
                    ReLUNetwork.from_tensors(params), wall / max(k, 1), info)
