"""A host-side progress bar fed from inside the compiled solve (``jax.debug.callback``).

The callback has a stable identity (it is a static argument of the jitted solver, so a new
function object would force a recompile); it drives whatever tqdm bar is currently open.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import numpy as np

_BAR = None


def outer_step(k) -> None:
    """Called from the solver after each augmented-Lagrangian outer step (``k`` may be batched)."""
    if _BAR is not None:
        done = int(np.max(np.asarray(k)))
        if done > _BAR.n:
            _BAR.update(done - _BAR.n)


def enabled(requested: bool) -> bool:
    """Bars only on an interactive terminal and outside Hydra multiruns."""
    if not requested or not sys.stderr.isatty():
        return False
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode != RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - not under Hydra
        return True


@contextmanager
def bar(total: int, desc: str, on: bool):
    """Open a tqdm bar that :func:`outer_step` advances (no-op when ``on`` is False)."""
    global _BAR
    if not on:
        yield None
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(), tqdm(total=total, desc=desc, unit="outer step", leave=False) as t:
        _BAR = t
        try:
            yield t
        finally:
            _BAR = None
