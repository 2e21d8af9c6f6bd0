"""Programs traced once per machine: ``jax.export`` beside JAX's compilation cache.

JAX's persistent compilation cache (the CLI enables it) skips XLA compilation when a program is
run again in a new process, but not Python tracing and lowering, which dominate a warm run.
:func:`exported` saves the lowered program (StableHLO, ``jax.export``) in a folder beside the
compilation cache, keyed by the program's name, its static settings, the input shapes and dtypes,
the JAX version and backend and a hash of this package's source; a rerun deserialises it and the
compilation cache serves the executable. Without a compilation cache directory it is a no-op.
Generic infrastructure: it imports nothing of the model.
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


_REGISTERED: set[type] = set()


def _namedtuple_types(tree, found: list) -> list:
    """Every NamedTuple class in a pytree (nested), in first-seen order."""
    if isinstance(tree, tuple) and hasattr(type(tree), "_fields"):
        if type(tree) not in found:
            found.append(type(tree))
        for x in tree:
            _namedtuple_types(x, found)
    elif isinstance(tree, (list, tuple)):
        for x in tree:
            _namedtuple_types(x, found)
    elif isinstance(tree, dict):
        for x in tree.values():
            _namedtuple_types(x, found)
    return found


def _name(t: type) -> str:
    return f"{t.__module__}:{t.__qualname__}"


def _register(types) -> None:
    """Let ``jax.export`` (de)serialise these NamedTuple pytree types, by their import path."""
    for t in types:
        if t not in _REGISTERED:
            export.register_namedtuple_serialization(t, serialized_name=_name(t))
            _REGISTERED.add(t)


def _import(name: str) -> type:
    """The class of an import path ``module:qualname`` written by :func:`_name`."""
    import importlib

    module, _, qual = name.partition(":")
    obj = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


@functools.cache
def source_hash() -> str:
    """SHA-256 of every module of ``optimizer/`` and ``kernels/`` (a code change invalidates exports)."""
    h = hashlib.sha256()
    for p in sorted([*ROOT.glob("optimizer/**/*.py"), *ROOT.glob("kernels/**/*.py")]):
        h.update(str(p.relative_to(ROOT)).encode())
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
"""A file is the SHA-256 of the rest, one line naming the NamedTuple types of the program's inputs
and outputs (registered before deserialising), then the serialised program: flipped or missing bytes
that ``jax.export`` would still parse (and that fail only when called) are caught on load."""


@functools.lru_cache(maxsize=64)
def _load(path: Path) -> Callable | None:
    try:
        data = path.read_bytes()
        body = data[DIGEST:]
        if hashlib.sha256(body).digest() != data[:DIGEST]:
            return None
        header, _, blob = body.partition(b"\n")
        _register(_import(n) for n in header.decode().split() if n)
        return jax.jit(export.deserialize(bytearray(blob)).call)
    except Exception:  # a corrupt or incompatible file is re-exported
        return None


def exported(name: str, fn: Callable, args: tuple, static: str = "") -> Callable:
    """A jitted callable equal to ``fn`` on arguments shaped like ``args``, traced at most once per machine.

    Args:
      name: program name (file prefix). fn: a jitted function (its static arguments already bound).
      args: example arguments (arrays or pytrees of arrays; only shapes and dtypes are used).
      static: a string of every static setting that ``fn`` closes over (part of the key).

    NamedTuple pytrees in the inputs and outputs are registered for serialisation by their import
    path, so this module knows no program's types.
    """
    where = export_dir()
    if where is None:
        return fn
    path = where / f"{name}-{program_key(name, static, args)}.jaxexport"
    if path.exists():
        call = _load(path)
        if call is not None:
            return call
        _load.cache_clear()
    specs = jax.tree.map(_spec, args)
    types = _namedtuple_types(args, [])
    _register(types)
    exp = export.export(fn)(*specs)
    out = jax.tree_util.tree_unflatten(exp.out_tree, [0] * exp.out_tree.num_leaves)
    types = _namedtuple_types(out, types)
    _register(types)
    blob = exp.serialize()
    body = " ".join(_name(t) for t in types).encode() + b"\n" + bytes(blob)
    io.atomic_write(path, lambda p: p.write_bytes(hashlib.sha256(body).digest() + body))
    return _load(path) or jax.jit(exp.call)
