"""Which solver solves a task: one rule for single runs and sweeps (``solver.method``)."""

from __future__ import annotations

import numpy as np

from optimizer.errors import ConfigError
from optimizer.solve.auglag import AugLag
from optimizer.solve.dual import N_LIMITS, Dual
from optimizer.solve.fleet import FleetDual

METHODS = ("auto", "dual", "auglag")
"""``auto``: the structured dual unless a quality floor is active; ``dual`` / ``auglag``: force one."""
WARM_CHARGE_OFFSET = 60.0
"""A warm-started dual (a sweep's scenarios) takes Frank–Wolfe steps 2 / (k + 4 + 60) on its period
charges, so the first steps do not undo the base scenario's (60 of 10, 20, 40, 60, 80, 120 and 200
converged most of 256 `risk` scenarios at 24 periods)."""
SHEET_STEPS = 1
"""Newton steps on shared price sheets at each dual step (from the per-segment optimum)."""


def has_quality_floors(active, n_gpus: int) -> bool:
    """Whether a constraint beyond the GPU caps and budgets (a quality floor, or fixed-fleet capacity) is active."""
    return bool(np.asarray(active)[n_gpus + N_LIMITS:].sum() > 0)


def peak_limits(active, n_gpus: int) -> bool:
    """Whether a limit that counts each pool's GPUs at its peak is active: a GPU cap or the capex
    budget (over several periods the dual charges their prices on their own weights)."""
    a = np.asarray(active)
    return bool(a[:n_gpus].sum() + a[n_gpus + 1] > 0)


def auglag_of(settings) -> AugLag:
    """The augmented-Lagrangian solver of a :class:`optimizer.schema.SolverConfig`."""
    return AugLag(outer_steps=settings.outer_steps, inner_steps=settings.inner_steps,
                  learning_rate=settings.learning_rate, final_learning_rate=settings.final_learning_rate,
                  penalty=settings.penalty, tol_feasibility=settings.tol_feasibility,
                  tol_objective=settings.tol_objective)


def dual_of(settings, steps: int | None = None, temperature: float | None = None, shared: bool = False,
            warm: bool = False, caps: bool = False) -> Dual:
    """The dual solver of a :class:`optimizer.schema.SolverConfig` (``steps``, ``temperature``: e.g. a
    sweep's scenarios; ``shared``: some product's sheet is paid by several segments; ``warm``: it
    starts from a neighbouring scenario's charges; ``caps``: a GPU cap or the capex budget is
    active, :func:`peak_limits`)."""
    return Dual(steps=settings.dual_steps if steps is None else steps, tol_gap=settings.dual_tol_gap,
                temperature=settings.dual_temperature if temperature is None else temperature,
                sheet_steps=SHEET_STEPS if shared else 0, charge_offset=WARM_CHARGE_OFFSET if warm else 0.0,
                cap_weights=caps)


def choose(active, n_gpus: int, settings, dual_steps: int | None = None,
           dual_temperature: float | None = None, shared: bool = False) -> AugLag | Dual:
    """The solver for a relaxed task with constraint activity ``active`` (C,) and ``n_gpus`` GPU types.

    The dual prices GPU caps and budgets but not quality floors; ``auto`` sends a task with a floor
    to the augmented Lagrangian, and ``dual`` refuses it with an error naming the fields.
    """
    method = settings.method
    if method not in METHODS:
        raise ConfigError(f"solver.method = {method!r} is invalid; accepted: {list(METHODS)}")
    floors = has_quality_floors(active, n_gpus)
    if method == "dual" and floors:
        raise ConfigError("solver.method = 'dual' prices GPU caps and budgets but not quality floors "
                          "(demand.segments.*.min_quality), which this scenario (or a sweep axis) sets; "
                          "use solver.method=auto or auglag")
    if method == "auglag" or (method == "auto" and floors):
        return auglag_of(settings)
    caps = peak_limits(active, n_gpus)  # a GPU cap or the capex budget: priced on their own period weights
    return dual_of(settings, dual_steps, dual_temperature, shared, warm=dual_steps is not None, caps=caps)


def choose_fleet_solver(active, n_gpus: int, settings, shared: bool = False) -> AugLag | FleetDual:
    """The inner solver of the integer repair (fixed fleets), by the same rule: the fixed-fleet dual
    unless a quality floor is active (``active``: the relaxed task's constraint activity) or
    ``solver.method=auglag``. With a load that varies over the periods the fixed-fleet dual's gap is
    measured at the plan's own fleet cost (on-demand GPUs follow the load), so it certifies the
    revenue of the fleet rather than bounding its margin."""
    if settings.method == "auglag" or has_quality_floors(active, n_gpus):
        return auglag_of(settings)
    return FleetDual(tol_gap=settings.dual_tol_gap, sheet_steps=SHEET_STEPS if shared else 0)
