"""The JAX settings tokenmargin needs, switched on by the entry points, never by an import.

* float64: money, volumes of 10^14 tokens a day and calibration need it; every entry point that
  builds arrays from a config calls :func:`require_float64`, which refuses float32 with a clear
  error instead of computing a plan in single precision.
* The persistent compilation cache and its repair (:mod:`optimizer.jax_cache`), and through it the
  exported programs of :mod:`optimizer.aot`.

The console scripts call :func:`configure`; a library user calls ``optimizer.runtime.configure()``
(or sets ``jax.config.update("jax_enable_x64", True)`` themselves) before building a problem.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

from optimizer.errors import TokenmarginError

CACHE_ENV = "TOKENMARGIN_JAX_CACHE"
"""Environment variable: the compilation cache folder, or ``off``."""


class Float32Error(TokenmarginError):
    """JAX computes in float32 where tokenmargin needs float64."""


def enable_float64() -> None:
    """Let JAX compute in float64 (``jax_enable_x64``)."""
    jax.config.update("jax_enable_x64", True)


def require_float64(where: str) -> None:
    """Raise :class:`Float32Error` unless JAX computes in float64."""
    if not jax.config.jax_enable_x64:
        raise Float32Error(
            f"{where} computes in float64 (money, volumes and calibration lose digits in float32), but JAX is "
            f"in float32 mode. Call optimizer.runtime.configure() or jax.config.update('jax_enable_x64', True) "
            f"before using the library; the tokenmargin commands do this themselves")


def cache_dir() -> Path | None:
    """The compilation cache folder (``$TOKENMARGIN_JAX_CACHE``, default ``~/.cache/tokenmargin/jax``; None when off)."""
    where = os.environ.get(CACHE_ENV, str(Path.home() / ".cache" / "tokenmargin" / "jax"))
    return None if where.lower() in ("off", "0", "none", "") else Path(where)


def enable_compilation_cache() -> None:
    """Persist compiled XLA programs across runs; corrupt entries are deleted and rewritten."""
    where = cache_dir()
    if where is None:
        return
    jax.config.update("jax_compilation_cache_dir", str(where))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)
    from optimizer import jax_cache

    jax_cache.install()


def configure(cache: bool = True) -> None:
    """Everything the console scripts switch on: float64 and (``cache``) the compilation cache."""
    enable_float64()
    if cache:
        enable_compilation_cache()
