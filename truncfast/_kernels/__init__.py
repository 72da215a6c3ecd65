"""Layer 1 of the house: kernels — arrays in, arrays out, no validation.

Numba kernels of the per-point flow (``numba_kernels``), BLAS-blocked kernels
for wide layers (``blas_kernels``), the matrix exponential and Cayley map
(``expm``), the compiled step loop (``step_loop``), the NumPy reference
(``reference``), the only importer of the cffi C core (``ccore``) and its
builder (``build_ccore``), the thread pool (``parallel``) and Numba's cache
and code-generation settings (``numba_cache``, ``numba_target``).  Nothing
here imports a higher layer; nothing here validates (docs/DESIGN.md).
"""
