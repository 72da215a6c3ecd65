"""Data for the effective gradient flow: synthetic clusters, file loaders, a real data set.

Everything here produces the inputs of :func:`truncfast.integrate` — data ``X``
(N, M), ``labels`` (N,), ``targets`` (Q, M) and an initial state ``(R, b)`` —
in the paper's setting (docs/theory.md §§3, 6, 7):

* :func:`make_clusters` — Q well-separated Gaussian clusters in R^M, 10² to 10⁷
  points, generated chunk by chunk (float64, seeded, bitwise deterministic and
  independent of memory limits), optionally straight into a ``.npy`` memmap;
* :func:`paper_2d` — the two-cluster scenario of docs/theory.md §7 (frames R = (I, −I));
* :func:`load_file` — ``.npy`` / ``.npz`` / ``.csv`` with a label column, large
  ``.npy`` files memory-mapped;
* :func:`load_sklearn` — scikit-learn's bundled iris or digits (no download),
  reduced by PCA to a small M (needs the ``real`` extra);
* :func:`make_problem` — all of the above plus targets pulled back through an
  output layer (:func:`truncfast.pullback_targets`) and an initial state whose
  truncations are cluster-separated where the geometry allows it.

The code lives in ``truncfast._data`` (``generators``, ``loaders``).
"""

from __future__ import annotations

from truncfast._data.generators import GEN_CHUNK as GEN_CHUNK
from truncfast._data.generators import Problem as Problem
from truncfast._data.generators import make_clusters as make_clusters
from truncfast._data.generators import make_problem as make_problem
from truncfast._data.generators import paper_2d as paper_2d
from truncfast._data.generators import separated_frames as separated_frames
from truncfast._data.generators import simplex_vertices as simplex_vertices
from truncfast._data.generators import subsample as subsample
from truncfast._data.generators import toward_frames as toward_frames
from truncfast._data.loaders import load_file as load_file
from truncfast._data.loaders import load_sklearn as load_sklearn

__all__ = [
    "Problem",
    "make_clusters",
    "simplex_vertices",
    "separated_frames",
    "toward_frames",
    "paper_2d",
    "load_file",
    "load_sklearn",
    "make_problem",
    "subsample",
]
