"""Programs compiled once per machine: serialised XLA executables beside JAX's compilation cache.

JAX's persistent compilation cache skips XLA compilation when a program runs again in a new
process, but not Python tracing, lowering to StableHLO and the cache-key hash of the module, which
dominate a warm run. :func:`exported` instead keeps the *compiled executable* of each program
(``jax.experimental.serialize_executable``) in a folder beside the compilation cache, keyed by the
program's name, its static settings, the input tree, shapes and dtypes, the JAX and jaxlib
versions, the backend and device kind, x64 and a hash of this package's source; a rerun
deserialises it and calls it directly. Without a compilation cache directory it is a no-op.
Generic infrastructure: it imports nothing of the model (pytree types are pickled by reference).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import pickle
import threading
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp

from optimizer import io

ROOT = Path(__file__).resolve().parent.parent
SUBDIR = "tokenmargin-export"
SUFFIX = ".xla"
log = logging.getLogger("tokenmargin")


@functools.cache
def source_hash() -> str:
    """SHA-256 of every module of ``optimizer/`` and ``kernels/`` (a code change invalidates programs)."""
    h = hashlib.sha256()
    for p in sorted([*ROOT.glob("optimizer/**/*.py"), *ROOT.glob("kernels/**/*.py")]):
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def export_dir() -> Path | None:
    """Where programs live: ``<jax_compilation_cache_dir>/tokenmargin-export`` (None: no cache set)."""
    where = jax.config.jax_compilation_cache_dir
    return Path(where) / SUBDIR if where else None


def _spec(x) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x), weak_type=bool(getattr(x, "weak_type", False)))


@functools.cache
def _platform() -> str:
    import jaxlib

    d = jax.devices()[0]
    return "|".join([jax.__version__, jaxlib.__version__, jax.default_backend(), d.device_kind,
                     str(len(jax.devices())), str(getattr(d.client, "platform_version", ""))])


def program_key(name: str, static: str, args: tuple) -> str:
    """Cache key of one program: name, static settings, input tree, shapes, dtypes, platform, x64, source."""
    specs = jax.tree.map(_spec, args)
    parts = [name, static, str(jax.tree.structure(specs)), str(jax.tree.leaves(specs)), _platform(),
             str(jax.config.jax_enable_x64), source_hash()]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:20]


DIGEST = 32
"""A file is the SHA-256 of the rest, then the pickled (executable, input tree, output tree): flipped
or missing bytes are caught on load, and the program is compiled and written again."""


class Program:
    """A compiled executable that falls back to the jitted function for arguments it was not
    compiled for (another tree, shape, dtype or weak type). A stored executable that fails on its
    first call (e.g. it references code the new process lacks) is deleted and the function traced
    instead; the next run stores a fresh one."""

    def __init__(self, compiled, fn: Callable, name: str, path: Path | None = None):
        self.compiled, self.fn, self.name, self.path = compiled, fn, name, path
        self.checked = path is None  # compiled in this process: nothing to check

    def __call__(self, *args):
        if self.compiled is None:
            return self.fn(*args)
        try:
            out = self.compiled(*args)
        except (TypeError, ValueError) as e:  # the arguments differ from the example: trace as usual
            log.debug("program %s: %s; tracing instead", self.name, str(e).splitlines()[0] if str(e) else e)
            return self.fn(*args)
        except jax.errors.JaxRuntimeError as e:
            return self._broken(e, args)
        if not self.checked:
            try:
                jax.block_until_ready(out)
            except jax.errors.JaxRuntimeError as e:
                return self._broken(e, args)
            self.checked = True
        return out

    def _broken(self, e, args):
        if self.checked:
            raise e
        log.warning("stored program %s failed to run (%s); deleted it, tracing instead", self.name,
                    str(e).splitlines()[0])
        self.compiled = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        return self.fn(*args)


def _prepare_linear_algebra() -> None:
    """Initialise XLA:CPU's LAPACK kernels (eigh, solves), which JAX otherwise does when it first
    *lowers* a linear-algebra operation: a stored executable is never lowered, and calling one of
    those kernels uninitialised crashes the process."""
    try:
        from jax._src.lax.linalg import initialize_lapack
    except ImportError:  # a JAX without the hook initialises elsewhere
        return
    initialize_lapack()


def _load(path: Path):
    from jax.experimental import serialize_executable

    _prepare_linear_algebra()
    try:
        data = path.read_bytes()
        body = data[DIGEST:]
        if hashlib.sha256(body).digest() != data[:DIGEST]:
            return None
        return serialize_executable.deserialize_and_load(*pickle.loads(body))
    except Exception:  # a corrupt or incompatible file is compiled and written again
        return None


COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 1}
"""XLA options every exported program is compiled with (part of its key). XLA:CPU's MLIR fusion
emitters (its default in JAX 0.10) take about 1.5× the compile time of its elemental emitters on
these programs (the dual solve: 10.8 s against 7.2 s on the 2-core CI machine), for the same run
time; LLVM's optimisation level 1 instead of 2 compiles the dual solve in about 0.8× the time (3.2
against 4.0 s alone), and it runs as fast (``benchmarks/single_run.py``,
``benchmarks/sweep_speed.py``). An XLA that no longer knows an option compiles without it."""


QUICK_OPTIONS = {**COMPILER_OPTIONS, "xla_backend_optimization_level": 0}
"""Options of a program a run calls a few times and that runs in milliseconds
(``exported(..., quick=True)``: the plan's evaluation, its tables, the report's price response, the
decision's decoding). Without LLVM's optimisation passes XLA:CPU compiles them 2–9× faster. The
solvers' loops keep :data:`COMPILER_OPTIONS` (at level 0 the dual solve runs about 5× slower), and
so does the cost model's assembly (about 3× slower at level 0, on every warm run)."""


def options(quick: bool) -> dict:
    """The XLA options a program is compiled with (part of its key)."""
    return QUICK_OPTIONS if quick else COMPILER_OPTIONS


def _path(name: str, static: str, args: tuple, quick: bool = False) -> Path | None:
    where = export_dir()
    if where is None:
        return None
    return where / f"{name}-{program_key(name, static + repr(sorted(options(quick).items())), args)}{SUFFIX}"


def stored(name: str, args: tuple, static: str = "", quick: bool = False) -> bool:
    """Whether :func:`exported` would find the program stored (on disk or in this process)."""
    path = _path(name, static, args, quick)
    return path is not None and (path in _PROGRAMS or path.exists())


NEXT = ".next"
"""Suffix of the file beside a program naming the program a run needed after it (:func:`remember_next`)."""


def remember_next(name: str, args: tuple, then: tuple[str, tuple, str], static: str = "",
                  quick: bool = False) -> None:
    """Record that a run which needs program ``name`` (on ``args``) needs ``then`` = ``(name, args,
    static)`` next, so that a later run can load that one while it loads and runs the first
    (:func:`prefetch_next`)."""
    then_name, then_args, then_static = then
    first, second = _path(name, static, args, quick), _path(then_name, then_static, then_args)
    if first is not None and second is not None:
        io.atomic_write(first.with_name(first.name + NEXT), lambda p: p.write_text(second.name))


def prefetch_next(name: str, args: tuple, static: str = "", quick: bool = False) -> bool:
    """Load (deserialise) the program recorded as following ``name`` on ``args``, if it is stored,
    so that :func:`exported` finds it loaded (a caller waits while it loads). Deserialising releases
    the GIL, so a thread can do it while another loads or runs the first program. Returns whether
    a program was loaded."""
    first = _path(name, static, args, quick)
    if first is None:
        return False
    try:
        path = first.with_name(first.with_name(first.name + NEXT).read_text().strip())
    except OSError:
        return False
    if not path.exists():
        return False
    with _LOCK:
        lock = _BUSY.setdefault(path, threading.Lock())
    with lock:
        with _LOCK:
            if path in _PROGRAMS or path in _LOADED:
                return False
        compiled = _load(path)
        if compiled is None:
            return False
        with _LOCK:
            _LOADED[path] = compiled
    return True


def exported(name: str, fn: Callable, args: tuple, static: str = "", quick: bool = False,
             lowered: Callable[[], None] | None = None) -> Callable:
    """A callable equal to ``fn`` on arguments shaped like ``args``, traced and compiled at most once
    per machine.

    Args:
      name: program name (file prefix). fn: a jitted function (its static arguments already bound).
      args: example arguments (arrays, ``jax.ShapeDtypeStruct`` or pytrees of them; only shapes and
        dtypes are used, so a program can be compiled before its inputs exist).
      static: a string of every static setting that ``fn`` closes over (part of the key).
      quick: compile with :data:`QUICK_OPTIONS` (a program called a few times per run).
      lowered: called once the program is traced and lowered, before XLA compiles it (not called
        when it is loaded): the Python part of a compile is done, another thread may trace.

    Thread-safe: a program another thread is compiling is waited for, not compiled twice.
    """
    path = _path(name, static, args, quick)
    if path is None:
        return fn
    with _LOCK:
        if path in _PROGRAMS:  # compiled or loaded earlier in this process
            return _PROGRAMS[path]
        lock = _BUSY.setdefault(path, threading.Lock())
    with lock:  # one thread compiles or loads a program; the others wait for it
        with _LOCK:
            if path in _PROGRAMS:
                return _PROGRAMS[path]
        return _remember(path, _compile_or_load(path, name, fn, args, options(quick), lowered))


def _compile_or_load(path: Path, name: str, fn: Callable, args: tuple, opts: dict,
                     then: Callable[[], None] | None = None) -> Program:
    with _LOCK:
        loaded = _LOADED.pop(path, None)
    if loaded is not None:  # prefetched
        return Program(loaded, fn, name, path)
    if path.exists():
        compiled = _load(path)
        if compiled is not None:
            return Program(compiled, fn, name, path)
    from jax.experimental import serialize_executable

    from optimizer import jax_cache

    with jax_cache.fresh():  # an executable from JAX's own cache would serialise into a broken file
        lowered = fn.lower(*jax.tree.map(_spec, args))
        if then is not None:
            then()
        try:
            compiled = lowered.compile(compiler_options=opts)
        except jax.errors.JaxRuntimeError as e:  # an XLA without one of the options
            log.debug("program %s: %s; compiling with XLA's defaults", name, str(e).splitlines()[0])
            compiled = lowered.compile()
    body = pickle.dumps(serialize_executable.serialize(compiled))
    io.atomic_write(path, lambda p: p.write_bytes(hashlib.sha256(body).digest() + body))
    return Program(compiled, fn, name)


_PROGRAMS: dict[Path, Program] = {}
_BUSY: dict[Path, threading.Lock] = {}
_LOADED: dict[Path, object] = {}  # prefetched executables not yet asked for
_LOCK = threading.Lock()


def _remember(path: Path, program: Program) -> Program:
    with _LOCK:
        return _PROGRAMS.setdefault(path, program)


def forget() -> None:
    """Drop the programs this process has loaded (as a new process would start)."""
    with _LOCK:
        _PROGRAMS.clear()
        _BUSY.clear()
        _LOADED.clear()
