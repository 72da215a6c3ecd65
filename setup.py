"""Build script: only lists the optional cffi C core (see csrc/ and truncfast/_build_ccore.py)."""

from setuptools import setup

setup()
