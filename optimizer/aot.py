"""Sweep programs traced once per machine: ``jax.export`` beside JAX's compilation cache.

JAX's persistent compilation cache (the CLI enables it) skips XLA compilation when a program is
run again in a new process, but not Python tracing and lowering, which take 1–2 s for a sweep's
chunk program and about 1 s for the base scenario's assembly. :func:`exported` saves the lowered
program (StableHLO, ``jax.export``) in a folder beside the compilation cache, keyed by the
program's name, its static settings, the input shapes and dtypes, the JAX version and backend and
a hash of this package's source; a rerun deserialises it in about 10 ms and the compilation cache
serves the executable. Without a compilation cache directory it is a no-op.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
from jax import export

from optimizer import io

ROOT = Path(__file__).resolve().parent.parent
SUBDIR = "tokenmargin-export"


@functools.cache
def _register() -> None:
    """Let ``jax.export`` serialise the NamedTuple pytrees that cross a sweep program's boundary."""
    from kernels.demand import DemandParams
    from kernels.roofline import Deployment
    from kernels.serving import Speculation
    from optimizer.dual import DualSolution, Primal
    from optimizer.objective import Decision
    from optimizer.problem import Numbers, Pools, Problem, ServingTable
    from optimizer.sweep import SweepResult

    for t in (DemandParams, Deployment, Speculation, DualSolution, Primal, Decision, Numbers, Pools, Problem,
              ServingTable, SweepResult):
        export.register_namedtuple_serialization(t, serialized_name=f"tokenmargin.{t.__name__}")


@functools.cache
def source_hash() -> str:
    """SHA-256 of every module of ``optimizer/`` and ``kernels/`` (a code change invalidates exports)."""
    h = hashlib.sha256()
    for p in sorted([*ROOT.glob("optimizer/*.py"), *ROOT.glob("kernels/*.py")]):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def export_dir() -> Path | None:
    """Where exports live: ``<jax_compilation_cache_dir>/tokenmargin-export`` (None: no cache set)."""
    where = jax.config.jax_compilation_cache_dir
    return Path(where) / SUBDIR if where else None


def _spec(x) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x), weak_type=bool(getattr(x, "weak_type", False)))


def program_key(name: str, static: str, args: tuple) -> str:
    """Cache key of one program: name, static settings, input tree, shapes, dtypes, JAX, backend, source."""
    specs = jax.tree.map(_spec, args)
    parts = [name, static, str(jax.tree.structure(specs)), str(jax.tree.leaves(specs)), jax.__version__,
             jax.default_backend(), str(jax.config.jax_enable_x64), source_hash()]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:20]


DIGEST = 32
"""A file is the SHA-256 of the serialised program, then the program: flipped or missing bytes that
``jax.export`` would still parse (and that fail only when called) are caught on load."""


@functools.lru_cache(maxsize=64)
def _load(path: Path) -> Callable | None:
    try:
        data = path.read_bytes()
        blob = data[DIGEST:]
        if hashlib.sha256(blob).digest() != data[:DIGEST]:
            return None
        return jax.jit(export.deserialize(bytearray(blob)).call)
    except Exception:  # a corrupt or incompatible file is re-exported
        return None


def exported(name: str, fn: Callable, args: tuple, static: str = "") -> Callable:
    """A jitted callable equal to ``fn`` on arguments shaped like ``args``, traced at most once per machine.

    Args:
      name: program name (file prefix). fn: a jitted function (its static arguments already bound).
      args: example arguments (arrays or pytrees of arrays; only shapes and dtypes are used).
      static: a string of every static setting that ``fn`` closes over (part of the key).
    """
    where = export_dir()
    if where is None:
        return fn
    _register()
    path = where / f"{name}-{program_key(name, static, args)}.jaxexport"
    if path.exists():
        call = _load(path)
        if call is not None:
            return call
        _load.cache_clear()
    exp = export.export(fn)(*jax.tree.map(_spec, args))
    blob = exp.serialize()
    io.atomic_write(path, lambda p: p.write_bytes(hashlib.sha256(blob).digest() + blob))
    return _load(path) or jax.jit(exp.call)
