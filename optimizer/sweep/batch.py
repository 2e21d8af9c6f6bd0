"""The batched solve of a sweep: one ``jit(vmap(assemble → solve))`` program per chunk of scenarios,
sharded over every device ``jax.devices()`` offers, and its rows as a table.

Sweeps solve the continuous-fleet relaxation (GPUs per pool derived from load), not the integer
repair: the figures are margins and fleets before rounding to whole replicas (each row says
whether its plan can be made whole). The solver is the one :func:`optimizer.solve.choose` picks
for single runs too, warm-started from the base scenario's solution.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.sharding import NamedSharding, PartitionSpec

from optimizer import aot
from optimizer import economics as econ
from optimizer.decision import warm_and_cold
from optimizer.objective import evaluate
from optimizer.problem import PRICE_BOUND_TOL, Labels, Numbers, Pools, assemble, candidate_scores
from optimizer.schema import RunConfig
from optimizer.solve import AugLag, Dual, relaxed_task
from optimizer.solve.dual import DualStart
from optimizer.solve.base import RESULTS, result_name
from optimizer.solve.check import Verdict, checked, floors_relaxed, meets_every_constraint, verdict
from optimizer.sweep.axes import Target, apply_axes

SWEEP_BISECTION_STEPS = 16
"""SLO-batch bisections per scenario in a sweep (single runs use 48). 16 leave the SLO batch within
``log(B_max)·2^-16`` ≈ 1.3e-4 (relative, on the feasible side) of the root, far below the solvers'
5e-3 tolerance, and shorten the serving table when a serving input is an axis."""



class SweepResult(NamedTuple):
    """Per-scenario outputs of a chunk (leading axis = scenario)."""

    margin: jnp.ndarray  # USD/day
    revenue: jnp.ndarray
    gpu_cost: jnp.ndarray
    status: jnp.ndarray  # int, optimizer.solve.RESULTS
    violation: jnp.ndarray
    iterations: jnp.ndarray
    price_multiplier: jnp.ndarray  # (S, J)
    sheet: jnp.ndarray  # (R, 3) USD/Mtok of each product's input, cached input and output
    price_per_request: jnp.ndarray  # (S, J)
    requests: jnp.ndarray  # (S, J) per day
    quality: jnp.ndarray  # (S, J)
    mix: jnp.ndarray  # (S, J, K)
    gpus_by_type: jnp.ndarray  # (G,)
    bound: jnp.ndarray  # USD/day upper bound on the relaxed optimum (dual solver; NaN otherwise)
    price_bound: jnp.ndarray  # (S, J) int: -1 price at its floor, +1 at its ceiling, 0 inside the search range
    whole_ok: jnp.ndarray  # bool: the relaxed plan can be made whole (see plan_flags)
    start: DualStart | None  # the dual's best split, limit and sheet prices, period weights (a warm start; None: Adam)
    broken: jnp.ndarray  # (G + 2,) bool: rounding every pool up breaks this GPU cap, the budget, the capex budget
    overshoot: jnp.ndarray  # (G + 2,) what rounding up adds to each limited quantity (GPUs, USD/day, USD)
    over: jnp.ndarray  # (G + 2,) the rounded-up quantity minus its limit
    limit: jnp.ndarray  # (G + 2,) the limits as set (NO_CAP where none)
    step: jnp.ndarray  # (G + 2,) the smallest step a whole fleet takes in each (one replica, one replica-period, its capex)
    checked: jnp.ndarray  # int: the augmented Lagrangian's plan checked against the dual
    # (optimizer.solve.check.Verdict: 0 kept, > 0 the dual's plan replaced it); -1 no check (a dual sweep)


class Rounding(NamedTuple):
    """Each limit (G GPU caps, the daily budget, the capex budget) against a plan rounded up to whole replicas."""

    used: jnp.ndarray  # (G, J, K) bool: the pools a whole fleet keeps (the rest carry a softmax tail)
    whole: jnp.ndarray  # (G + 2,) GPUs per type, USD/day, USD of capex with every used pool rounded up
    fractional: jnp.ndarray  # (G + 2,) the same of the relaxed plan
    limit: jnp.ndarray  # (G + 2,)
    broken: jnp.ndarray  # (G + 2,) bool: whole > limit (within 1e-9)
    step: jnp.ndarray  # (G + 2,) smallest step of a whole fleet: one replica, one replica for one period, its capex


def rounded_up(b, prob) -> Rounding:
    """Every used pool of the relaxed plan ``b`` rounded up to whole replicas (of ``prob.tp`` GPUs),
    in every period, against the GPU caps, the daily budget and the capex budget. Pure."""
    rep = jnp.maximum(prob.tp, 1.0)  # GPUs per replica
    used = b.gpus > 0.01 * rep  # smaller pools (softmax tails of the Adam solver) are dropped by a whole fleet
    up = jnp.where(used, jnp.ceil(b.gpus / rep - 1e-6) * rep, 0.0)
    per_type, frac_type = econ.gpus_per_type(up), econ.gpus_per_type(b.gpus)
    periods = jnp.where(used[..., None], jnp.ceil(b.period_gpus / rep[..., None] - 1e-6), 0.0) * rep[..., None]
    whole = jnp.concatenate([per_type, econ.cycle_fleet_cost(periods, prob)[None],
                             econ.fleet_capex(per_type, prob)[None]])
    fractional = jnp.concatenate([frac_type, b.gpu_cost[None], econ.fleet_capex(frac_type, prob)[None]])
    limit = jnp.concatenate([prob.gpu_cap, prob.budget_usd_per_day[None], prob.capex_budget_usd[None]])
    G = per_type.shape[0]
    broken = whole > limit * (1.0 + 1e-9) + jnp.where(jnp.arange(G + 2) < G, 1e-9, 0.0)
    step = econ.whole_steps(used, prob, b.period_gpus.shape[-1])
    return Rounding(used, whole, fractional, limit, broken, step)


def plan_flags(b, prob, rounding: Rounding | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(price at bound (S, J) in {-1, 0, +1}, relaxed plan can be made whole ()) of one plan. Pure.

    The plan can be made whole when rounding every pool's GPUs up to whole replicas of its deployment
    (``prob.tp`` GPUs) keeps every GPU cap, the daily budget and the capex budget; or, where a limit
    binds, rounding down leaves every pool that carries load at least one whole replica (the integer
    repair then serves the same flows on slightly less capacity, at slightly higher prices). It
    cannot when a capped pool's load needs less than one replica's GPUs within its limit.
    """
    lm = jnp.log(jnp.maximum(b.sheet, 1e-300) / jnp.maximum(prob.sheet_ref, 1e-300))  # (R, 3)
    at_r = jnp.where(jnp.any(lm <= prob.log_mu_lo[:, None] + PRICE_BOUND_TOL, -1), -1,
                     jnp.where(jnp.any(lm >= prob.log_mu_hi[:, None] - PRICE_BOUND_TOL, -1), 1, 0))
    at = at_r[prob.flow_product]  # (S, J); rows report offered flows only
    r = rounded_up(b, prob) if rounding is None else rounding
    down_ok = jnp.all(jnp.where(r.used, jnp.floor(b.gpus / jnp.maximum(prob.tp, 1.0) + 1e-6) >= 1.0, True))
    up_ok = ~jnp.any(r.broken)
    return at, up_ok | down_ok


def solve_scenario(numbers: Numbers, pools: Pools, solver: AugLag | Dual, starts: int, warm, active: jnp.ndarray,
                   serving=None, check: Dual | None = None) -> SweepResult:
    """Assemble and solve one scenario (relaxed fleet), warm-started from the base scenario. Pure; vmappable.

    ``warm``: the dual's :class:`~optimizer.solve.DualStart` (its best split and limit prices), or the
    augmented Lagrangian's base optimum (a Decision), which starts one of ``starts`` rows (the others
    start from reference prices × the generated factors). ``check``: the dual that checks the
    augmented Lagrangian's plan (:mod:`optimizer.solve.check`) on the task with its quality floors
    relaxed; ``warm`` is then ``(Decision, DualStart)``, the base scenario's optimum and the
    check's base state.
    """
    prob = assemble(numbers, pools, serving, SWEEP_BISECTION_STEPS)
    task = relaxed_task(prob, active)
    if isinstance(solver, Dual):
        sol, state = solver.solve(task, warm)
        return scenario_result(sol, prob, state.start)
    if check is None:
        sol, _ = solver.run_starts(task, warm_and_cold(prob, warm, starts))
        return scenario_result(sol, prob, None)
    warm_decision, warm_dual = warm
    G = prob.usd_per_gpu_hour.shape[0]
    dual_sol, dual_state = check.solve(relaxed_task(prob, floors_relaxed(active, G)), warm_dual)
    # the dual's plan (the scenario's optimum without its floors) is one more start
    dec0 = jax.tree.map(lambda a, d: jnp.concatenate([a, d[None]]), warm_and_cold(prob, warm_decision, starts),
                        dual_sol.decision)
    sol, _ = solver.run_starts(task, dec0)
    b = evaluate(dual_sol.decision, prob)
    feasible = meets_every_constraint(b.margin, b.constraints, active, solver.tol_feasibility)
    code = verdict(sol.result, sol.margin, b.margin, dual_sol.bound, feasible, check.tol_gap)
    return scenario_result(checked(sol, dual_sol, code), prob, dual_state.start, code)


def repair_scenario(numbers: Numbers, pools: Pools, solver: Dual, active: jnp.ndarray, serving, start: DualStart,
                    cut: jnp.ndarray, bound: jnp.ndarray, floors: bool = False) -> SweepResult:
    """Solve one scenario again from its own dual state ``start``, within its limits lowered by ``cut``
    (G + 2,) (GPU caps, daily budget, capex budget; 0: as set). Pure; vmappable.

    The row is judged against the scenario's real limits (its whole-fleet flag) and its certified gap
    against the lower of ``bound`` (the scenario's bound so far) and this solve's dual function at
    the scenario's own limits (valid within lowered limits too: they enter the Lagrangian only as
    a constant).

    ``floors``: a row of an augmented-Lagrangian sweep that holds the dual's plan (static). The dual
    solves the task with its quality floors relaxed (its bound stays valid), and a plan that breaks
    a constraint of ``active``, floors included, counts as infeasible (a repair never takes it).
    """
    prob = assemble(numbers, pools, serving, SWEEP_BISECTION_STEPS)
    G = prob.gpu_cap.shape[0]
    within = prob._replace(gpu_cap=prob.gpu_cap - cut[:G], budget_usd_per_day=prob.budget_usd_per_day - cut[G],
                           capex_budget_usd=prob.capex_budget_usd - cut[G + 1])
    sol, state = solver.solve(relaxed_task(within, floors_relaxed(active, G) if floors else active), start,
                              as_set=prob)
    if floors:
        b = evaluate(sol.decision, prob)
        ok = meets_every_constraint(b.margin, b.constraints, active, solver.tol_feasibility)
        sol = sol._replace(result=jnp.where(ok, sol.result, int(RESULTS.infeasible)))
    return scenario_result(sol._replace(bound=jnp.minimum(bound, state.set_bound)), prob, state.start)


def scenario_result(sol, prob, start, checked_code=-1) -> SweepResult:
    """The row of a solved scenario: its plan evaluated on ``prob`` (the scenario as set), its flags
    and how rounding up to whole replicas meets each limit (``checked_code``: :attr:`SweepResult.checked`)."""
    b = evaluate(sol.decision, prob)
    r = rounded_up(b, prob)
    return SweepResult(b.margin, b.revenue.sum(), b.gpu_cost, sol.result, sol.violation, sol.stats.iterations,
                       b.price_multiplier, b.sheet, b.price_per_request, b.requests_per_day, b.quality, b.mix,
                       econ.gpus_per_type(b.gpus), sol.bound, *plan_flags(b, prob, r), start, r.broken,
                       r.whole - r.fractional, r.whole - r.limit, r.limit, r.step, jnp.asarray(checked_code))


def chunk_program(targets, relative, solver, starts, mesh, reuse_serving: bool, check: Dual | None = None):
    """The compiled chunk program; one per (axes, solver, check, mesh), reused by every later sweep
    (``check``: see :func:`solve_scenario`)."""
    return _chunk_program(tuple(targets), tuple(relative), solver, starts, mesh, reuse_serving, check)


@functools.lru_cache(maxsize=16)
def _chunk_program(targets: tuple[Target, ...], relative, solver, starts, mesh, reuse_serving: bool, check):
    def run(base, values, pools, active, warm, serving):
        nums = jax.vmap(lambda v: apply_axes(base, targets, relative, v))(values)
        serve = serving if reuse_serving else None
        return jax.vmap(lambda n: solve_scenario(n, pools, solver, starts, warm, active, serve, check))(nums)

    return _sharded(run, mesh, 6, (1,))


def probe_program(targets, relative):
    """The compiled probe program: every candidate deployment's GPU-s per request and feasibility,
    (M, S, P, C), at M design rows (:func:`optimizer.problem.candidate_scores`, at the sweep's SLO precision)."""
    return _probe_program(tuple(targets), tuple(relative))


@functools.lru_cache(maxsize=16)
def _probe_program(targets: tuple[Target, ...], relative):
    def run(base, values, pools):
        nums = jax.vmap(lambda v: apply_axes(base, targets, relative, v))(values)
        return jax.vmap(lambda n: candidate_scores(n, pools, SWEEP_BISECTION_STEPS))(nums)

    return jax.jit(run)


def repair_program(targets, relative, solver: Dual, mesh, reuse_serving: bool, floors: bool = False):
    """The compiled repair program (:func:`repair_scenario` over a batch of rows, each from its own
    state; ``floors``: see there)."""
    return _repair_program(tuple(targets), tuple(relative), solver, mesh, reuse_serving, floors)


@functools.lru_cache(maxsize=16)
def _repair_program(targets: tuple[Target, ...], relative, solver: Dual, mesh, reuse_serving: bool, floors: bool):
    def run(base, values, pools, active, serving, start, cut, bound):
        nums = jax.vmap(lambda v: apply_axes(base, targets, relative, v))(values)
        serve = serving if reuse_serving else None
        return jax.vmap(lambda n, y, c, u: repair_scenario(n, pools, solver, active, serve, y, c, u, floors))(
            nums, start, cut, bound)

    return _sharded(run, mesh, 8, (1, 5, 6, 7))


def _sharded(run, mesh, n_args: int, rows: tuple[int, ...]):
    """``jit(run)`` of ``n_args`` arguments, its scenario axis sharded over ``mesh`` (the arguments at
    positions ``rows`` and the outputs; the rest replicated)."""
    if mesh is None:
        return jax.jit(run)
    by_row = NamedSharding(mesh, PartitionSpec("scenarios"))
    rep = NamedSharding(mesh, PartitionSpec())
    shardings = tuple(by_row if i in rows else rep for i in range(n_args))
    return jax.jit(run, in_shardings=shardings, out_shardings=by_row)


def sweep_key(cfg: RunConfig) -> str:
    """Hash of everything that determines the sweep's results: the whole config (not the chunk store,
    resume flag or output options), this package's source, the JAX version and the float width."""
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    d["sweep"].pop("resume", None)
    d["sweep"].pop("directory", None)
    d["output"] = None
    code = {"source": aot.source_hash(), "jax": jax.__version__, "x64": bool(jax.config.jax_enable_x64)}
    return hashlib.sha256(json.dumps([d, code], sort_keys=True, default=str).encode()).hexdigest()[:12]


def result_frame(res: SweepResult, labels: Labels, design_rows: pd.DataFrame, offset: int, repaired=None,
                 solver: str = "dual") -> pd.DataFrame:
    """Flatten a chunk's results into one row per scenario (float64, rounded); ``repaired``: the
    chunk's :class:`optimizer.sweep.repair.Repaired` (its rounds and lowered limits per row);
    ``solver``: the sweep's solver (a row whose plan the dual's replaced says ``dual``)."""
    n = len(design_rows)
    out = design_rows.reset_index(drop=True).copy()
    out.insert(0, "scenario", np.arange(offset, offset + n))
    r = jax.tree.map(lambda x: np.asarray(x, dtype=float if np.asarray(x).dtype.kind == "f" else None)[:n], res)
    out["margin_usd_per_day"] = np.round(r.margin, 2)
    out["revenue_usd_per_day"] = np.round(r.revenue, 2)
    out["gpu_cost_usd_per_day"] = np.round(r.gpu_cost, 2)
    whole = np.asarray(r.whole_ok, bool)
    # a relaxed plan whose pools cannot be rounded up to whole replicas within the limits is no plan
    out["status"] = [result_name(s) if int(s) != 0 or w else "no_whole_fleet" for s, w in zip(r.status, whole)]
    out["converged"] = (r.status == 0) & whole
    out["whole_fleet_feasible"] = whole
    at = np.asarray(r.price_bound)
    out["price_at_bound"] = [", ".join(f"{labels.segments[s]}/{labels.models[j]}:{'floor' if at[i, s, j] < 0 else 'ceiling'}"
                                       for s, j in zip(*np.nonzero(at[i])) if labels.ref_input_usd_per_mtok[s][j] > 0)
                             for i in range(n)]
    out["solver"] = np.where(np.asarray(r.checked) > int(Verdict.kept), "dual", solver)
    out["violation"] = r.violation
    out["iterations"] = r.iterations.astype(int)
    out["repair_rounds"] = np.zeros(n, int) if repaired is None else repaired.rounds
    out["limits_lowered"] = np.zeros(n, bool) if repaired is None else repaired.lowered
    out["margin_upper_bound_usd_per_day"] = np.round(r.bound, 2)
    out["optimality_gap_bound"] = (r.bound - r.margin) / np.maximum(np.abs(r.bound), 1e-9)
    for s, seg in enumerate(labels.segments):
        for j, m in enumerate(labels.models):
            if labels.ref_input_usd_per_mtok[s][j] == 0:
                continue
            key = f"{seg}/{m}"
            out[f"price_vs_reference[{key}]"] = np.round(r.price_multiplier[:, s, j], 6)
            out[f"requests_per_day[{key}]"] = np.round(r.requests[:, s, j], 1)
            out[f"served_quality[{key}]"] = np.round(r.quality[:, s, j], 6)
            for k, prec in enumerate(labels.precisions):
                out[f"mix[{key}/{prec}]"] = np.round(r.mix[:, s, j, k], 6)
    if labels.has_shared_products:
        for p, product in enumerate(labels.products):
            for t, kind in enumerate(("input", "cached_input", "output")):
                out[f"usd_per_mtok[{product}/{kind}]"] = np.round(r.sheet[:, p, t], 6)
    for g, gpu in enumerate(labels.gpus):
        out[f"gpus[{gpu}]"] = np.round(r.gpus_by_type[:, g], 3)
    return out
