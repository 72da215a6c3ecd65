"""truncfast — the effective gradient flow of deep ReLU networks in input space.

Implements T. Chen, "Derivation of effective gradient flow equations and
dynamical truncation of training data in Deep Learning" (arXiv 2501.07400).
The public surface is fixed by CONTRACT.md; the mathematics by THEORY.md
(``docs/`` maps sections to modules).
"""

from __future__ import annotations

from ._numba_target import prefer_wide_vectors as _prefer_wide_vectors

_prefer_wide_vectors()  # before anything imports numba (see _numba_target)

from ._backends import backends as backends
from ._errors import BackendUnavailable as BackendUnavailable
from ._errors import DivergenceError as DivergenceError
from ._errors import InputError as InputError
from ._errors import SeparationError as SeparationError
from ._exact import BiasComponentSolution as BiasComponentSolution
from ._exact import exact_bias_events as exact_bias_events
from ._exact import exact_bias_flow as exact_bias_flow
from ._gradient import cluster_moments as cluster_moments
from ._gradient import gradient as gradient
from ._gradient import loss as loss
from ._gradient import standard_gradient as standard_gradient
from ._gradient import standard_loss as standard_loss
from ._integrate import integrate as integrate
from ._integrate import resume as resume
from ._model import aligned_from_cumulative as aligned_from_cumulative
from ._model import cumulative_to_layers as cumulative_to_layers
from ._model import layers_to_cumulative as layers_to_cumulative
from ._model import orthonormalize as orthonormalize
from ._model import pullback_targets as pullback_targets
from ._trajectory import Trajectory as Trajectory
from ._output_layer import OutputFlow as OutputFlow
from ._output_layer import collapsed_output_flow as collapsed_output_flow
from ._output_layer import collapsed_output_loss as collapsed_output_loss
from ._output_layer import collapsed_output_rhs as collapsed_output_rhs
from ._output_layer import conserved_gram as conserved_gram
from ._output_layer import positive_sector_output_flow as positive_sector_output_flow
from ._output_layer import positive_sector_output_solution as positive_sector_output_solution
from ._output_layer import spectral_gap_bound as spectral_gap_bound
from ._truncation import sector_codes as sector_codes
from ._truncation import truncate as truncate
from ._parallel import get_num_threads as get_num_threads
from ._parallel import set_num_threads as set_num_threads
from ._validate import orthogonality_defect as orthogonality_defect

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable",
    "BiasComponentSolution",
    "DivergenceError",
    "InputError",
    "OutputFlow",
    "SeparationError",
    "Trajectory",
    "aligned_from_cumulative",
    "backends",
    "cluster_moments",
    "collapsed_output_flow",
    "collapsed_output_loss",
    "collapsed_output_rhs",
    "conserved_gram",
    "cumulative_to_layers",
    "get_num_threads",
    "exact_bias_events",
    "exact_bias_flow",
    "gradient",
    "integrate",
    "layers_to_cumulative",
    "loss",
    "orthogonality_defect",
    "orthonormalize",
    "positive_sector_output_flow",
    "positive_sector_output_solution",
    "pullback_targets",
    "resume",
    "sector_codes",
    "set_num_threads",
    "spectral_gap_bound",
    "standard_gradient",
    "standard_loss",
    "truncate",
]
