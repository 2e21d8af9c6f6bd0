"""The single-run pipeline, Hydra-free: relaxed solve → integer fleet → final plan.

``optimize(RunConfig) -> Result`` is what `tokenmargin` runs and what tests call directly. The
relaxed task is solved by the solver :func:`optimizer.solve.choose` picks (the same rule as
sweeps); the integer stage wraps the augmented Lagrangian on fixed fleets. Every compiled program
goes through :func:`optimizer.aot.exported`, so a warm run neither traces nor compiles.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import numpy as np

from optimizer import aot
from optimizer import economics as econ
from optimizer.constraints import active_mask, constraint_names
from optimizer.decision import decode, encode, reference_decision
from optimizer.objective import Breakdown, evaluate_plan_jit
from optimizer.problem import Labels, Problem, assemble_jit, build_problem, problem_shapes
from optimizer.schema import RunConfig
from optimizer.solve import RESULTS, AugLag, Dual, IntegerRepair, Solution, choose, fixed_task, relaxed_task
from optimizer.solve.auglag import multistart, run_starts_jit, start_decisions
from optimizer.solve.base import result_name
from optimizer.solve.check import Verdict, checked, floors_relaxed, meets_every_constraint, verdict
from optimizer.solve.choose import choose_fleet_solver, dual_of, peak_limits
from optimizer.solve.dual import N_LIMITS, dual_program
from optimizer.solve.integer import fleet_rows_jit, limit_cut

log = logging.getLogger("tokenmargin")

INFEASIBLE_REPORT = 1e-4
"""Normalised violation above which a constraint is named as violated in reports."""


@dataclass
class Stage:
    """Diagnostics of one solve stage."""

    status: str
    margin_usd_per_day: float
    violation: float
    grad_norm: float
    iterations: int
    outer_iterations: int
    wall_s: float
    violated: list[str] = field(default_factory=list)
    method: str = "auglag"  # solver whose plan this is: auglag or dual
    bound_usd_per_day: float | None = None  # certified upper bound on the stage's optimum (dual)
    gap: float | None = None  # certified relative gap (bound − margin) / |bound|
    tightened: int = 0  # re-solves of the relaxation within limits lowered by the rounding (engine.tightened)
    note: str = ""  # what else was tried (e.g. a stationary point of the augmented Lagrangian the dual's plan beat)


@dataclass
class Result:
    """A single run's outcome: the problem, the relaxed and final solutions and their breakdowns."""

    prob: Problem
    labels: Labels
    relaxed: Solution
    relaxed_breakdown: Breakdown
    final: Solution
    final_breakdown: Breakdown
    fleet: np.ndarray | None  # (G, J, K) integer fleet (GPUs), None when not rounded
    stages: dict[str, Stage]
    status: str  # of the final stage
    integrality_loss_usd_per_day: float | None

    @property
    def ok(self) -> bool:
        return self.status == RESULTS.converged.label


def _stage(sol: Solution, b: Breakdown, names: list[str], active: np.ndarray, wall: float, method: str) -> Stage:
    g = np.asarray(b.constraints)
    bad = np.flatnonzero((g > INFEASIBLE_REPORT) & (active > 0))
    bound = float(sol.bound)
    return Stage(status=result_name(sol.result), margin_usd_per_day=float(b.margin), violation=float(sol.violation),
                 grad_norm=float(sol.stats.grad_norm), iterations=int(sol.stats.iterations),
                 outer_iterations=int(sol.stats.outer_iterations), wall_s=round(wall, 3),
                 violated=[f"{names[i]} (violated by {g[i]:.3g}, normalised)" for i in bad], method=method,
                 bound_usd_per_day=None if np.isnan(bound) else round(bound, 2),
                 gap=None if np.isnan(float(sol.gap)) else float(sol.gap))


def solve_relaxed(prob: Problem, active: np.ndarray, cfg: RunConfig, show_bar: bool = False,
                  shared: bool = False) -> DualCheck:
    """The relaxed task solved by the chosen solver: ``(solution, solver name, note)`` (the augmented
    Lagrangian's plan checked against the dual's: :func:`against_dual`)."""
    from optimizer import progress as bar

    task = relaxed_task(prob, active)
    solver = choose(active, prob.usd_per_gpu_hour.shape[0], cfg.solver, shared=shared)
    if isinstance(solver, Dual):
        y0 = solver.init(task)
        sol, _ = _dual_solve(solver, task, y0)(task, y0)
        return DualCheck(sol, solver.name, "")
    s = cfg.solver
    # the dual first, on the task without its floors: its plan replaces the last of the augmented
    # Lagrangian's starts (near the optimum where no floor binds, a start a floor moves from), and it
    # checks the plan the augmented Lagrangian returns (against_dual)
    dual_sol = checking_solve(prob, active, cfg, shared)
    if show_bar:  # a host callback cannot be exported: traced in this process
        with bar.bar(solver.outer_steps, "solving", True):
            sol, _ = multistart(dataclasses.replace(solver, progress=bar.outer_step), task, s.starts, s.seed,
                                start=dual_sol.decision)
            sol = jax.block_until_ready(sol)
    else:
        dec0 = start_decisions(prob, s.starts, s.seed, dual_sol.decision)
        sol, _ = aot.exported("auglag_starts", starts_program(solver), (task, dec0), repr(solver))(task, dec0)
    return against_dual(prob, active, cfg, sol, dual_sol)


def checking_solve(prob: Problem, active: np.ndarray, cfg: RunConfig, shared: bool) -> Solution:
    """The dual's solution, from scratch, of the task with its quality floors relaxed
    (:func:`checking_dual`)."""
    dual, task = checking_dual(prob, active, cfg, shared)
    y0 = dual.init(task)
    dsol, _ = _dual_solve(dual, task, y0)(task, y0)
    return jax.tree.map(np.asarray, dsol)


class DualCheck(NamedTuple):
    """An augmented-Lagrangian plan checked against the dual (:func:`against_dual`)."""

    solution: Solution  # the plan kept, with the dual's bound and its gap
    method: str  # whose plan it is: auglag or dual
    note: str  # what the check found, for the run's summary ("" when the augmented Lagrangian's plan stands)


def against_dual(prob: Problem, active: np.ndarray, cfg: RunConfig, sol: Solution, dsol: Solution) -> DualCheck:
    """An augmented-Lagrangian plan ``sol`` checked against the dual's, ``dsol``: its solution of
    the same task with the quality floors relaxed (:func:`checking_solve`; why, and the rule sweeps
    share: :mod:`optimizer.solve.check`).

    Returns the dual's plan (with its own status) when it meets every constraint of the task,
    floors included, and earns more than ``solver.dual_tol_gap`` of the bound above the augmented
    Lagrangian's, or the augmented Lagrangian's ended infeasible or non-finite; else the augmented
    Lagrangian's plan with the dual's bound and gap (its status unchanged: where a floor binds,
    the bound can be loose).
    """
    b = evaluate_program(prob)(dsol.decision, prob, np.zeros(np.shape(prob.tp)), np.asarray(False))
    dual_margin = float(b.margin)
    feasible = bool(meets_every_constraint(dual_margin, np.asarray(b.constraints), np.asarray(active),
                                           cfg.solver.tol_feasibility))
    code = Verdict(int(verdict(int(sol.result), float(sol.margin), dual_margin, float(dsol.bound), feasible,
                               cfg.solver.dual_tol_gap)))
    kept = checked(jax.tree.map(np.asarray, sol), dsol, int(code))
    margin = float(sol.margin)
    if code == Verdict.replaced_infeasible:
        note = (f"the augmented Lagrangian ended {result_name(sol.result)}; the dual's plan meets every constraint "
                f"(${dual_margin:,.0f}/day) and is kept")
    elif code == Verdict.replaced_better:
        why = (": a stationary point of the non-concave margin" if result_name(sol.result) == RESULTS.converged.label
               else "")
        note = (f"the augmented Lagrangian stopped ({result_name(sol.result)}) at ${margin:,.0f}/day, "
                f"{100 * (dual_margin - margin) / abs(dual_margin):.1f} % below the dual's plan (${dual_margin:,.0f}/day)"
                f"{why}; the dual's plan is kept")
    else:
        return DualCheck(kept, "auglag", "")
    log.warning(note)
    return DualCheck(kept, "dual", note)


def checking_dual(prob: Problem, active: np.ndarray, cfg: RunConfig, shared: bool) -> tuple[Dual, object]:
    """``(dual solver, task)`` that :func:`checking_solve` runs (and a first run compiles early, from
    the problem's shapes): the relaxed task with its quality floors relaxed (the dual cannot price
    them; relaxing a constraint keeps its bound valid)."""
    G = int(np.shape(prob.usd_per_gpu_hour)[0])
    relaxed = floors_relaxed(np.asarray(active, float), G)
    return dual_of(cfg.solver, shared=shared, caps=peak_limits(relaxed, G)), relaxed_task(prob, relaxed)


def _dual_solve(solver: Dual, task, y0, lowered=None):
    """The exported dual solve of ``solver`` for tasks shaped like ``task`` (arrays or shapes);
    ``lowered``: see :func:`optimizer.aot.exported`."""
    return aot.exported("dual_solve", dual_program(solver), (task, y0), repr(solver), lowered=lowered)


def compile_relaxed_early(numbers, pools, labels, cfg: RunConfig, lowered: threading.Event | None = None) -> bool:
    """On a first run (the assemble program not yet stored), compile the relaxed dual solve from the
    problem's shapes (:func:`optimizer.problem.problem_shapes`, without tracing the cost kernels),
    so that it compiles while the assembly is traced and compiled, and record it as the assembly's
    next program. On a later run, load that recorded program while the assembly loads and runs
    (:func:`optimizer.aot.prefetch_next`). ``lowered`` is set once the solve is lowered (the
    longest compile can start; the caller may trace the assembly now) or once there is nothing to
    lower. Where the augmented Lagrangian solves the task, it compiles the dual that checks that
    solver's plan instead (:func:`against_dual`). Returns whether it compiled."""
    try:
        if aot.export_dir() is None:
            return False
        if aot.stored("assemble", (numbers, pools)):
            aot.prefetch_next("assemble", (numbers, pools))
            return False
        spec = problem_shapes(numbers, pools)
        spec = spec._replace(demand=spec.demand._replace(offer_mask=np.asarray(pools.offer_mask)))
        active = active_mask(labels, spec, fixed_fleet=False)
        task = relaxed_task(spec, active)
        solver = choose(active, len(labels.gpus), cfg.solver, shared=labels.has_shared_products)
        if not isinstance(solver, Dual):  # the augmented Lagrangian's plan is checked by the dual: compile that
            dual, task = checking_dual(spec, active, cfg, labels.has_shared_products)
            _dual_solve(dual, task, dual.init(task), lowered.set if lowered is not None else None)
            return True
        y0 = solver.init(task)
        _dual_solve(solver, task, y0, lowered.set if lowered is not None else None)
        aot.remember_next("assemble", (numbers, pools), ("dual_solve", (task, y0), repr(solver)))
        return True
    finally:
        if lowered is not None:
            lowered.set()


@functools.lru_cache(maxsize=8)
def starts_program(solver: AugLag):
    """``run_starts(task, dec0)`` of ``solver``, jitted with the solver bound (exportable; one per solver)."""
    return jax.jit(functools.partial(run_starts_jit, solver))


@functools.lru_cache(maxsize=8)
def fleets_program(inner):
    """``fleet_rows(task, dec, fleets)`` of ``inner``, jitted with the solver bound (exportable)."""
    return jax.jit(functools.partial(fleet_rows_jit, inner))


def _fleet_program(inner, task, y0, width: int):
    """The exported fixed-fleet solve of ``width`` fleets (one program for every repair round)."""
    fleets = np.zeros((width,) + task.fleet.shape)
    return aot.exported("fleet_rows", fleets_program(inner), (task, y0, fleets), repr(inner))


def evaluate_program(prob: Problem):
    """The compiled :func:`optimizer.objective.evaluate_plan`: a relaxed or a fixed-fleet plan."""
    fleet = np.zeros(np.shape(prob.tp))
    return aot.exported("evaluate", evaluate_plan_jit, (reference_decision(prob), prob, fleet, np.asarray(False)),
                        quick=True)


_decode, _encode = jax.jit(decode), jax.jit(encode)  # exported: eager operations would each compile on a run

KEEP_POOL = 0.5
"""A relaxed pool below this share of one replica (at its peak) hands its load to the flow's other pools."""


def consolidated(dec, prob: Problem, keep: np.ndarray):
    """``dec`` with each flow's routing restricted to the pools in ``keep`` (G, J, K) (renormalised;
    a flow with no kept pool keeps its largest), so small softmax tails do not each cost a replica."""
    decoded = aot.exported("decode", _decode, (dec, prob), quick=True)(dec, prob)
    log_mu, mix, route = (np.asarray(x, float) for x in decoded)
    kept = np.transpose(keep, (1, 2, 0))[None]  # (1, J, K, G)
    top = route >= route.max(-1, keepdims=True)
    r = np.where(kept | (~kept.any(-1, keepdims=True) & top), route, 0.0)
    r = r / np.maximum(r.sum(-1, keepdims=True), 1e-300)
    pool_ok = (np.where(kept, route, 0.0).sum(-1) > 0)  # (S, J, K): precision k still has a kept pool
    m = np.where(pool_ok | ~pool_ok.any(-1, keepdims=True), mix, 0.0)
    m = m / np.maximum(m.sum(-1, keepdims=True), 1e-300)
    return aot.exported("encode", _encode, (log_mu, m, r, prob), quick=True)(log_mu, m, r, prob)


class Rounded(NamedTuple):
    """Whole replicas per period for a relaxed plan (:func:`hourly_fleet`)."""

    solution: Solution  # the plan at the rounded fleet (relaxed prices, mix and routing)
    fleet: np.ndarray  # (G, J, K) peak GPUs, whole replicas
    breakdown: Breakdown  # of the plan on ``fleet``
    unrounded: Breakdown  # of the same plan with pools sized by load (fractional GPUs)
    ok: bool  # within every limit (GPU caps, budgets) and finite


def hourly_fleet(prob: Problem, relaxed: Solution, rb: Breakdown, evaluate) -> Rounded:
    """The integer fleet of a plan whose load varies over the periods: in every period each pool runs
    the whole replicas covering its need at the relaxed plan's prices, mix and routing (so every
    period has the capacity it needs), and reserves by the load-duration rule over those whole
    counts. Not ``ok`` where the rounded peak breaks a GPU cap, the budget or the capex budget of
    ``prob`` (see :func:`tightened`).

    Re-pricing a fixed fleet here would treat every GPU as paid whatever its load, which on-demand
    GPUs are not, so the plan keeps the relaxed prices; rounding up is the whole margin lost."""
    rep = np.maximum(np.asarray(prob.tp, float), 1.0)
    dec = consolidated(relaxed.decision, prob, np.asarray(rb.gpus, float) >= KEEP_POOL * rep)
    derived = evaluate(dec, prob, np.zeros(rep.shape), np.asarray(False))
    fleet = np.ceil(np.asarray(derived.gpus, float) / rep - 1e-9) * rep
    fb = evaluate(dec, prob, fleet, np.asarray(True))
    g = np.asarray(fb.constraints)
    viol = float(np.max(g, initial=0.0))
    limits = g[:np.shape(prob.gpu_cap)[0] + N_LIMITS]  # GPU caps, budget, capex budget: kept exactly (tightened() can)
    ok = bool(np.isfinite(float(fb.margin))) and viol <= 1e-4 and bool((limits <= 1e-9).all())
    sol = relaxed._replace(decision=dec, margin=fb.margin, objective=np.asarray(-float(fb.margin) / float(prob.scale)),
                           violation=np.maximum(viol, 0.0), bound=np.asarray(np.nan), gap=np.asarray(np.nan))
    return Rounded(sol, fleet, fb, derived, ok)


TIGHTEN_ROUNDS = 6
"""Re-solves of the relaxation with its limits tightened by the rounding's overshoot (:func:`tightened`)."""


def tightened(current: Problem, limits: Problem, rounded: Rounded, attempt: int = 0) -> Problem | None:
    """``current`` with each GPU cap, the daily budget and the capex budget that the whole-replica
    fleet ``rounded`` breaks (a limit of the real ``limits``) lowered by :func:`limit_cut` (an
    integer fleet under a binding cap or budget over several periods, with on-demand GPUs still paid
    per period: a fixed-fleet re-pricing would pay them all day); None when no limit is broken or
    one would reach zero."""
    rb, ub, fleet = rounded.breakdown, rounded.unrounded, rounded.fleet
    whole_type, frac_type = econ.gpus_per_type(fleet, np), econ.gpus_per_type(np.asarray(ub.gpus), np)
    whole = np.concatenate([whole_type, [float(rb.gpu_cost), econ.fleet_capex(whole_type, limits, np)]])
    fractional = np.concatenate([frac_type, [float(ub.gpu_cost), econ.fleet_capex(frac_type, limits, np)]])
    limit = np.concatenate([np.asarray(limits.gpu_cap, float),
                            [float(limits.budget_usd_per_day), float(limits.capex_budget_usd)]])
    now = np.concatenate([np.asarray(current.gpu_cap, float),
                          [float(current.budget_usd_per_day), float(current.capex_budget_usd)]])
    over = whole - limit
    new = limit - limit_cut(limit - now, over > 1e-9, over, whole - fractional,
                            econ.whole_steps(fleet > 0, limits, np.shape(limits.profile)[-1], np), attempt)
    if np.array_equal(new, now) or (new <= 0).any():
        return None
    G = np.shape(limits.gpu_cap)[0]
    return current._replace(gpu_cap=new[:G], budget_usd_per_day=np.asarray(new[G]),
                            capex_budget_usd=np.asarray(new[G + 1]))


def _repair_parts(prob, labels, cfg: RunConfig, act_relaxed, act_fixed):
    """``(inner solver, IntegerRepair, fixed-fleet task)`` of the integer stage."""
    inner = choose_fleet_solver(act_relaxed, len(labels.gpus), cfg.solver, labels.has_shared_products)
    repair = IntegerRepair(inner, cfg.solver.repair_rounds, cfg.solver.starts)
    return inner, repair, fixed_task(prob, act_fixed, np.zeros(np.shape(prob.tp)))


class RelaxedStage(NamedTuple):
    """The problem, its relaxed solution and what the integer stage needs (:func:`_relaxed_stage`)."""

    prob: Problem
    labels: Labels
    act_relaxed: np.ndarray  # (C,) constraint activity of the relaxed task
    act_fixed: np.ndarray  # (C,) of the fixed-fleet task
    inner: object  # the integer repair's inner solver
    repair: IntegerRepair
    fixed: object  # the fixed-fleet task (fleet zeros)
    relaxed: Solution
    method: str  # the relaxed solver's name
    programs: dict  # the later stages' programs (evaluate, fleet)
    t0: float  # when the relaxed solve started (perf_counter)
    note: str = ""  # what the relaxed solve's check against the dual found (:func:`against_dual`)


LOWER_WAIT_S = 60.0
"""Seconds a first run waits for the solve's program to be lowered before tracing the assembly anyway."""


def _relaxed_stage(cfg: RunConfig, pool: ThreadPoolExecutor, show_bar: bool, also_compile) -> RelaxedStage:
    """Build the problem and solve its relaxation, compiling on ``pool`` (two threads) what a first
    run needs beside it: the relaxed solve while the assembly compiles (from the problem's shapes),
    then the later stages' programs while the relaxed solve compiles (compilation releases the GIL)."""
    def before(n, p, lab):
        lowered = threading.Event()
        pool.submit(compile_relaxed_early, n, p, lab, cfg, lowered)  # a failure here is the main thread's to report
        if aot.export_dir() is not None and not aot.stored("assemble", (n, p)):
            # a first run: the solve's program is the longest compile, so trace it first, alone (tracing
            # holds the GIL), and the assembly while it compiles
            lowered.wait(LOWER_WAIT_S)

    prob, labels = build_problem(cfg, lambda n, p: aot.exported("assemble", assemble_jit, (n, p))(n, p), before)
    act_relaxed = active_mask(labels, prob, fixed_fleet=False)
    act_fixed = active_mask(labels, prob, fixed_fleet=True)
    inner, repair, fixed = _repair_parts(prob, labels, cfg, act_relaxed, act_fixed)

    def later():
        out = {"evaluate": evaluate_program(prob)}
        if cfg.solver.integer_fleet and not labels.time_varying:  # (an hourly plan is rounded, not re-priced)
            out["fleet"] = _fleet_program(inner, fixed, inner.init(fixed), repair.width)
        if also_compile is not None:  # beside the integer stage: waited for once the plan is done
            out["also"] = pool.submit(also_compile, prob, labels)
        return out

    programs = pool.submit(later)
    t0 = time.perf_counter()
    relaxed, method, note = solve_relaxed(prob, act_relaxed, cfg, show_bar, labels.has_shared_products)
    return RelaxedStage(prob, labels, act_relaxed, act_fixed, inner, repair, fixed, relaxed, method,
                        programs.result(), t0, note)


def optimize(cfg: RunConfig, progress=None, show_bar: bool = False, also_compile=None) -> Result:
    """Solve a scenario end to end.

    Args:
      cfg: the validated run config.
      progress: optional callable ``progress(stage: str)`` called between stages.
      show_bar: show a tqdm bar of the augmented Lagrangian's outer steps.
      also_compile: optional ``f(prob, labels)`` run in the background once the later programs
        are ready (e.g. the report's), beside the relaxed solve and the integer stage; waited for
        (and its errors raised) before this returns.

    Programs of the later stages (the plan's evaluation, the integer repair's fixed-fleet solve)
    are prepared in a background thread while the relaxed solve's program is: compilation releases
    the GIL, so on a first run the two compile at once.
    """
    with ThreadPoolExecutor(2) as pool:
        relaxed_stage = _relaxed_stage(cfg, pool, show_bar, also_compile)
        result = _integer_stage(cfg, progress, relaxed_stage)
        if "also" in relaxed_stage.programs:
            relaxed_stage.programs["also"].result()  # its errors are the run's
        return result


def _integer_stage(cfg: RunConfig, progress, stage: RelaxedStage) -> Result:
    """Whole replicas for the relaxed plan of :func:`optimize` (the relaxed plan itself without
    ``solver.integer_fleet``)."""
    prob, labels, act_relaxed, act_fixed, inner, repair, fixed, relaxed, method, programs, t0, note = stage
    names = constraint_names(labels)
    evaluate = programs["evaluate"]
    no_fleet = np.zeros(np.shape(prob.tp))
    rb = evaluate(relaxed.decision, prob, no_fleet, np.asarray(False))
    stages = {"relaxed": dataclasses.replace(_stage(relaxed, rb, names, act_relaxed, time.perf_counter() - t0, method),
                                             note=note)}
    if progress:
        progress("relaxed solve done")
    final, fb, fleet, loss = relaxed, rb, None, None
    if cfg.solver.integer_fleet and stages["relaxed"].status == RESULTS.converged.label:
        t1 = time.perf_counter()
        hourly = hourly_fleet(prob, relaxed, rb, evaluate) if labels.time_varying else None
        within, rounds = prob, 0
        while hourly is not None and not hourly.ok and rounds < TIGHTEN_ROUNDS:  # a limit binds: tighten it
            within = tightened(within, prob, hourly, rounds)
            if within is None:
                break
            again = solve_relaxed(within, act_relaxed, cfg, False, labels.has_shared_products).solution
            rounds += 1
            if progress:
                progress(f"limits tightened by the rounding, round {rounds}")
            if result_name(again.result) != RESULTS.converged.label:
                break
            hourly = hourly_fleet(prob, again, evaluate(again.decision, within, no_fleet, np.asarray(False)), evaluate)
        if hourly is not None and hourly.ok:  # whole replicas per period at the relaxed plan's prices, mix and routing
            final, fleet, fb = hourly.solution, hourly.fleet, hourly.breakdown
            how = "rounded"
        else:
            res = repair.run(fixed, relaxed, np.asarray(rb.gpus), np.asarray(rb.peak_load), progress,
                             programs.get("fleet"))
            final, fleet = res.solution, res.fleet
            fb = evaluate(final.decision, prob, fleet, np.asarray(True))
            how = inner.name
        stages["integer"] = dataclasses.replace(_stage(final, fb, names, act_fixed, time.perf_counter() - t1, how),
                                                tightened=rounds)
        loss = float(rb.margin) - float(fb.margin)
    status = list(stages.values())[-1].status
    return Result(prob, labels, relaxed, rb, final, fb, fleet, stages, status, loss)
