"""The optimisation pipeline, Hydra-free: relaxed solve → integer fleet → final solution.

``optimize(RunConfig) -> Result`` is what `tokenmargin` runs and what tests call directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from optimizer.constraints import active_mask, constraint_names
from optimizer.integer import integer_fleet
from optimizer.objective import Breakdown, evaluate_jit
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
    with bar.bar(settings.outer_steps, "solving", show_bar):
        relaxed, _ = solve_multistart(prob, jnp.asarray(act_relaxed), None, settings, cfg.solver.starts,
                                          cfg.solver.seed, bar.outer_step if show_bar else None)
        jax.block_until_ready(relaxed)
    rb = evaluate_jit(relaxed.decision, prob)
    stages = {"relaxed": _stage(relaxed, rb, names, act_relaxed, time.perf_counter() - t0, INFEASIBLE_REPORT)}
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
