"""PHR augmented Lagrangian with Adam inside, as one jittable, vmappable loop.

For constraints ``g(x) ≤ 0`` [Nocedal & Wright ch. 17; ECONOMICS.md §4.2]::

    L_ρ(x, λ) = f(x) + (1/(2ρ)) · Σ (max(0, λ + ρ g(x))² − λ²)
    outer:  x ← argmin_x L_ρ(x, λ) (Adam steps);   λ ← max(0, λ + ρ g(x))

``f`` is −margin / scale (:func:`optimizer.objective.objective`), ``g`` the normalised constraints and
``λ`` their multipliers (shadow prices in objective units). The Adam learning rate decays
exponentially over all steps (a constant rate stalls inside an augmented Lagrangian, ECONOMICS.md
§4.2); the smooth max that sizes derived pools is annealed from ``sharpness_start`` to
:data:`optimizer.economics.POOL_SHARPNESS`. The outer loop stops when the normalised violation and
the relative objective change are both below tolerance; rows of a batch freeze when they converge
and the ``lax.while_loop`` ends when all have. This is the general solver: it handles every
constraint (quality floors, fixed fleets) that the structured dual does not.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimizer.decision import Decision, initial_decisions, reference_decision
from optimizer.economics import POOL_SHARPNESS
from optimizer.objective import objective
from optimizer.problem import Problem
from optimizer.solve.base import Solution, Stats, Task, best_index, result_of

SHARPNESS_START, SHARPNESS_GROWTH = 40.0, 1.3
"""The pool-sizing smooth max starts at a gentle 40 (≤ 1.8 % at a tie) and grows ×1.3 per outer step."""


def _bwhere(mask: jnp.ndarray, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """``where`` with a (B,) mask broadcast over the trailing axes of ``a`` (B, ...)."""
    if a.ndim == 0:
        return jnp.where(jnp.all(mask), a, b)
    return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)


def _finite_rows(tree) -> jnp.ndarray:
    """(B,) True where every leaf row is finite."""
    leaves = [jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves), axis=0)


@dataclasses.dataclass(frozen=True)
class AugLag:
    """The augmented-Lagrangian solver's hyperparameters (hashable: a static argument of ``jit``)."""

    outer_steps: int = 30
    inner_steps: int = 150
    learning_rate: float = 0.1
    final_learning_rate: float = 0.001
    penalty: float = 100.0  # ρ (solver.penalty)
    tol_feasibility: float = 1e-4
    tol_objective: float = 1e-6
    sharpness_start: float = SHARPNESS_START
    progress: Callable | None = None  # host callback of the outer step (not exportable)

    name = "auglag"

    def init(self, task: Task) -> Decision:
        """Reference prices, uniform mix and routing."""
        return reference_decision(task.problem)

    def start_from(self, task: Task, sol: Solution) -> Decision:
        """A start for ``task`` from another task's solution: its plan."""
        return sol.decision

    def run(self, task: Task, y0: Decision) -> Solution:
        """Solve one task from ``y0``. Pure; vmappable."""
        rows = jax.tree.map(lambda x: x[None], (task.active, task.fleet, task.fixed))
        sol = self.run_rows(task.problem, *rows, jax.tree.map(lambda x: x[None], y0))
        return jax.tree.map(lambda x: x[0], sol)

    def run_rows(self, prob: Problem, active: jnp.ndarray, fleets: jnp.ndarray, fixed: jnp.ndarray,
                 dec0: Decision) -> Solution:
        """Solve ``B`` rows of one problem at once (starts, or candidate fleets).

        Args:
          prob: the problem, shared by the rows. active: (B, C). fleets: (B, G, J, K) GPUs, used by
            rows with ``fixed`` (B,) true. dec0: starts, leading axis B.

        The objective is vmapped *inside* the loops (the loops themselves are not batched), which
        compiles much faster than ``vmap`` of a whole solve; each row still has its
        own multipliers, convergence test, freeze and result.
        """
        rho = self.penalty
        total = self.outer_steps * self.inner_steps
        decay = (self.final_learning_rate / self.learning_rate) ** (1.0 / max(total, 1))
        adam = optax.scale_by_adam()
        obj = jax.vmap(lambda d, fl, a, fx, sh: objective(d, prob, fl, a, sh, fx), in_axes=(0, 0, 0, 0, None))

        def lagrangian(dec, lam, sharp):
            f, b = obj(dec, fleets, active, fixed, sharp)
            g = b.constraints
            pen = jnp.sum(jax.nn.relu(lam + rho * g) ** 2 - lam**2, axis=-1) / (2.0 * rho)
            return jnp.sum(f + pen), (f, g)

        grad_fn = jax.value_and_grad(lagrangian, has_aux=True)

        def sharpness(k):
            return jnp.minimum(self.sharpness_start * SHARPNESS_GROWTH ** k.astype(jnp.float64), POOL_SHARPNESS)

        def inner(carry, _):
            dec, st, lam, step, sharp = carry
            _, grads = grad_fn(dec, lam, sharp)
            upd, st = adam.update(grads, st, dec)
            lr = self.learning_rate * decay**step
            dec = jax.tree.map(lambda x, u: x - lr * u, dec, upd)
            return (dec, st, lam, step + 1, sharp), None

        def body(state):
            dec, st, lam, k, step, f_prev, done_prev, finite_prev = state
            sharp = sharpness(step // self.inner_steps)  # global outer count (rows may have frozen)
            (dec, st, _, step, _), _ = jax.lax.scan(inner, (dec, st, lam, step, sharp), None, length=self.inner_steps)
            f, b = obj(dec, fleets, active, fixed, sharp)
            g = b.constraints
            viol = jnp.max(jnp.maximum(g, 0.0), axis=-1)
            lam = jax.nn.relu(lam + rho * g)
            done = (viol <= self.tol_feasibility) & (
                jnp.abs(f - f_prev) <= self.tol_objective * jnp.maximum(1.0, jnp.abs(f))) & (
                (sharp >= POOL_SHARPNESS) | fixed) & (k >= 1)
            finite = jnp.isfinite(f) & _finite_rows(dec)
            if self.progress is not None:
                jax.debug.callback(self.progress, jnp.max(k) + 1)
            return dec, st, lam, k + 1, step, f, done, finite

        def frozen_body(state):
            # Rows freeze once converged (or non-finite); the loop ends when every row has stopped.
            stop = state[6] | ~state[7]
            new = body(state)
            dec = jax.tree.map(lambda o, n: _bwhere(stop, o, n), state[0], new[0])
            st = jax.tree.map(lambda o, n: _bwhere(stop, o, n) if o.ndim else n, state[1], new[1])
            rest = tuple(_bwhere(stop, o, n) if o.ndim else n for o, n in zip(state[2:], new[2:]))
            return (dec, st) + rest

        def cond(state):
            stop = state[6] | ~state[7]
            return (state[4] < total) & ~jnp.all(stop)

        B = jax.tree.leaves(dec0)[0].shape[0]
        f0, b0 = obj(dec0, fleets, active, fixed, jnp.asarray(self.sharpness_start))
        lam0 = jnp.zeros_like(b0.constraints)
        init = (dec0, adam.init(dec0), lam0, jnp.zeros(B, int), jnp.asarray(0), f0, jnp.zeros(B, bool),
                jnp.ones(B, bool))
        dec, _, lam, k, _, _, done, finite = jax.lax.while_loop(cond, frozen_body, init)
        (_, (f, g)), grads = grad_fn(dec, lam, jnp.asarray(POOL_SHARPNESS))
        viol = jnp.max(jnp.maximum(g, 0.0), axis=-1)
        gn = jnp.sqrt(sum(jnp.sum(x.reshape(B, -1) ** 2, axis=1) for x in jax.tree.leaves(grads)))
        finite = finite & jnp.isfinite(f) & jnp.isfinite(gn)
        result = result_of(finite, viol, done)
        nan = jnp.full(B, jnp.nan)
        return Solution(dec, result, f, -f * prob.scale, viol, lam, nan, nan,
                        Stats(k * self.inner_steps, k, gn))

    def run_starts(self, task: Task, dec0: Decision) -> tuple[Solution, Solution]:
        """Solve ``task`` from every start of ``dec0`` (leading axis) at once; ``(best, all)``. Pure."""
        B = jax.tree.leaves(dec0)[0].shape[0]
        rows = jax.tree.map(lambda x: jnp.broadcast_to(x, (B,) + jnp.shape(x)), (task.active, task.fleet, task.fixed))
        sols = self.run_rows(task.problem, *rows, dec0)
        i = best_index(sols)
        return jax.tree.map(lambda x: x[i], sols), sols


def start_decisions(prob, starts: int, seed: int, start: Decision | None = None) -> Decision:
    """``starts`` generated starts (:func:`optimizer.decision.initial_decisions`, host-side NumPy);
    ``start`` (e.g. another solver's plan) replaces the last one."""
    dec0 = initial_decisions(prob, starts, seed)
    if start is None:
        return dec0
    return jax.tree.map(lambda d, x: np.concatenate([d[:-1], np.asarray(x, d.dtype)[None]]), dec0, start)


def multistart(solver: AugLag, task: Task, starts: int, seed: int, start: Decision | None = None):
    """``(best, all)`` of the :func:`start_decisions` (``start``: the last one)."""
    return run_starts_jit(solver, task, start_decisions(task.problem, starts, seed, start))


run_starts_jit = jax.jit(AugLag.run_starts, static_argnums=0)
"""Compiled :meth:`AugLag.run_starts` (one program per solver settings and task shapes)."""
