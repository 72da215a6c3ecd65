"""truncfast — the effective gradient flow of deep ReLU networks in input space.

Implements T. Chen, "Derivation of effective gradient flow equations and
dynamical truncation of training data in Deep Learning" (arXiv 2501.07400).
The public surface is fixed by docs/api.md; the mathematics by docs/theory.md
(``docs/`` maps sections to modules).
"""

from __future__ import annotations

from truncfast._kernels.numba_target import prefer_wide_vectors as _prefer_wide_vectors

_prefer_wide_vectors()  # before anything imports numba (see _numba_target)

from truncfast._backends.registry import backends as backends
from truncfast._errors import BackendUnavailable as BackendUnavailable
from truncfast._errors import DivergenceError as DivergenceError
from truncfast._errors import InputError as InputError
from truncfast._errors import InstabilityWarning as InstabilityWarning
from truncfast._errors import SeparationError as SeparationError
from truncfast._flow.diagnostics import Prop42Check as Prop42Check
from truncfast._flow.diagnostics import SectorMoments as SectorMoments
from truncfast._flow.diagnostics import check_prop42 as check_prop42
from truncfast._flow.diagnostics import sector_moments as sector_moments
from truncfast._errors import StepSizeError as StepSizeError
from truncfast._flow.exact import BiasComponentSolution as BiasComponentSolution
from truncfast._flow.exact import exact_bias_events as exact_bias_events
from truncfast._flow.exact import exact_bias_flow as exact_bias_flow
from truncfast._flow.flow_evaluator import FlowEvaluator as FlowEvaluator
from truncfast._flow.gradient import cluster_moments as cluster_moments
from truncfast._flow.gradient import gradient as gradient
from truncfast._flow.gradient import loss as loss
from truncfast._flow.gradient import standard_gradient as standard_gradient
from truncfast._flow.gradient import standard_loss as standard_loss
from truncfast._integrate.api import integrate as integrate
from truncfast._integrate.api import resume as resume
from truncfast._integrate.standard import integrate_standard as integrate_standard
from truncfast._flow.model import aligned_from_cumulative as aligned_from_cumulative
from truncfast._flow.model import cumulative_to_layers as cumulative_to_layers
from truncfast._flow.model import layers_to_cumulative as layers_to_cumulative
from truncfast._flow.model import orthonormalize as orthonormalize
from truncfast._flow.model import pullback_targets as pullback_targets
from truncfast._integrate.trajectory import Trajectory as Trajectory
from truncfast._flow.neural_collapse import neural_collapse as neural_collapse
from truncfast._flow.output_layer import OutputFlow as OutputFlow
from truncfast._flow.output_layer import collapsed_output_flow as collapsed_output_flow
from truncfast._flow.output_layer import collapsed_output_loss as collapsed_output_loss
from truncfast._flow.output_layer import collapsed_output_rhs as collapsed_output_rhs
from truncfast._flow.output_layer import conserved_gram as conserved_gram
from truncfast._flow.output_layer import positive_sector_output_flow as positive_sector_output_flow
from truncfast._flow.output_layer import positive_sector_output_solution as positive_sector_output_solution
from truncfast._flow.output_layer import spectral_gap_bound as spectral_gap_bound
from truncfast._flow.truncation import sector_codes as sector_codes
from truncfast._flow.truncation import truncate as truncate
from truncfast._kernels.parallel import get_num_threads as get_num_threads
from truncfast._kernels.parallel import set_num_threads as set_num_threads
from truncfast._validate import orthogonality_defect as orthogonality_defect

from truncfast._version import __version__ as __version__

__all__ = [
    "BackendUnavailable",
    "BiasComponentSolution",
    "DivergenceError",
    "FlowEvaluator",
    "InputError",
    "InstabilityWarning",
    "OutputFlow",
    "Prop42Check",
    "SectorMoments",
    "SeparationError",
    "StepSizeError",
    "Trajectory",
    "aligned_from_cumulative",
    "backends",
    "check_prop42",
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
    "integrate_standard",
    "layers_to_cumulative",
    "loss",
    "neural_collapse",
    "orthogonality_defect",
    "orthonormalize",
    "positive_sector_output_flow",
    "positive_sector_output_solution",
    "pullback_targets",
    "resume",
    "sector_codes",
    "sector_moments",
    "set_num_threads",
    "spectral_gap_bound",
    "standard_gradient",
    "standard_loss",
    "truncate",
]
