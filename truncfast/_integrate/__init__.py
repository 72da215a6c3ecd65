"""Layer 4: integration — the public ``integrate``/``resume``, the run loop,
checkpoints, solvers and the ``Trajectory`` (docs/theory.md §9), one path for
every backend."""
