"""The optimisation pipeline, Hydra-free: relaxed solve → integer fleet → final solution.

``optimize(RunConfig) -> Result`` is what `tokenmargin` runs and what tests call directly.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from optimizer.constraints import active_mask, constraint_names
from optimizer import aot
from optimizer.dual import (N_LIMITS, WARM_START_STEPS, DualSettings, check_plan, dual_program, limit_terms,
                            scratch_start)
from optimizer.integer import integer_fleet
from optimizer.objective import Breakdown, Decision, evaluate_jit
from optimizer.problem import Labels, Problem, build_problem
from optimizer.schema import RunConfig, SolverConfig
from optimizer.solver import CONVERGED, STATUS_NAMES, Settings, Solution, solve_multistart

INFEASIBLE_REPORT = 1e-4
"""Normalised violation above which a constraint is named as violated in reports."""


def settings_from(cfg: SolverConfig) -> Settings:
    return Settings(outer_steps=cfg.outer_steps, inner_steps=cfg.inner_steps, learning_rate=cfg.learning_rate,
                    final_learning_rate=cfg.final_learning_rate, penalty=cfg.penalty,
                    tol_feasibility=cfg.tol_feasibility, tol_objective=cfg.tol_objective)


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
    method: str = "adam"  # solver whose plan this is: adam (augmented Lagrangian) or dual (structured)


@dataclass
class Result:
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
        return self.status == STATUS_NAMES[CONVERGED]


def _stage(sol: Solution, b: Breakdown, names: list[str], active: np.ndarray, wall: float, tol: float) -> Stage:
    g = np.asarray(b.constraints)
    violated = [f"{names[i]} (violated by {g[i]:.3g}, normalised)" for i in np.flatnonzero((g > tol) & (active > 0))]
    return Stage(status=STATUS_NAMES[int(sol.status)], margin_usd_per_day=float(b.margin),
                 violation=float(sol.violation), grad_norm=float(sol.grad_norm), iterations=int(sol.iterations),
                 outer_iterations=int(sol.outer_iterations), wall_s=round(wall, 3), violated=violated)


START_LOGIT_FLOOR = -30.0
"""Mix and routing logits of the dual start are floored here (weight e^-30 ≈ 1e-13), so the Adam
solver can still move flows to options the dual start leaves unused."""


def dual_candidate(prob: Problem, active: np.ndarray, n_gpus: int) -> tuple[Decision, Solution] | None:
    """The structured dual solver's plan (``optimizer/dual.py``): as a start for the Adam solver and
    as a candidate relaxed solution. None with quality floors, which the dual does not handle.

    Tight GPU caps are where it matters: from reference prices the augmented Lagrangian can stall
    far from the optimum there, while the dual prices the cap. The candidate's status is converged
    when it is within 1e-4 of every cap and budget and within 0.5 % of its certified upper bound;
    its multipliers are the caps' and budgets' prices in the solver's normalised units.
    """
    if np.asarray(active)[n_gpus + N_LIMITS:].sum() > 0:
        return None
    act = jnp.asarray(active)
    settings = DualSettings(steps=WARM_START_STEPS)
    start = scratch_start(prob, act)
    sol = aot.exported("base_dual", dual_program(settings), start, repr(settings))(*start)  # = solve_from_scratch
    dec, start, margin, viol, status, terms = _dual_plan(sol, prob, act, settings)
    # shadow prices of the normalised constraints g = (used − limit) / limit, in objective units (/ scale)
    heads = np.where(np.asarray(active)[:n_gpus + N_LIMITS] > 0, np.asarray(terms), 0.0)
    mult = np.zeros(np.asarray(active).shape)
    mult[:n_gpus + N_LIMITS] = heads / float(prob.scale)
    cand = Solution(dec, jnp.asarray(mult), -margin / prob.scale, viol, jnp.asarray(np.nan),
                    jnp.asarray(settings.steps), jnp.asarray(1), status)
    return start, cand


@functools.partial(jax.jit, static_argnames=("settings",))
def _dual_plan(sol, prob: Problem, active: jnp.ndarray, settings: DualSettings):
    """(decision, Adam start with floored logits, margin, violation, status, λ_k·b_k per limit) of a
    dual plan, in one program."""
    c = check_plan(sol, prob, active, settings)
    dec = c.decision
    start = dec._replace(mix_logits=jnp.maximum(dec.mix_logits, START_LOGIT_FLOOR),
                         route_logits=jnp.maximum(dec.route_logits, START_LOGIT_FLOOR))
    return dec, start, c.breakdown.margin, c.violation, c.status, limit_terms(sol.lam, prob)


def prefer_dual(dual: Solution, adam: Solution) -> bool:
    """Take the dual candidate when it converged and Adam did not, or when its margin is higher."""
    if int(dual.status) != CONVERGED:
        return False
    return int(adam.status) != CONVERGED or float(dual.objective) < float(adam.objective) - 1e-6 * abs(
        float(adam.objective))


def optimize(cfg: RunConfig, progress=None, show_bar: bool = False) -> Result:
    """Solve a scenario end to end.

    Args:
      cfg: the validated run config.
      progress: optional callable ``progress(stage: str)`` called between stages.
      show_bar: show a tqdm bar of the relaxed solve's outer steps.
    """
    from optimizer import progress as bar
    prob, labels = build_problem(cfg)
    names = constraint_names(labels)
    settings = settings_from(cfg.solver)
    act_relaxed = active_mask(labels, prob, fixed_fleet=False)
    t0 = time.perf_counter()
    dual = dual_candidate(prob, act_relaxed, len(labels.gpus)) if cfg.solver.dual else None
    with bar.bar(settings.outer_steps, "solving", show_bar):
        relaxed, _ = solve_multistart(prob, jnp.asarray(act_relaxed), None, settings, cfg.solver.starts,
                                      cfg.solver.seed, bar.outer_step if show_bar else None,
                                      dual[0] if dual else None)
        jax.block_until_ready(relaxed)
    method = "adam"
    if dual is not None and prefer_dual(dual[1], relaxed):
        relaxed, method = dual[1], "dual"
    rb = evaluate_jit(relaxed.decision, prob)
    stages = {"relaxed": _stage(relaxed, rb, names, act_relaxed, time.perf_counter() - t0, INFEASIBLE_REPORT)}
    stages["relaxed"].method = method
    if progress:
        progress("relaxed solve done")
    final, fb, fleet, loss = relaxed, rb, None, None
    if cfg.solver.integer_fleet and stages["relaxed"].status == "converged":
        t1 = time.perf_counter()
        act_fixed = active_mask(labels, prob, fixed_fleet=True)
        res = integer_fleet(relaxed, prob, act_fixed, settings, cfg.solver.repair_rounds, cfg.solver.starts,
                            progress)
        final, fleet = res.solution, res.fleet
        fb = evaluate_jit(final.decision, prob, jnp.asarray(fleet))
        stages["integer"] = _stage(final, fb, names, act_fixed, time.perf_counter() - t1, INFEASIBLE_REPORT)
        stages["integer"].iterations = int(final.iterations)
        loss = float(rb.margin) - float(fb.margin)
    status = list(stages.values())[-1].status
    return Result(prob, labels, relaxed, rb, final, fb, fleet, stages, status, loss)
