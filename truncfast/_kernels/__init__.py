"""Numba kernels of truncfast (THEORY §§2, 5, 6): arrays and scalars in, arrays out; no validation."""
