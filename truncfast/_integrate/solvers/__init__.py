"""Time-stepping solvers: small objects, one per file, registered by name in ``base``."""
