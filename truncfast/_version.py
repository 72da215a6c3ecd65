"""The package version (one place; read by the package root, checkpoints and run directories)."""

__version__ = "0.1.0"
