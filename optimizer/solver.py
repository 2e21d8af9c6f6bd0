"""PHR augmented Lagrangian with Adam inside, as one jittable, vmappable loop.

For constraints ``g(x) ≤ 0`` [Nocedal & Wright ch. 17; ECONOMICS.md §4.2]::

    L_ρ(x, λ) = f(x) + (1/(2ρ)) · Σ (max(0, λ + ρ g(x))² − λ²)
    outer:  x ← argmin_x L_ρ(x, λ) (Adam steps);   λ ← max(0, λ + ρ g(x))

The Adam learning rate decays exponentially over all steps (a constant rate stalls inside an
augmented Lagrangian, ECONOMICS.md §4.2). The outer loop stops when
the normalised violation and the relative objective change are both below tolerance (rows of a
batch freeze when they converge; the ``lax.while_loop`` ends when all have). Data and
settings are *arguments* (JAXopt's rule), so ``vmap(solve)`` runs many starts or scenarios at once.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimizer.objective import POOL_SHARPNESS, SHARPNESS_GROWTH, SHARPNESS_START, Decision, objective
from optimizer.problem import Problem

CONVERGED, STEP_LIMIT, INFEASIBLE, NONFINITE = 0, 1, 2, 3
STATUS_NAMES = {CONVERGED: "converged", STEP_LIMIT: "step_limit", INFEASIBLE: "infeasible", NONFINITE: "non_finite"}
INFEASIBLE_TOL = 1e-3
"""Normalised violation above which a finished solve is declared infeasible."""


class Settings(NamedTuple):
    """Static solver settings (hashable; part of the jit cache key)."""

    outer_steps: int = 30
    inner_steps: int = 150
    learning_rate: float = 0.1
    final_learning_rate: float = 0.001
    penalty: float = 20.0
    tol_feasibility: float = 1e-4
    tol_objective: float = 1e-6
    sharpness_start: float = SHARPNESS_START  # pool-sizing smooth max; warm starts begin at POOL_SHARPNESS


class Solution(NamedTuple):
    """Result of one solve (a pytree; batched under vmap)."""

    decision: Decision
    multipliers: jnp.ndarray  # (C,) λ, the shadow prices of the normalised constraints
    objective: jnp.ndarray  # () −margin / scale
    violation: jnp.ndarray  # () max normalised violation of active constraints
    grad_norm: jnp.ndarray  # () ‖∇_x L_ρ‖ at the solution
    iterations: jnp.ndarray  # () Adam steps taken
    outer_iterations: jnp.ndarray  # ()
    status: jnp.ndarray  # () int, see STATUS_NAMES


def _bwhere(mask: jnp.ndarray, a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """``where`` with a (B,) mask broadcast over the trailing axes of ``a`` (B, ...)."""
    if a.ndim == 0:
        return jnp.where(jnp.all(mask), a, b)
    return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)


def _finite_rows(tree) -> jnp.ndarray:
    """(B,) True where every leaf row is finite."""
    leaves = [jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves), axis=0)


def solve_batch(dec0: Decision, prob: Problem, active: jnp.ndarray, fleets: jnp.ndarray, fixed: jnp.ndarray,
                settings: Settings, progress: Callable | None = None) -> Solution:
    """Solve ``B`` independent problems of one scenario at once.

    Args:
      dec0: starts, leading axis B. active: (B, C) constraint activity per row.
      fleets: (B, G, J, K) GPUs per pool, used by rows with ``fixed`` true.
      fixed: (B,) bool: row solves with its fleet fixed (else the fleet is derived from the load).
      settings: static solver settings. progress: optional host callback of the outer step.

    The objective is vmapped *inside* the loops (the loops themselves are not batched), which
    compiles about three times faster than ``vmap`` of a whole solve; each row still has its own
    multipliers, convergence test, freeze and status.
    """
    rho = settings.penalty
    total = settings.outer_steps * settings.inner_steps
    decay = (settings.final_learning_rate / settings.learning_rate) ** (1.0 / max(total, 1))
    adam = optax.scale_by_adam()
    obj = jax.vmap(lambda d, fl, a, fx, sh: objective(d, prob, fl, a, sh, fx), in_axes=(0, 0, 0, 0, None))

    def lagrangian(dec, lam, sharp):
        f, b = obj(dec, fleets, active, fixed, sharp)
        g = b.constraints
        pen = jnp.sum(jax.nn.relu(lam + rho * g) ** 2 - lam**2, axis=-1) / (2.0 * rho)
        return jnp.sum(f + pen), (f, g)

    grad_fn = jax.value_and_grad(lagrangian, has_aux=True)

    def sharpness(k):
        return jnp.minimum(settings.sharpness_start * SHARPNESS_GROWTH ** k.astype(jnp.float64), POOL_SHARPNESS)

    def inner(carry, _):
        dec, st, lam, step, sharp = carry
        _, grads = grad_fn(dec, lam, sharp)
        upd, st = adam.update(grads, st, dec)
        lr = settings.learning_rate * decay**step
        dec = jax.tree.map(lambda x, u: x - lr * u, dec, upd)
        return (dec, st, lam, step + 1, sharp), None

    def body(state):
        dec, st, lam, k, step, f_prev, done_prev, finite_prev = state
        sharp = sharpness(step // settings.inner_steps)  # global outer count (rows may have frozen)
        (dec, st, _, step, _), _ = jax.lax.scan(inner, (dec, st, lam, step, sharp), None,
                                                length=settings.inner_steps)
        f, b = obj(dec, fleets, active, fixed, sharp)
        g = b.constraints
        viol = jnp.max(jnp.maximum(g, 0.0), axis=-1)
        lam = jax.nn.relu(lam + rho * g)
        done = (viol <= settings.tol_feasibility) & (
            jnp.abs(f - f_prev) <= settings.tol_objective * jnp.maximum(1.0, jnp.abs(f))) & (
            (sharp >= POOL_SHARPNESS) | fixed) & (k >= 1)
        finite = jnp.isfinite(f) & _finite_rows(dec)
        if progress is not None:
            jax.debug.callback(progress, jnp.max(k) + 1)
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
        return (state[4] < settings.outer_steps * settings.inner_steps) & ~jnp.all(stop)

    B = jax.tree.leaves(dec0)[0].shape[0]
    f0, b0 = obj(dec0, fleets, active, fixed, jnp.asarray(settings.sharpness_start))
    lam0 = jnp.zeros_like(b0.constraints)
    init = (dec0, adam.init(dec0), lam0, jnp.zeros(B, int), jnp.asarray(0), f0, jnp.zeros(B, bool),
            jnp.ones(B, bool))
    dec, _, lam, k, _, _, done, finite = jax.lax.while_loop(cond, frozen_body, init)
    (_, (f, g)), grads = grad_fn(dec, lam, jnp.asarray(POOL_SHARPNESS))
    viol = jnp.max(jnp.maximum(g, 0.0), axis=-1)
    gn = jnp.sqrt(sum(jnp.sum(x.reshape(B, -1) ** 2, axis=1) for x in jax.tree.leaves(grads)))
    finite = finite & jnp.isfinite(f) & jnp.isfinite(gn)
    status = jnp.where(~finite, NONFINITE,
                       jnp.where(done, CONVERGED, jnp.where(viol > INFEASIBLE_TOL, INFEASIBLE, STEP_LIMIT)))
    return Solution(dec, lam, f, viol, gn, k * settings.inner_steps, k, status)


def _rows(prob: Problem, active, fleet, B: int):
    fixed = jnp.full((B,), fleet is not None)
    fl = jnp.zeros(prob.tp.shape) if fleet is None else jnp.asarray(fleet)
    fleets = jnp.broadcast_to(fl, (B,) + fl.shape)
    return jnp.broadcast_to(jnp.asarray(active), (B,) + jnp.shape(active)[-1:]), fleets, fixed


def solve(dec0: Decision, prob: Problem, active: jnp.ndarray, fleet: jnp.ndarray | None,
          settings: Settings, progress: Callable | None = None) -> Solution:
    """Minimise −margin subject to the active constraints from one start ``dec0``
    (``fleet`` None: derived fleet; else fixed)."""
    batched = jax.tree.map(lambda x: x[None], dec0)
    act, fleets, fixed = _rows(prob, active, fleet, 1)
    sol = solve_batch(batched, prob, act, fleets, fixed, settings, progress)
    return jax.tree.map(lambda x: x[0], sol)


def initial_decisions(prob: Problem, starts: int, seed: int) -> Decision:
    """``starts`` initial decisions (leading axis): reference prices scaled by 1, 0.6, 1.7, 2.8, ...
    and small seeded noise on the mix and routing logits (first start: exactly uniform).

    Host-side NumPy (a seeded ``default_rng``), so no random-number kernel needs compiling.
    """
    S, J = prob.demand.ref_price.shape
    K = prob.quality.shape[1]
    G = prob.usd_per_gpu_hour.shape[0]
    base = [1.0, 0.6, 1.7, 2.8, 0.35, 4.5, 1.25, 0.8]
    factors = np.asarray((base * (starts // len(base) + 1))[:starts])
    lo, hi = np.asarray(prob.log_mu_lo)[:, None], np.asarray(prob.log_mu_hi)[:, None]
    pos = np.clip((np.log(factors)[:, None, None] - lo) / (hi - lo), 1e-3, 1 - 1e-3)
    price_raw = np.broadcast_to(np.log(pos) - np.log1p(-pos), (starts, S, J))
    rng = np.random.default_rng(seed)
    noise = (np.arange(starts) > 0).astype(float)
    mix = 0.3 * noise[:, None, None, None] * rng.standard_normal((starts, S, J, K))
    route = 0.3 * noise[:, None, None, None, None] * rng.standard_normal((starts, S, J, K, G))
    return Decision(jnp.asarray(price_raw), jnp.asarray(mix), jnp.asarray(route))


def best_of(sols: Solution) -> int:
    """Index of the best start: feasible first, then lowest objective; non-finite last."""
    viol = np.asarray(sols.violation)
    obj = np.asarray(sols.objective)
    score = np.where(np.isfinite(obj), obj, np.inf) + np.where(viol <= INFEASIBLE_TOL, 0.0, 1e6 * (1.0 + viol))
    return int(np.argmin(score))


solve_batch_jit = jax.jit(solve_batch, static_argnames=("settings", "progress"))
"""Compiled once per (scenario shapes, settings); a second solve of the same shapes reuses it."""


def solve_multistart(prob: Problem, active: jnp.ndarray, fleet: jnp.ndarray | None, settings: Settings,
                     starts: int, seed: int, progress: Callable | None = None,
                     start: Decision | None = None) -> tuple[Solution, Solution]:
    """Solve from several starts at once (one batched, compiled solve); returns ``(best, all)``.

    ``start`` (e.g. the dual solver's plan) replaces the last of the ``starts`` generated ones.
    """
    dec0 = initial_decisions(prob, starts, seed)
    if start is not None:
        dec0 = jax.tree.map(lambda d, x: d.at[-1].set(x), dec0, start)
    act, fleets, fixed = _rows(prob, active, fleet, starts)
    sols = solve_batch_jit(dec0, prob, act, fleets, fixed, settings, progress)
    i = best_of(sols)
    return jax.tree.map(lambda x: x[i], sols), sols
