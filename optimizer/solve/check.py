"""An augmented-Lagrangian plan checked against the dual's: one rule for single runs and sweeps.

The augmented Lagrangian stops at a stationary point of a margin that is not concave in the
prices: a product priced far above what its buyers pay sells nothing, and there the margin is
flat, so a plan that shuts a profitable product off can pass its convergence test (on a `wide`
scenario with a binding B200 cap it stopped, "converged", at $12,879/day where the dual found
$88,294). The dual, run on the same task with the quality floors relaxed (it prices GPU caps and
budgets, not floors), gives an upper bound on the task's optimum (relaxing a constraint can only
raise it) and a second plan. :func:`verdict` says which plan stands; :func:`checked` applies it.

Every function here takes NumPy arrays on the host (a single run) or traced arrays (a sweep's
batched program) alike.
"""

from __future__ import annotations

import enum

import jax

from optimizer.solve.base import RESULTS, Solution, _xp
from optimizer.solve.dual import N_LIMITS


class Verdict(enum.IntEnum):
    """What the check found (an integer in traced code)."""

    kept = 0  # the augmented Lagrangian's plan stands (with the dual's bound and gap where finite)
    replaced_infeasible = 1  # it ended infeasible or non-finite; the dual's plan meets every constraint
    replaced_better = 2  # the dual's plan meets every constraint and earns more than tol_gap × bound more


def floors_relaxed(active, n_gpus: int):
    """``active`` (C,) with every constraint after the GPU caps and budgets (quality floors,
    fixed-fleet capacity) switched off: the task the dual can solve."""
    xp = _xp(active)
    active = xp.asarray(active)
    keep = xp.arange(active.shape[-1]) < n_gpus + N_LIMITS
    return xp.where(keep, active, 0.0)


def meets_every_constraint(margin, constraints, active, tol_feasibility: float):
    """Whether a plan's margin is finite and its normalised constraints ``constraints`` (C,) are
    within ``tol_feasibility`` wherever ``active`` (C,) is on."""
    xp = _xp(margin, constraints, active)
    worst = xp.max(xp.where(xp.asarray(active) > 0, constraints, -xp.inf), initial=-xp.inf)
    return xp.isfinite(margin) & (worst <= tol_feasibility)


def verdict(result, margin, dual_margin, bound, dual_feasible, tol_gap: float):
    """The :class:`Verdict` code of an augmented-Lagrangian plan (``result`` code, ``margin`` USD/day)
    against the dual's plan (``dual_margin`` USD/day, ``dual_feasible`` against every constraint of
    the task, floors included) and bound (``bound`` USD/day; not finite: no check)."""
    xp = _xp(result, margin, dual_margin, bound, dual_feasible)
    usable = xp.isfinite(bound) & dual_feasible
    ended_badly = (result == RESULTS.infeasible) | (result == RESULTS.non_finite)
    better = dual_margin > margin + tol_gap * xp.abs(bound)
    return xp.where(usable & ended_badly, int(Verdict.replaced_infeasible),
                    xp.where(usable & better, int(Verdict.replaced_better), int(Verdict.kept)))


def checked(sol: Solution, dual_sol: Solution, code) -> Solution:
    """The plan the :class:`Verdict` ``code`` keeps: the dual's solution (with its own status), or
    the augmented Lagrangian's with the dual's bound and gap ``(bound − margin) / |bound|`` where
    that bound is finite (its status unchanged: where a floor binds, the bound can be loose)."""
    xp = _xp(sol, dual_sol, code)
    bound = xp.asarray(dual_sol.bound)
    finite = xp.isfinite(bound)
    gap = (bound - sol.margin) / xp.maximum(xp.abs(bound), 1e-9)
    own = sol._replace(bound=xp.where(finite, bound, sol.bound), gap=xp.where(finite, gap, sol.gap))
    replace = xp.asarray(code) != int(Verdict.kept)
    return _tree_where(xp, replace, dual_sol, own)


def _tree_where(xp, cond, a, b):
    return jax.tree.map(lambda x, y: xp.where(cond, x, y), a, b)
