"""What every solver takes and returns: a :class:`Task`, a :class:`Solution` and the :class:`RESULTS` codes.

A solver is a frozen object of hyperparameters (hashable, so it is a static argument of ``jit``)
with ``init(task)`` (a start) and ``run(task, y0) -> Solution``, pure and vmappable over tasks and
starts (the shape of optimistix and jaxopt). The two implementations solve the same problem —
maximise margin over prices, precision mix and routing (:mod:`optimizer.objective`) — in different
spaces, so their starts differ: the augmented Lagrangian starts from a :class:`Decision`, the dual
from capacity prices (:class:`optimizer.solve.dual.DualStart`). Their solutions do not.
"""

from __future__ import annotations

import enum
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from optimizer.decision import Decision
from optimizer.problem import Problem


class RESULTS(enum.IntEnum):
    """How a solve ended (``Solution.result`` holds the integer; ``RESULTS(i).label`` its name in reports)."""

    converged = 0
    step_limit = 1
    infeasible = 2
    non_finite = 3

    @property
    def label(self) -> str:
        return self.name

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    RESULTS.converged: "converged: feasible within tolerance and stationary (dual: within the certified gap)",
    RESULTS.step_limit: "step limit: feasible but not converged within the solver's steps",
    RESULTS.infeasible: "infeasible: a constraint is violated beyond tolerance at the end of the solve",
    RESULTS.non_finite: "non-finite: the solve produced NaN or inf",
}

INFEASIBLE_TOL = 1e-3
"""Normalised violation above which a finished solve is declared infeasible."""


def result_of(finite, violation, converged):
    """The :class:`RESULTS` code of a finished solve — the one rule of every solver: non-finite,
    else infeasible beyond :data:`INFEASIBLE_TOL`, else converged when the solver's own test holds
    (``converged``, which implies feasibility within its tighter tolerance), else step limit."""
    return jnp.where(~finite, RESULTS.non_finite, jnp.where(
        violation > INFEASIBLE_TOL, RESULTS.infeasible, jnp.where(converged, RESULTS.converged, RESULTS.step_limit)))


def result_name(code) -> str:
    """The report name of a result code (``"converged"``, ``"step_limit"``, ...)."""
    return RESULTS(int(code)).label


class Task(NamedTuple):
    """One problem to solve (a pytree; stack the array fields to batch).

    ``active`` (C,) marks the constraints that apply (:func:`optimizer.constraints.active_mask`);
    with ``fixed`` true the fleet is ``fleet`` (G, J, K) GPUs and capacity is a constraint, else
    each pool is sized by its load (``fleet`` ignored).
    """

    problem: Problem
    active: jnp.ndarray  # (C,)
    fleet: jnp.ndarray  # (G, J, K) GPUs
    fixed: jnp.ndarray  # () bool


def _xp(*xs):
    """``jnp`` inside a traced function, else ``np`` (host-side inputs need no eager JAX op)."""
    return jnp if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(xs)) else np


def relaxed_task(prob: Problem, active) -> Task:
    """The task with each pool sized by its load (continuous fleet)."""
    xp = _xp(prob, active)
    return Task(prob, xp.asarray(active, np.float64), xp.zeros(np.shape(prob.tp)), xp.asarray(False))


def fixed_task(prob: Problem, active, fleet) -> Task:
    """The task with the fleet fixed at ``fleet`` (G, J, K) GPUs."""
    xp = _xp(prob, active, fleet)
    return Task(prob, xp.asarray(active, np.float64), xp.asarray(fleet, np.float64), xp.asarray(True))


class Stats(NamedTuple):
    """How much work a solve did."""

    iterations: jnp.ndarray  # () inner steps (Adam) or dual steps
    outer_iterations: jnp.ndarray  # () augmented-Lagrangian outer steps (1 for the dual)
    grad_norm: jnp.ndarray  # () ‖∇ L‖ at the solution (NaN where the solver has no such gradient)


class Solution(NamedTuple):
    """The result of any solver (a pytree; batched under vmap)."""

    decision: Decision  # the plan, in the objective's parametrization
    result: jnp.ndarray  # () int, RESULTS
    objective: jnp.ndarray  # () −margin / scale of the plan
    margin: jnp.ndarray  # () USD/day of the plan
    violation: jnp.ndarray  # () largest normalised violation of an active constraint (0 if none)
    multipliers: jnp.ndarray  # (C,) shadow prices of the normalised constraints, in objective units
    bound: jnp.ndarray  # () USD/day upper bound on the optimum of the task (NaN: none)
    gap: jnp.ndarray  # () certified relative gap (bound − margin) / |bound| (NaN: none)
    stats: Stats


class Solver(Protocol):
    """A frozen, hashable object of hyperparameters."""

    name: str

    def init(self, task: Task):
        """A default start for ``task``."""

    def start_from(self, task: Task, solution: Solution):
        """A start for ``task`` from a neighbouring task's solution (the integer repair's warm start)."""

    def run(self, task: Task, y0) -> Solution:
        """Solve ``task`` from ``y0``; pure, jittable, vmappable."""


def best_index(sol: Solution, xp=jnp):
    """Index of the best of a batch of solutions: feasible first, then lowest objective; non-finite last."""
    score = xp.where(xp.isfinite(sol.objective), sol.objective, xp.inf) + xp.where(
        sol.violation <= INFEASIBLE_TOL, 0.0, 1e6 * (1.0 + sol.violation))
    return xp.argmin(score)
