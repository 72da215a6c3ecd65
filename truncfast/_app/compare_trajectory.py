"""``truncfast compare``, trajectory level: does backprop stay aligned, and does the flow predict it?

Three runs from the same start on the same data, compared at matched flow times
(gradient descent with learning rate lr is at flow time k·lr after k steps):

* ``effective flow`` — the aligned flow of C_E in (R, b) (``tf.integrate``);
* ``unaligned flow`` — the flow of C_E in general cumulative weights (W, b) from
  W = R (``truncfast.unaligned.integrate``, docs/theory.md §13);
* ``backprop (layers)`` — full-batch gradient descent on the layer weights with the
  standard loss (``truncfast.backprop.train_backprop``), its networks recorded.

Measured at every recorded time (docs/alignment_experiment.md writes the formulas out):

* ``alignment_defect`` (K, L): ‖offdiag(S_ℓ)‖_F/‖S_ℓ‖_F of each cumulative weight's
  polar factor (0 for the aligned flow by construction);
* ``pattern_agreement`` (K, L): the share of points whose sector code at layer ℓ is
  the same in the flow (aligned or unaligned) as in the network at the nearest
  recorded backprop time; and, as a baseline (``"initial state"``), the share whose
  code in the network is still the one it had at time 0;
* ``collapse_times`` (Q,): first recorded time at which some layer fully truncates
  cluster j (None if never);
* ``neural_collapse``: NC1–NC4 (``tf.neural_collapse``) of τ^(L)(x) for the flows
  (classifier: nearest pulled-back target ỹ_c) and of the last hidden layer for
  backprop (classifier: nearest reference output y_c, rows W_{L+1}ᵀ y_c).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["RUNS", "measure", "draw_panels", "network_forward"]

RUNS = ("effective flow", "unaligned flow", "backprop (layers)")


def network_forward(net: Any, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(codes (N, L) uint64, last hidden layer (N, M), outputs (N, P))`` of a ReLUNetwork, in NumPy."""
    N, M = X.shape
    weights = np.uint64(1) << np.arange(M, dtype=np.uint64)
    z = np.asarray(X, dtype=np.float64)
    codes = np.zeros((N, net.L), dtype=np.uint64)
    for l in range(net.L):
        u = z @ net.Ws[l].T + net.bs[l]
        codes[:, l] = ((u > 0).astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
        z = np.maximum(u, 0.0)
    return codes, z, z @ net.W_last.T + net.b_last


def _collapsed(codes: np.ndarray, labels: np.ndarray, Q: int) -> np.ndarray:
    """(Q,) True where some layer fully truncates (code 0) every point of cluster j."""
    out = np.zeros(Q, dtype=bool)
    for j in range(Q):
        cj = codes[labels == j]
        out[j] = cj.size > 0 and bool(np.any(np.all(cj == 0, axis=0)))
    return out


def _first_times(times: np.ndarray, collapsed: np.ndarray) -> list:
    out = []
    for j in range(collapsed.shape[1]):
        hit = np.flatnonzero(collapsed[:, j])
        out.append(float(times[hit[0]]) if hit.size else None)
    return out


def measure(X: np.ndarray, labels: np.ndarray, targets: np.ndarray, Y: np.ndarray, flow: Any, unal: Any,
            networks: list, bp_times: np.ndarray) -> dict:
    """Every trajectory-level measure, per run and recorded time (lists, JSON-ready)."""
    import truncfast.unaligned as tu
    from truncfast._flow.neural_collapse import NC_KEYS, nearest_target, neural_collapse
    from truncfast._flow.truncation import sector_codes, truncate

    Q = targets.shape[0]
    labels = np.asarray(labels, dtype=np.int64)
    res: dict[str, dict] = {name: {"times": [], "defect": [], "nc": {k: [] for k in NC_KEYS}, "collapsed": []}
                            for name in RUNS}
    # backprop first: its codes are the reference of the pattern agreement
    bp_codes = []
    r = res["backprop (layers)"]
    for t, net in zip(bp_times, networks):
        codes, hidden, out = network_forward(net, X)
        bp_codes.append(codes)
        Wc, _ = net.cumulative()
        r["times"].append(float(t))
        r["defect"].append(tu.alignment_defect(Wc).tolist())
        pred = nearest_target(out, Y)
        nc = neural_collapse(hidden, labels, classifier=Y @ net.W_last, predictions=pred)
        for k in NC_KEYS:
            r["nc"][k].append(nc[k])
        r["collapsed"].append(_collapsed(codes, labels, Q))
    bp_times = np.asarray(bp_times, dtype=np.float64)
    agreement: dict[str, dict] = {}
    for name, traj, fwd, codes_of in (
            ("effective flow", flow, lambda k: truncate(flow.Rs[k], flow.bs[k], X),
             lambda k: sector_codes(flow.Rs[k], flow.bs[k], X)),
            ("unaligned flow", unal, lambda k: tu.truncate(unal.Ws[k], unal.bs[k], X),
             lambda k: tu.sector_codes(unal.Ws[k], unal.bs[k], X))):
        r = res[name]
        agree = {"times": [], "values": []}
        for k, t in enumerate(traj.times):
            codes = codes_of(k)
            feats = fwd(k)
            r["times"].append(float(t))
            W = flow.Rs[k] if name == "effective flow" else unal.Ws[k]
            r["defect"].append(tu.alignment_defect(W).tolist())
            nc = neural_collapse(feats, labels, classifier=targets, predictions=nearest_target(feats, targets))
            for key in NC_KEYS:
                r["nc"][key].append(nc[key])
            r["collapsed"].append(_collapsed(codes, labels, Q))
            if len(bp_times):
                i = int(np.argmin(np.abs(bp_times - t)))
                agree["times"].append(float(t))
                agree["values"].append(np.mean(codes == bp_codes[i], axis=0).tolist())
        agreement[name] = agree
    # baseline: how many points keep their initial code in the network (the "no dynamics" prediction)
    agreement["initial state"] = {"times": [float(t) for t in bp_times],
                                  "values": [np.mean(c == bp_codes[0], axis=0).tolist() for c in bp_codes]}
    return {
        "alignment_defect": {n: {"times": res[n]["times"], "values": res[n]["defect"]} for n in RUNS},
        "pattern_agreement": agreement,
        "collapse_times": {n: _first_times(np.asarray(res[n]["times"]), np.array(res[n]["collapsed"]).reshape(-1, Q))
                           for n in RUNS},
        "neural_collapse": {n: {"times": res[n]["times"], **{k: _nan_none(v) for k, v in res[n]["nc"].items()}}
                            for n in RUNS},
    }


def _nan_none(values: list) -> list:
    return [None if (v is None or not np.isfinite(v)) else float(v) for v in values]


#: Colours of the runs (the effective flow and backprop as in compare.STYLE).
COLOURS = {"effective flow": "#1f77b4", "unaligned flow": "#2ca02c", "backprop (layers)": "#d62728"}


def draw_panels(axs: dict, m: dict) -> None:
    """Alignment defect, pattern agreement, NC1 and NC2–NC4 against flow time, on ``axs`` keys
    ``defect``, ``agree``, ``nc1``, ``nc234``; collapse times as vertical ticks on ``agree``."""
    styles = ("-", "--", ":", "-.")
    for name in ("unaligned flow", "backprop (layers)"):
        d = m["alignment_defect"][name]
        vals = np.asarray(d["values"], dtype=np.float64)
        if vals.size:
            for l in range(vals.shape[1]):
                axs["defect"].plot(d["times"], vals[:, l], color=COLOURS[name], ls=styles[l % 4], lw=1.4,
                                   label=f"{name}, layer {l + 1}" if l < 4 else None)
    axs["defect"].set_title("Alignment defect ‖offdiag S_ℓ‖/‖S_ℓ‖ of each cumulative weight (aligned flow: 0)")
    axs["defect"].set_ylabel("defect")
    for name, a in m["pattern_agreement"].items():
        vals = np.asarray(a["values"], dtype=np.float64)
        if not vals.size:
            continue
        if name == "initial state":  # the baseline, averaged over layers
            axs["agree"].plot(a["times"], vals.mean(axis=1), color="0.4", lw=1.2, ls=(0, (1, 1)),
                              label="backprop vs its own start (mean over layers)")
            continue
        for l in range(vals.shape[1]):
            axs["agree"].plot(a["times"], vals[:, l], color=COLOURS[name], ls=styles[l % 4], lw=1.4,
                              label=f"{name} vs backprop, layer {l + 1}" if l < 4 else None)
    for name, times in m["collapse_times"].items():
        for t in times:
            if t is not None:
                axs["agree"].axvline(t, color=COLOURS[name], lw=0.8, alpha=0.5)
    axs["agree"].set_ylim(-0.02, 1.02)
    axs["agree"].set_title("Same sector code as the network (vertical lines: cluster collapse times)")
    axs["agree"].set_ylabel("share of points")
    for name in RUNS:
        nc = m["neural_collapse"][name]
        y = np.array([np.nan if v is None else v for v in nc["nc1"]], dtype=np.float64)
        axs["nc1"].semilogy(nc["times"], np.maximum(y, 1e-16), color=COLOURS[name], lw=1.6, label=name)
        for key, ls in (("nc2_equinorm", "-"), ("nc3", "--"), ("nc4", ":")):
            y = np.array([np.nan if v is None else v for v in nc[key]], dtype=np.float64)
            axs["nc234"].plot(nc["times"], y, color=COLOURS[name], ls=ls, lw=1.4,
                              label=f"{name}: {key}" if name == "backprop (layers)" or key == "nc3" else None)
    axs["nc1"].set_title("NC1 = tr(Σ_W Σ_B⁺)/C (flows: τ^(L)(x); backprop: last hidden layer)")
    axs["nc234"].set_title("NC2 equinorm (solid), NC3 self-duality (dashed), NC4 mismatch (dotted)")
    for key in ("defect", "agree", "nc1", "nc234"):
        axs[key].set_xlabel("flow time (backprop: step × lr)")
        axs[key].grid(True, alpha=0.3)
        axs[key].legend(fontsize=7, ncol=2)
