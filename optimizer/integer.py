"""Integer fleet: round the relaxed fleet to whole replicas, repair, improve, re-solve.

1. Relax: solve with the fleet derived from the load (continuous GPUs per pool).
2. Round: every used pool gets ``ceil(GPUs / tp)`` replicas (enough for the relaxed load at the
   relaxed prices); where a GPU cap would be exceeded, the least-loaded replicas are dropped.
3. Re-solve prices, mix and routing with the fleet fixed (capacity constraints now explicit).
4. Repair: while infeasible, add the replica with the best marginal value (all one-replica
   additions are solved at once with ``vmap``; the best feasible margin wins).
5. Improve: try every one-replica removal at once; keep the best while margin rises.
The margin lost to integrality is relaxed margin − integer margin.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optimizer.objective import evaluate, evaluate_jit
from optimizer.problem import Problem
from optimizer.solver import INFEASIBLE_TOL, Settings, Solution, solve_batch_jit

USED = 0.05
"""A pool whose relaxed fleet is below this share of one replica is left empty (its flow moves)."""


class IntegerResult(NamedTuple):
    solution: Solution
    fleet: np.ndarray  # (G, J, K) GPUs (whole replicas × tp)
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


@jax.jit
def _margins(decs, prob, fleets):
    return jax.vmap(lambda d, f: evaluate(d, prob, f).margin)(decs, fleets)


def solve_fleets(dec, prob: Problem, active, fleets: np.ndarray, settings: Settings, width: int) -> Solution:
    """Solve prices / mix / routing for many fixed fleets, ``width`` rows per compiled call.

    Rows are padded to ``width`` so every call reuses the relaxed stage's compiled solver.
    """
    n = fleets.shape[0]
    outs = []
    for i in range(0, n, width):
        chunk = fleets[i:i + width]
        m = chunk.shape[0]
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], width - m, axis=0)])
        decs = jax.tree.map(lambda x: jnp.broadcast_to(x, (width,) + x.shape), dec)
        act = jnp.broadcast_to(jnp.asarray(active), (width,) + np.shape(active))
        out = solve_batch_jit(decs, prob, act, jnp.asarray(chunk), jnp.ones(width, bool), settings, None)
        outs.append(jax.tree.map(lambda x: x[:m], out))
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *outs)


def integer_fleet(relaxed: Solution, prob: Problem, active_fixed: np.ndarray, settings: Settings,
                  rounds: int, width: int, progress: Callable[[str], None] | None = None) -> IntegerResult:
    """Round, repair and improve the fleet of a relaxed solution (see module doc)."""
    tp = np.asarray(prob.tp)
    caps = np.asarray(prob.gpu_cap)
    b = evaluate_jit(relaxed.decision, prob)
    fleet = round_fleet(np.asarray(b.gpus), tp, caps, np.asarray(b.peak_load))
    # candidate pools: those the rounded fleet uses, plus those carrying a visible relaxed load
    relaxed_gpus = np.asarray(b.gpus)
    pools = [idx for idx in np.ndindex(tp.shape) if tp[idx] > 0 and (fleet[idx] > 0 or relaxed_gpus[idx] > 1e-3)]
    pools = pools or [idx for idx in np.ndindex(tp.shape) if tp[idx] > 0]

    def solver(dec, cands):
        return solve_fleets(dec, prob, active_fixed, np.stack(cands), settings, width)

    sol = jax.tree.map(lambda x: x[0], solver(relaxed.decision, [fleet]))
    tried = 1

    def feasible(s):
        return (np.asarray(s.violation) <= INFEASIBLE_TOL) & np.isfinite(np.asarray(s.objective))

    def margin_of(s, f):
        return float(evaluate_jit(s.decision, prob, jnp.asarray(f)).margin)

    def neighbours(fleet, step):
        """Fleets one replica away (step +1: within the GPU caps; step -1: pools that have one)."""
        out = []
        for idx in pools:
            f = fleet.copy()
            f[idx] += step * tp[idx]
            if f[idx] >= 0 and f[idx[0]].sum() <= caps[idx[0]] + 1e-9:
                out.append(f)
        return out

    r = 0
    # repair: add replicas until feasible
    while not bool(feasible(sol)) and r < rounds + 5:
        cands = neighbours(fleet, +1)
        if not cands:
            break
        sols = solver(sol.decision, cands)
        tried += len(cands)
        ok = np.asarray(feasible(sols))
        score = np.where(ok, np.asarray(sols.objective), np.inf)
        i = int(np.argmin(score)) if ok.any() else int(np.argmin(np.asarray(sols.violation)))
        fleet, sol = cands[i], jax.tree.map(lambda x: x[i], sols)
        r += 1
        if progress:
            progress(f"repair round {r}")
    # improve: remove replicas while margin rises
    for _ in range(rounds):
        cur = margin_of(sol, fleet) if bool(feasible(sol)) else -np.inf
        cands = neighbours(fleet, -1)
        if not cands:
            break
        sols = solver(sol.decision, cands)
        tried += len(cands)
        ok = np.asarray(feasible(sols))
        if not ok.any():
            break
        margins = np.asarray(_margins(sols.decision, prob, jnp.asarray(np.stack(cands))))
        margins = np.where(ok, margins, -np.inf)
        i = int(np.argmax(margins))
        r += 1
        if progress:
            progress(f"improve round {r}")
        if margins[i] <= cur * (1 + 1e-9) + 1e-9:
            break
        fleet, sol = cands[i], jax.tree.map(lambda x: x[i], sols)
    return IntegerResult(sol, fleet, tried, r)
