"""Compiled kernels of truncfast: arrays and scalars in, arrays out, no validation.

(Being filled: the flat ``truncfast/_kernels_*.py`` modules move here.)
``patterns`` holds the kernels of the pattern form of the general flow
(docs/theory.md §11), ``pattern_state`` the groups kept across steps that use them.
"""
