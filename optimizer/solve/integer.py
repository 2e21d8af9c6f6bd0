"""Integer fleet: a wrapper around an inner fixed-fleet solver (the augmented Lagrangian).

1. Round: every used pool of the relaxed plan gets ``ceil(GPUs / replica)`` replicas (enough for the
   relaxed load at the relaxed prices); where a GPU cap would be exceeded, the least-loaded
   replicas are dropped.
2. Re-solve prices, mix and routing with the fleet fixed (capacity constraints now explicit).
3. Repair: while infeasible, add the replica with the best marginal value (all one-replica
   additions are solved at once, batched; the best feasible margin wins).
4. Improve: try every one-replica removal at once; keep the best while margin rises.

The margin lost to integrality is relaxed margin − integer margin. Host-side loop (not jittable):
each round is one batched call of the inner solver's compiled program.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optimizer.solve.auglag import AugLag
from optimizer.solve.base import INFEASIBLE_TOL, Solution, Solver, Task

USED = 0.05
"""A pool whose relaxed fleet is below this share of one replica is left empty (its flow moves)."""


def limit_cut(cut, broken, over, overshoot, step, attempt):
    """(…, G + 2) how far below each limit (GPU caps, daily budget, capex budget) the next relaxed
    solve stays, after a whole-replica fleet broke those marked ``broken``.

    Rounding every pool up adds roughly the same GPUs and cost (``overshoot`` = whole − fractional)
    at any nearby plan, so a relaxation solved within ``limit − overshoot`` rounds up to a fleet
    within the limit. Where that falls just short, the limit comes down by the excess ``over`` (whole
    − limit), or by the larger of the smallest step a whole fleet takes ``step`` and
    :data:`CUT_SHARE` of the overshoot, × ``2**(attempt − 1)``, whichever is more: lowering the
    relaxation spreads over the pools and periods, and a period's whole replicas drop only when its
    need crosses a whole replica, so the step grows until one does (from one replica-period of rent
    alone it took more rounds than a sweep gives where rounding adds many replica-periods).
    ``attempt`` (…,) counts the earlier cuts; limits not broken keep ``cut``."""
    doubling = np.expand_dims(2.0 ** np.maximum(np.asarray(attempt, float) - 1.0, 0.0), -1)
    grow = cut + np.maximum(over, np.maximum(step, CUT_SHARE * overshoot) * doubling)
    return np.where(broken, np.maximum(grow, overshoot), cut)


CUT_SHARE = 1.0 / 16.0
"""Share of what rounding adds (``overshoot``) by which a limit that a whole fleet still breaks after
a cut comes down at least, doubling each round (:func:`limit_cut`)."""


class IntegerResult(NamedTuple):
    solution: Solution  # of the fixed-fleet task at ``fleet``
    fleet: np.ndarray  # (G, J, K) GPUs (whole replicas × replica GPUs)
    candidates_tried: int
    rounds: int


def round_fleet(gpus: np.ndarray, tp: np.ndarray, caps: np.ndarray, peak_load: np.ndarray) -> np.ndarray:
    """Whole replicas covering the relaxed GPUs, trimmed to the GPU caps."""
    reps = np.where((gpus > USED * tp) & (tp > 0), np.ceil(gpus / np.maximum(tp, 1) - 1e-9), 0.0)
    fleet = reps * tp
    for g in range(fleet.shape[0]):
        while fleet[g].sum() > caps[g] + 1e-9:
            load_per_gpu = np.where(fleet[g] > 0, peak_load[g] / np.maximum(fleet[g], 1e-30), np.inf)
            j, k = np.unravel_index(np.argmin(load_per_gpu), load_per_gpu.shape)
            fleet[g, j, k] -= tp[g, j, k]
    return fleet


def fleet_rows(inner, task: Task, y0, fleets: jnp.ndarray) -> Solution:
    """Solve ``task`` at each of ``fleets`` (B, G, J, K) from ``y0`` (the inner solver's start). Pure."""
    B = fleets.shape[0]
    if isinstance(inner, AugLag):  # its rows share one loop (compiles faster than vmap of the solve)
        decs = jax.tree.map(lambda x: jnp.broadcast_to(x, (B,) + x.shape), y0)
        act = jnp.broadcast_to(task.active, (B,) + task.active.shape)
        return inner.run_rows(task.problem, act, fleets, jnp.ones(B, bool), decs)
    return jax.vmap(lambda f: inner.run(task._replace(fleet=f, fixed=jnp.asarray(True)), y0))(fleets)


fleet_rows_jit = jax.jit(fleet_rows, static_argnums=0)


@dataclasses.dataclass(frozen=True)
class IntegerRepair:
    """Round, repair and improve the fleet of a relaxed plan with ``inner`` solving each fixed fleet
    (:class:`~optimizer.solve.AugLag`, or :class:`~optimizer.solve.fleet.FleetDual` without quality floors).

    ``width`` fleets are solved per compiled call (rows are padded to it, so every round reuses one
    program); ``rounds`` bounds the improvement rounds (repair gets 5 more).
    """

    inner: Solver  # AugLag or FleetDual (start_from(task, solution), run(task, y0))
    rounds: int = 3
    width: int = 8

    def solve_fleets(self, task: Task, y0, fleets: np.ndarray, program: Callable | None = None) -> Solution:
        """Solutions of ``task`` at each fleet of ``fleets`` (n, G, J, K), ``width`` per call (NumPy arrays)."""
        call = program or (lambda t, d, f: fleet_rows_jit(self.inner, t, d, f))
        n, outs = fleets.shape[0], []
        for i in range(0, n, self.width):
            chunk = fleets[i:i + self.width]
            m = chunk.shape[0]
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.width - m, axis=0)])
            out = jax.tree.map(np.asarray, call(task, y0, chunk))  # host-side from here: no eager JAX ops
            outs.append(jax.tree.map(lambda x: x[:m], out))
        return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)

    def run(self, task: Task, relaxed: Solution, relaxed_gpus: np.ndarray, relaxed_peak: np.ndarray,
            progress: Callable[[str], None] | None = None, program: Callable | None = None) -> IntegerResult:
        """Whole replicas for the relaxed plan ``relaxed`` of ``task`` (its pools' GPUs and peak loads
        ``relaxed_gpus``, ``relaxed_peak`` (G, J, K)); ``task.fleet`` is ignored. ``program`` replaces
        the compiled :func:`fleet_rows` call (e.g. an exported copy)."""
        prob = task.problem
        tp = np.asarray(prob.tp)
        caps = np.asarray(prob.gpu_cap)
        fleet = round_fleet(relaxed_gpus, tp, caps, relaxed_peak)
        # candidate pools: those the rounded fleet uses, plus those carrying a visible relaxed load
        pools = [idx for idx in np.ndindex(tp.shape) if tp[idx] > 0 and (fleet[idx] > 0 or relaxed_gpus[idx] > 1e-3)]
        pools = pools or [idx for idx in np.ndindex(tp.shape) if tp[idx] > 0]
        fixed = task._replace(fixed=np.asarray(True))

        def solve(prev, cands):
            y0 = self.inner.start_from(fixed._replace(fleet=cands[0]), prev)
            return self.solve_fleets(fixed, y0, np.stack(cands), program)

        def feasible(s):
            return (s.violation <= INFEASIBLE_TOL) & np.isfinite(s.objective)

        def neighbours(fleet, step):
            """Fleets one replica away (step +1: within the GPU caps; step -1: pools that have one)."""
            out = []
            for idx in pools:
                f = fleet.copy()
                f[idx] += step * tp[idx]
                if f[idx] >= 0 and f[idx[0]].sum() <= caps[idx[0]] + 1e-9:
                    out.append(f)
            return out

        sol = jax.tree.map(lambda x: x[0], solve(relaxed, [fleet]))
        tried, r = 1, 0
        while not bool(feasible(sol)) and r < self.rounds + 5:  # repair: add replicas until feasible
            cands = neighbours(fleet, +1)
            if not cands:
                break
            sols = solve(sol, cands)
            tried += len(cands)
            ok = feasible(sols)
            i = int(np.argmin(np.where(ok, sols.objective, np.inf))) if ok.any() else int(np.argmin(sols.violation))
            fleet, sol = cands[i], jax.tree.map(lambda x: x[i], sols)
            r += 1
            if progress:
                progress(f"repair round {r}")
        for _ in range(self.rounds):  # improve: remove replicas while margin rises
            cur = float(sol.margin) if bool(feasible(sol)) else -np.inf
            cands = neighbours(fleet, -1)
            if not cands:
                break
            sols = solve(sol, cands)
            tried += len(cands)
            ok = feasible(sols)
            if not ok.any():
                break
            margins = np.where(ok, sols.margin, -np.inf)
            i = int(np.argmax(margins))
            r += 1
            if progress:
                progress(f"improve round {r}")
            if margins[i] <= cur * (1 + 1e-9) + 1e-9:
                break
            fleet, sol = cands[i], jax.tree.map(lambda x: x[i], sols)
        return IntegerResult(sol, fleet, tried, r)
