"""Pure JAX compute kernels of tokenmargin.

Every function here maps pytrees of arrays to arrays: no pandas, no Hydra, no I/O, and no Python
branching on traced values, so each one works under ``jit``, ``grad`` and ``vmap``.
"""
