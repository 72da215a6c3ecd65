"""The flow classifier against a same-size ReLU network trained by backprop, on scikit-learn's digits.

Data: the 1,797 bundled 8×8 digits (64 features, 10 classes, no download),
standardised, split 75 / 25 stratified (seed 0).  Both models have L hidden
layers of width M = 64 (the number of features):

* ``TruncationFlowClassifier(n_layers=L)``: (R, b) learned by the effective
  gradient flow towards the class means (docs/theory.md §§3–9, Lie–Euler);
  prediction = class mean nearest to τ^(L)(x);
* ``MLPClassifier(hidden_layer_sizes=(64,) * L)``: ReLU, softmax output,
  cross-entropy, Adam, trained by backpropagation (scikit-learn).

For reference: the nearest-centroid rule (the flow classifier at τ = identity)
and the flow classifier's initial state (``steps=0``).  Prints test accuracy
and fit time of each; the flow's time is the integration (one right-hand side
per step), the MLP's the optimiser's.

Run:  python examples/digits_flow_vs_mlp.py [--layers 10] [--steps 800] [--dt 0.5]   (about a minute)
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neighbors import NearestCentroid
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from truncfast.sklearn import TruncationFlowClassifier


def timed_fit(model, X, y):
    t0 = time.perf_counter()
    model.fit(X, y)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=10, help="hidden layers L of both models (default 10)")
    ap.add_argument("--steps", type=int, default=800, help="flow steps (default 800)")
    ap.add_argument("--dt", type=float, default=0.5, help="flow step, normalised units (default 0.5)")
    ap.add_argument("--mlp-iter", type=int, default=500, help="MLP epochs at most (default 500)")
    args = ap.parse_args()

    digits = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.25, random_state=0, stratify=digits.target)
    M = X_train.shape[1]
    L = args.layers
    print(f"digits: {len(X_train)} training / {len(X_test)} test points, M = {M} features, 10 classes; "
          f"L = {L} hidden layers of width {M}")

    models = {
        "nearest centroid (the flow at τ = identity)": make_pipeline(StandardScaler(), NearestCentroid()),
        "flow classifier, initial state (steps = 0)": make_pipeline(
            StandardScaler(), TruncationFlowClassifier(n_layers=L, steps=0)),
        f"flow classifier (Lie–Euler, dt = {args.dt:g}, {args.steps} steps)": make_pipeline(
            StandardScaler(), TruncationFlowClassifier(n_layers=L, dt=args.dt, steps=args.steps)),
        f"MLP, {L} × {M} ReLU, Adam (backprop)": make_pipeline(
            StandardScaler(), MLPClassifier(hidden_layer_sizes=(M,) * L, max_iter=args.mlp_iter, random_state=0)),
    }
    width = max(len(name) for name in models)
    print(f"{'model':<{width}}  {'test acc.':>9}  {'train acc.':>10}  {'fit time':>9}")
    for name, model in models.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            seconds = timed_fit(model, X_train, y_train)
        print(f"{name:<{width}}  {model.score(X_test, y_test):9.3f}  {model.score(X_train, y_train):10.3f}"
              f"  {seconds:8.2f}s", flush=True)
        last = model[-1]
        if isinstance(last, TruncationFlowClassifier) and last.steps:
            traj = last.trajectory_
            print(f"{'':<{width}}  loss C_E {traj.loss[0]:.4f} -> {traj.loss[-1]:.4f} (normalised units), "
                  f"{traj.settings.get('backend', '?')} backend, {1e3 * seconds / last.steps:.1f} ms per step")
        if isinstance(last, MLPClassifier):
            print(f"{'':<{width}}  {last.n_iter_} epochs, {sum(w.size for w in last.coefs_) + sum(c.size for c in last.intercepts_)} parameters "
                  f"(flow classifier: {L * M * (M + 1)} in (R, b) + {10 * M} in the targets)")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
