"""The fixed-fleet dual: the pricing problem of a fleet whose GPUs per pool are given.

The inner solver of the integer repair (:mod:`optimizer.solve.integer`) when no quality floor is
active. Each pool's peak and daily capacity gets a price (in units of the pool's GPU rent); at
those prices every request pays a linear capacity cost and :func:`optimizer.solve.dual.primal`
prices, mixes and routes in closed form; the prices follow the pools' spare capacity (the dual
gradient) by Rprop steps, and every plan is certified against the dual bound.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimizer import economics as econ
from optimizer.problem import Problem
from optimizer.solve.base import Solution, Task
from optimizer.solve.dual import FINAL_SHEET_FACTOR, Charges, DualState, Primal, certified, pool_period_shape, primal


class FleetStart(NamedTuple):
    """Where the fixed-fleet dual starts: a price per pool on its peak and on its daily capacity."""

    peak_price: jnp.ndarray  # (G, J, K, T) ≥ 0 per period, in units of the pool's GPU rent
    daily_price: jnp.ndarray  # (G, J, K, T) ≥ 0 per period, in units of the pool's GPU rent


def _fleet_problem(prob: Problem, fleet: jnp.ndarray) -> Problem:
    """``prob`` with flows restricted to pools that have GPUs in ``fleet`` (G, J, K)."""
    has = (jnp.transpose(fleet, (1, 2, 0)) > 0)[None].astype(prob.route_mask.dtype)  # (1, J, K, G)
    route = prob.route_mask * has
    return prob._replace(route_mask=route, mix_mask=prob.mix_mask * (route.sum(-1) > 0))


def fleet_primal(prices: FleetStart, prob: Problem, fleet: jnp.ndarray, temperature, sheet_steps: int = 0,
                 sheet_init=None, sheet_iters=None) -> Primal:
    """Optimal prices, mix and routing when pool ``p`` charges ``rent × (peak price × peak GPUs +
    daily price × daily GPUs)`` of its load in every period (``prob`` restricted by :func:`_fleet_problem`)."""
    # the fleet's own cost is priced apart (solve_fleet_dual), so the capped reserves of ``margin``
    # take only a few steps from unpriced caps
    return primal(Charges(prices.peak_price, prices.daily_price), prob, temperature, None, sheet_steps,
                  sheet_init, sheet_iters, od_start=jnp.zeros(np.shape(prob.on_demand_cap)))


def solve_fleet_dual(prob: Problem, fleet: jnp.ndarray, y0: FleetStart, solver: "FleetDual") -> DualState:
    """The pricing problem of a *fixed* fleet: maximise revenue subject to each pool's peak and
    daily load fitting its GPUs, by its Lagrangian dual over one price per pool and capacity.

    For prices ``a, b ≥ 0`` (in units of the pool's rent) every request pays a linear capacity cost
    and the problem separates as in :func:`primal`; the dual function
    ``g(a, b) = max_x L + Σ_p 24 · rent_p · (a_p + b_p) · N_p`` bounds the fixed fleet's revenue from
    above (weak duality), and its gradient is the pools' spare capacity ``N_p − P_p/ρp`` and
    ``N_p − D_p/ρd``. Rprop steps as in :func:`solve_dual`; the feasible primal point (every pool
    within ``tol_feasibility`` of its GPUs) of highest revenue is kept. The returned bound and gap
    are on the margin (revenue − the fleet's fixed cost). Pure; vmappable over fleets.
    """
    prob = _fleet_problem(prob, fleet)
    opt = optax.rprop(solver.learning_rate, min_step_size=1e-12, max_step_size=0.5)
    n = solver.steps
    t0 = max(solver.temperature_start, solver.temperature)
    ratio = (solver.temperature / t0) ** (1.0 / max(n - 1, 1))
    has = (fleet > 0)[..., None]
    denom = jnp.maximum(fleet, 1.0)[..., None]
    cap = fleet[..., None]
    rent_day = econ.usd_per_gpu_day(prob)[:, None, None, None]
    params0 = (y0.peak_price * has, y0.daily_price * has)

    def evaluate_at(params, t, sheet, iters):
        a, b = params
        x = fleet_primal(FleetStart(a, b), prob, fleet, t, solver.sheet_steps, sheet, iters)
        ep = jnp.where(has, (x.peak_need - cap) / denom, -1.0)
        ed = jnp.where(has, (x.daily_need - cap) / denom, -1.0)
        capacity = jnp.sum(rent_day * (a + b) * cap)
        return x, ep, ed, x.lagrangian + capacity, x.local_lagrangian + capacity

    def step(c, k):
        params, st, best_rev, best_x, bound, local_bound, sheet = c
        # k < n: a step at the annealed temperature; k = n: the last prices with an exact argmax (bound)
        t = jnp.where(k < n, t0 * ratio ** jnp.minimum(k, n - 1), 1e-9)
        iters = jnp.where(k < n, solver.sheet_steps, solver.sheet_steps * FINAL_SHEET_FACTOR)
        x, ep, ed, g, g_local = evaluate_at(params, t, sheet, iters)
        revenue = (x.price * x.requests).sum()
        better = (k < n) & (jnp.maximum(ep.max(), ed.max()) <= solver.tol_feasibility) & (revenue > best_rev)
        upd, st_new = opt.update((-ep * has, -ed * has), st, params)
        new = jax.tree.map(lambda p: jnp.maximum(p, 0.0) * has, optax.apply_updates(params, upd))
        keep = k < n
        return (jax.tree.map(lambda u, v: jnp.where(keep, u, v), new, params),
                jax.tree.map(lambda u, v: jnp.where(keep, u, v), st_new, st),
                jnp.where(better, revenue, best_rev),
                jax.tree.map(lambda u, v: jnp.where(better, u, v), x, best_x),
                jnp.where(k == n, jnp.minimum(bound, g), bound),
                jnp.where(k == n, jnp.minimum(local_bound, g_local), local_bound), x.log_mu), None

    dtype = prob.usd_per_gpu_hour.dtype
    x0 = jax.tree.map(lambda a: jnp.zeros(a.shape, dtype),
                      jax.eval_shape(lambda: fleet_primal(y0, prob, fleet, 1.0)))
    inf = jnp.asarray(jnp.inf, dtype)
    carry = (params0, opt.init(params0), jnp.asarray(-jnp.inf, dtype), x0, inf, inf,
             jnp.zeros(prob.sheet_ref.shape, dtype))
    (last, _, best_rev, best_x, bound, local_bound, sheet), _ = jax.lax.scan(step, carry, jnp.arange(n + 1))
    found = best_rev > -jnp.inf
    x_last, ep, ed, _, _ = evaluate_at(last, solver.temperature, sheet, solver.sheet_steps * FINAL_SHEET_FACTOR)
    x = jax.tree.map(lambda u, v: jnp.where(found, u, v), best_x, x_last)
    # the fleet's cost at the plan's hourly needs (all of it in the busiest period, whole replicas
    # elsewhere): the fleet cost of a one-period or reserved-only fleet exactly, else at this plan
    fleet_cost = econ.cycle_fleet_cost(
        econ.provisioned(econ.pool_gpus(x.peak_need, x.daily_need), fleet, prob.tp), prob)
    margin_bound = bound - fleet_cost
    margin = (x.price * x.requests).sum() - fleet_cost
    gap = (margin_bound - margin) / jnp.maximum(jnp.abs(margin_bound), 1e-9)
    violation = jnp.where(found, 0.0, jnp.maximum(jnp.maximum(ep.max(), ed.max()), 0.0))
    return DualState(FleetStart(*last), x, margin_bound, gap, violation, local_bound - fleet_cost)


def _per_row(prob: Problem, fleet, xp=jnp):
    """(G, J, K) objective units per normalised capacity excess ``(need − N) / max(N, 1)`` per unit of
    capacity price: the conversion between :class:`FleetStart` prices and ``Solution.multipliers``."""
    return econ.usd_per_gpu_day(prob, xp)[:, None, None] * xp.maximum(fleet, 1.0) / xp.asarray(prob.scale)


@dataclasses.dataclass(frozen=True)
class FleetDual:
    """The dual solver of a fixed fleet (capacity prices per pool; hashable, a static ``jit`` argument).

    The inner solver of the integer repair when no quality floor is active: each candidate fleet
    is priced in closed form at its capacity prices, with a certified upper bound on its margin.
    """

    steps: int = 1000  # Rprop steps on the capacity prices
    learning_rate: float = 0.01
    temperature: float = 1e-2
    temperature_start: float = 5e-2
    tol_gap: float = 5e-3
    tol_feasibility: float = 1e-4
    sheet_steps: int = 0  # Newton steps on shared price sheets per step (0: contracts only)

    name = "dual"

    def init(self, task: Task) -> FleetStart:
        """Rent-level prices on both capacities of every pool, spread evenly over the periods."""
        shape = pool_period_shape(task.problem)
        z = np.full(shape, 1.0 / shape[-1])
        return FleetStart(0.5 * z, 0.5 * z)

    def start_from(self, task: Task, sol: Solution) -> FleetStart:
        """Capacity prices from a solution's multipliers of the fixed-fleet capacity rows (the units
        :meth:`solve` reports them in); rent-level where they are all zero (e.g. a relaxed plan).
        Host-side (NumPy)."""
        prob = task.problem
        shape = np.shape(prob.tp)
        P = int(np.prod(shape))
        per_row = _per_row(prob, np.asarray(task.fleet), np)
        mult = np.asarray(sol.multipliers)
        a, b = mult[-2 * P:-P].reshape(shape) / per_row, mult[-P:].reshape(shape) / per_row
        if a.sum() + b.sum() <= 0:
            return self.init(task)
        T = pool_period_shape(prob)[-1]
        return FleetStart(np.repeat(a[..., None] / T, T, -1), np.repeat(b[..., None] / T, T, -1))

    def solve(self, task: Task, y0: FleetStart) -> tuple[Solution, DualState]:
        """``(Solution, DualState)`` of the fixed-fleet task ``task`` (``task.fleet`` GPUs). Pure."""
        prob, fleet = task.problem, task.fleet
        st = solve_fleet_dual(prob, fleet, y0, self)
        # multipliers of the normalised capacity rows g = (need − N) / max(N, 1), in objective units
        P = fleet.size
        per_row = _per_row(prob, fleet)
        heads = jnp.concatenate([(st.start.peak_price.sum(-1) * per_row).ravel(),
                                 (st.start.daily_price.sum(-1) * per_row).ravel()])
        mult = jnp.zeros(task.active.shape, heads.dtype).at[-2 * P:].set(heads)
        return certified(self, task, st, fleet, mult), st

    def run(self, task: Task, y0: FleetStart) -> Solution:
        return self.solve(task, y0)[0]
