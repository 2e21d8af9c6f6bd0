"""Self-repairing JAX persistent compilation cache.

What JAX 0.10 does with a corrupt entry (``jax/_src/compiler.py`` ``_cache_read`` and
``compilation_cache.py``): ``get_executable_and_time`` reads ``<dir>/<key>-cache``, decompresses it
(zlib, whose checksum catches truncation and flipped bytes) and deserialises the executable; any
exception there is caught by ``_cache_read``, which emits ``UserWarning: Error reading persistent
compilation cache entry for '<module name>'`` (the module name, not the key) and compiles afresh.
The fresh executable then goes to ``LRUCache.put``, which returns early when the entry file
already exists, so the corrupt file is never rewritten: every later run warns and recompiles.

:func:`install` wraps ``get_executable_and_time``: an entry that cannot be read is deleted (so
JAX's own ``put`` after the recompilation writes a good one) and reported in one log line on the
``tokenmargin`` logger instead of JAX's warning. ``jax_raise_persistent_cache_errors`` and the
cache-verification mode keep JAX's behaviour (the error is raised after the entry is removed).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import logging
from pathlib import Path

log = logging.getLogger("tokenmargin")

_MARK = "_tokenmargin_repairs_corrupt_entries"


def entry_path(cache, key: str) -> Path | None:
    """The file of ``key`` in JAX's file cache (``None`` for a cache that is not JAX's LRUCache)."""
    from jax._src import lru_cache

    base = getattr(cache, "_base_cache", cache)  # VerificationCache wraps the LRUCache
    where = getattr(base, "path", None)
    if not isinstance(base, lru_cache.LRUCache) or where is None:
        return None
    return Path(str(where)) / f"{key}{lru_cache._CACHE_SUFFIX}"


def drop_entry(cache, key: str) -> Path | None:
    """Delete the entry of ``key`` (and its access-time file); returns the path removed, if any."""
    from jax._src import lru_cache

    path = entry_path(cache, key)
    if path is None:
        return None
    base = getattr(cache, "_base_cache", cache)
    lock = getattr(base, "lock", None) if getattr(base, "eviction_enabled", False) else None
    if lock is not None:
        lock.acquire(timeout=getattr(base, "lock_timeout_secs", 10))
    try:
        path.unlink(missing_ok=True)
        path.with_name(path.name.removesuffix(lru_cache._CACHE_SUFFIX) + lru_cache._ATIME_SUFFIX).unlink(
            missing_ok=True)
    finally:
        if lock is not None:
            lock.release()
    return path


_FRESH = threading.local()


@contextlib.contextmanager
def fresh():
    """Compiles in this block (this thread) never read JAX's persistent cache: XLA:CPU executables
    loaded from it serialise into files that fail in a new process ("Function ... not found"), so
    :mod:`optimizer.aot` compiles what it stores afresh."""
    before = getattr(_FRESH, "on", False)
    _FRESH.on = True
    try:
        yield
    finally:
        _FRESH.on = before


def install() -> None:
    """Make JAX delete (and so rewrite) unreadable compilation-cache entries. Idempotent."""
    from jax._src import compilation_cache as cc
    from jax._src import config

    original = getattr(cc, "get_executable_and_time", None)
    if original is None or getattr(original, _MARK, False):  # another JAX: leave its cache as it is
        return

    @functools.wraps(original)
    def get_executable_and_time(cache_key, compile_options, backend, executable_devices):
        if getattr(_FRESH, "on", False):
            return None, None  # a miss: compile afresh (and write the entry as usual)
        try:
            return original(cache_key, compile_options, backend, executable_devices)
        except Exception as ex:
            if isinstance(ex, cc.CacheVerificationError):
                raise
            what = f"{type(ex).__name__}: {ex}".splitlines()[0]
            try:
                removed = drop_entry(cc._get_cache(backend), cache_key)
                done = f"removed {removed} so it is rewritten" if removed else "left it (not a file cache)"
            except Exception as why:  # never let the repair itself break a compile
                done = f"could not remove it ({type(why).__name__}: {why})"
            if config.raise_persistent_cache_errors.value:
                raise
            log.warning("JAX compilation cache entry %s was unreadable (%s); %s; recompiling", cache_key, what, done)
            return None, None

    setattr(get_executable_and_time, _MARK, True)
    cc.get_executable_and_time = get_executable_and_time
