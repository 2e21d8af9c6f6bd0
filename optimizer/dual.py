"""Structured (dual) solver of the relaxed margin problem: closed-form prices at given capacity prices.

The relaxed problem (derived fleet, :mod:`optimizer.objective`) is, in flow space, a concave revenue
(MNL: concave in shares [ECONOMICS.md §2.5]) minus a convex, piecewise-linear fleet cost
``Σ_p c_p · max(P_p/ρ_peak, D_p/ρ_day)`` (``P_p`` peak, ``D_p`` daily GPU load of pool ``p``).
Writing the max with a split ``μ_p ∈ [0, 1]`` of each pool's cost between its peak and its daily
load (the peak-load pricing dual of Steiner/Boiteux, ECONOMICS.md §2.7)::

    c_p · max(P/ρp, D/ρd) = max_μ c_p · (μ · P/ρp + (1 − μ) · D/ρd)

every request then has a *linear* cost, and for given ``μ`` the problem separates by segment:

* each offer (segment, model) serves from the option (precision, GPU) with the best
  quality-for-cost score — a vertex of the mix/routing simplex [the utility is linear in the mix];
  a softmax at a small temperature stands in for the argmax so that ties split smoothly;
* logit segments price by the constant adjusted markup ``p_j = c_j + 1/β + Π`` with
  ``βΠ = W(Σ_j exp(A_j − 1))`` (Lambert W; price floors and ceilings by a clipped Newton solve
  of ``Π = Σ_j m_j P_j``) [ECONOMICS.md §2.3, Gallego & Wang 2014];
* constant-elasticity offers price at the Lerner markup ``p = c·ε/(ε − 1)`` clipped to the box
  [ECONOMICS.md §2.1].

The outer problem finds ``μ``: at the optimum a pool's cost goes to its peak (``μ = 1``) when its
peak load binds, to its daily load (``μ = 0``) when batch traffic more than fills the off-peak
valley, and is split exactly where batch traffic fills the valley to the brim (``P/ρp = D/ρd``).
``μ`` is found by sign-adaptive projected steps (Optax Rprop) on ``e_p = P_p/ρp − D_p/ρd`` (the
gradient of the dual, normalised per pool), warm-started from a neighbouring scenario's ``μ``.

GPU caps, the daily GPU budget and the capex budget are limits on the fleet, linear in the pool
sizes, so their Lagrange multipliers ``λ ≥ 0`` just raise the GPU price that requests are charged
(:func:`limit_rate`); ``λ`` is found by the same Rprop steps on the relative excess over each
limit, and only plans within the feasibility tolerance are kept. Quality floors are not handled
here; callers fall back to :func:`optimizer.solver.solve_batch` for them.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from kernels.smooth import smooth_max_pos
from optimizer.objective import POOL_SHARPNESS, Breakdown, Decision, evaluate
from optimizer.problem import SECONDS_PER_DAY, Problem
from optimizer.solver import CONVERGED, INFEASIBLE, INFEASIBLE_TOL, NONFINITE, STEP_LIMIT

NEG = -1e30
"""Logit of an option that is not allowed (softmax weight exactly 0)."""
CLIP_ITERS = 1
"""Newton steps on the clipped markup fixed point (exact after 0 steps when no price bound binds)."""


def omega(x: jnp.ndarray, iters: int = 8) -> jnp.ndarray:
    """Wright omega ``ω(x) = W(e^x)``: Newton on ``w + log w = x`` [ECONOMICS.md §2.2]."""
    w = jnp.where(x > 1.0, x - jnp.log(jnp.maximum(x, 1.0)), jnp.exp(jnp.minimum(x, 1.0)))
    w = jnp.maximum(w, 1e-300)
    for _ in range(iters):
        w = w - (w + jnp.log(w) - x) * w / (1.0 + w)
        w = jnp.maximum(w, 1e-300)
    return w


class Primal(NamedTuple):
    """Primal solution for given capacity prices (one scenario)."""

    price: jnp.ndarray  # (S, J) USD per request
    mix: jnp.ndarray  # (S, J, K)
    route: jnp.ndarray  # (S, J, K, G)
    requests: jnp.ndarray  # (S, J) per day
    peak_need: jnp.ndarray  # (G, J, K) GPUs needed at peak
    daily_need: jnp.ndarray  # (G, J, K) GPUs needed over the day
    lagrangian: jnp.ndarray  # () USD/day: revenue − requests × their μ-split cost (the dual function)
    margin: jnp.ndarray  # () USD/day: revenue − cost of the fleet max(peak, daily) this solution needs


def primal(mu: jnp.ndarray, prob: Problem, temperature: float = 1e-2, rate: jnp.ndarray | None = None) -> Primal:
    """Optimal prices, mix and routing when pool ``(g, j, k)`` charges a share ``mu[g, j, k]`` of its
    GPU cost to peak load and the rest to daily load.

    Args:
      mu: (G, J, K) in [0, 1]. prob: one scenario's :class:`Problem`.
      temperature: softmax temperature of the option choice, in utils (logit) and in log-profit (CE).
      rate: (G,) USD per GPU-hour the requests are charged (default: the rent; :func:`solve_dual`
        adds the prices of GPU caps and budgets). ``margin`` always uses the rent.
    """
    d = prob.demand
    S, J = d.ref_price.shape
    interactive = (~prob.is_batch).astype(mu.dtype)
    mu_sjkg = jnp.transpose(mu, (1, 2, 0))[None]  # (1, J, K, G)
    share = (mu_sjkg * (interactive * prob.peak_to_mean)[:, None, None, None] / prob.peak_utilization
             + (1.0 - mu_sjkg) / prob.daily_utilization)
    rate = prob.usd_per_gpu_hour if rate is None else rate
    cost = rate / 3600.0 * prob.gpu_s_per_request * share  # (S, J, K, G) USD/request
    allowed = prob.route_mask > 0
    q = prob.quality[None, :, :, None] - d.ref_quality[:, :, None, None]  # (S, J, K, 1)
    shift = -(d.latency_sens * (prob.served_latency_ms - d.ref_latency_ms))  # (S,)
    lo = jnp.exp(prob.log_mu_lo)[:, None] * d.ref_price
    hi = jnp.exp(prob.log_mu_hi)[:, None] * d.ref_price
    offered = d.offer_mask > 0

    # --- logit segments: score options by utility per request, price by adjusted markup
    beta = d.beta[:, None, None, None]
    u = d.quality_sens[:, None, None, None] * 100.0 * q - beta * cost
    # --- constant elasticity: score by log of the option's optimal profit
    eps = d.elasticity[:, None, None, None]
    p_opt = jnp.clip(cost * eps / (eps - 1.0), lo[..., None, None], hi[..., None, None])
    ref = jnp.where(offered, d.ref_price, 1.0)[..., None, None]
    logpi = (jnp.log(jnp.maximum(p_opt - cost, 1e-300)) - eps * jnp.log(p_opt / ref)
             + d.quality_sens[:, None, None, None] * 100.0 * q)
    score = jnp.where(d.is_logit[:, None, None, None], u, logpi)
    z = jnp.where(allowed, score / temperature, NEG).reshape(S, J, -1)
    w = jax.nn.softmax(z, axis=-1).reshape(allowed.shape) * allowed
    mix = w.sum(-1)
    route = w / jnp.maximum(mix[..., None], 1e-300)
    c = (w * cost).sum((-1, -2))  # (S, J) USD/request
    quality_gap = (w * q).sum((-1, -2))  # (S, J) served quality − reference

    # logit prices: markup y_j = clip(1/β + Π, lo − c, hi − c), Π = Σ y_j P_j
    b = d.beta[:, None]
    A = jnp.where(offered, d.alpha + d.quality_sens[:, None] * 100.0 * quality_gap + shift[:, None] - b * c, NEG)

    def share_of(y):
        v = jnp.where(offered, A - b * y, NEG)
        vmax = jnp.maximum(v.max(-1, keepdims=True), 0.0)
        ev = jnp.exp(v - vmax) * offered
        return ev / (jnp.exp(-vmax) + ev.sum(-1, keepdims=True))

    bPi = omega(jax.nn.logsumexp(jnp.where(offered, A - 1.0, NEG), axis=-1))  # (S,) unclipped root
    Pi = bPi / d.beta

    def markup(Pi):
        return jnp.clip(1.0 / b + Pi[:, None], lo - c, hi - c)

    def resid(Pi):
        y = markup(Pi)
        return Pi - (y * share_of(y)).sum(-1)

    for _ in range(CLIP_ITERS):  # Newton on the clipped fixed point (no-op when no bound binds)
        r, dr = jax.jvp(resid, (Pi,), (jnp.ones_like(Pi),))
        Pi = Pi - r / jnp.where(jnp.abs(dr) > 1e-12, dr, 1.0)
    y = markup(Pi)
    p_logit = c + y
    D_logit = d.market[:, None] * share_of(y)

    p_ce = jnp.clip(c * d.elasticity[:, None] / (d.elasticity[:, None] - 1.0), lo, hi)
    ratio = p_ce / jnp.where(offered, d.ref_price, 1.0)
    D_ce = d.ref_demand * jnp.exp(-d.elasticity[:, None] * jnp.log(ratio) + d.quality_sens[:, None] * 100.0
                                  * quality_gap + shift[:, None])
    is_logit = d.is_logit[:, None]
    price = jnp.where(offered, jnp.where(is_logit, p_logit, p_ce), d.ref_price)
    reqs = jnp.where(offered, jnp.where(is_logit, D_logit, D_ce), 0.0)
    work = (reqs / SECONDS_PER_DAY)[..., None, None] * w * prob.gpu_s_per_request  # GPU-s/s
    peak = jnp.einsum("sjkg->gjk", work * (interactive * prob.peak_to_mean)[:, None, None, None])
    daily = jnp.einsum("sjkg->gjk", work)
    peak_need, daily_need = peak / prob.peak_utilization, daily / prob.daily_utilization
    revenue = (price * reqs).sum()
    lagrangian = revenue - (c * reqs).sum()
    margin = revenue - jnp.sum(jnp.maximum(peak_need, daily_need) * (prob.usd_per_gpu_hour * 24.0)[:, None, None])
    return Primal(price, mix, route, reqs, peak_need, daily_need, lagrangian, margin)


class DualSettings(NamedTuple):
    """Static settings of :func:`solve_dual` (hashable; part of the jit cache key).

    Defaults were chosen on 1,024 scenarios of the `risk` sweep against 1,000-step solves: from the
    base scenario's split, 60 steps annealed from 0.05 give a median margin gap of 0.035 % and a
    99th percentile of 0.22 % (80 steps: 0.02 % / 0.10 %); ``benchmarks/sweep_speed.py`` reports
    the figures of each run against the Adam and SciPy solvers.
    """

    steps: int = 100  # Rprop steps on μ (and on the limit prices λ)
    learning_rate: float = 0.01  # first step in μ and λ (Rprop then adapts it per coordinate)
    temperature: float = 1e-2  # final option-choice softmax temperature (utils; log-profit for CE)
    temperature_start: float = 5e-2  # annealed geometrically to `temperature` over the steps
    tol_gap: float = 5e-3  # certified relative gap (bound − margin) / |bound| to call a scenario converged
    tol_feasibility: float = 1e-4  # relative excess over a GPU cap or budget that still counts as feasible


class DualSolution(NamedTuple):
    """Result of :func:`solve_dual` (a pytree; batched under vmap)."""

    mu: jnp.ndarray  # (G, J, K) share of each pool's GPU cost charged to its peak load
    lam: jnp.ndarray  # (G + 2,) prices of the GPU caps, the daily budget and the capex budget (see limit_rate)
    primal: Primal  # the best feasible primal solution seen (by true margin)
    bound: jnp.ndarray  # () USD/day: upper bound on the relaxed optimum (dual function at μ, λ)
    gap: jnp.ndarray  # () relative certified gap (bound − margin) / |bound|
    violation: jnp.ndarray  # () largest relative excess of the primal over an active cap or budget


N_LIMITS = 2
"""Limits besides the per-GPU caps: the daily GPU budget and the capex budget."""


def limit_mask(prob: Problem, active: jnp.ndarray | None) -> jnp.ndarray:
    """(G + 2,) 1.0 where a GPU cap, the daily budget or the capex budget applies (the head of the
    constraint layout of :mod:`optimizer.constraints`)."""
    G = prob.usd_per_gpu_hour.shape[0]
    if active is None:
        return jnp.zeros(G + N_LIMITS, prob.usd_per_gpu_hour.dtype)
    return (active[:G + N_LIMITS] > 0).astype(prob.usd_per_gpu_hour.dtype)


def _capex_rate(prob: Problem) -> jnp.ndarray:
    """USD per GPU-hour per USD of capex: the fleet's mean rent over its mean capex (scales ``λ``)."""
    return prob.usd_per_gpu_hour.sum() / jnp.maximum(prob.capex_per_gpu.sum(), 1e-9)


def limit_rate(lam: jnp.ndarray, prob: Problem) -> jnp.ndarray:
    """(G,) USD per GPU-hour charged to requests when the limits have prices ``lam`` ≥ 0.

    ``lam`` is dimensionless: a cap's price in units of its GPU's rent, the budget's per dollar
    spent, and the capex budget's in units of the fleet's mean rent per dollar of capex.
    """
    G = prob.usd_per_gpu_hour.shape[0]
    r = prob.usd_per_gpu_hour
    return r * (1.0 + lam[:G] + lam[G]) + lam[G + 1] * _capex_rate(prob) * prob.capex_per_gpu


def limit_terms(lam: jnp.ndarray, prob: Problem) -> jnp.ndarray:
    """(G + 2,) USD/day: ``λ_k b_k`` of each limit (cap, budget, capex budget), active or not."""
    G = prob.usd_per_gpu_hour.shape[0]
    return jnp.concatenate([lam[:G] * prob.usd_per_gpu_hour * 24.0 * prob.gpu_cap,
                            (lam[G] * prob.budget_usd_per_day)[None],
                            (lam[G + 1] * _capex_rate(prob) * 24.0 * prob.capex_budget_usd)[None]])


def limit_value(lam: jnp.ndarray, prob: Problem, mask: jnp.ndarray) -> jnp.ndarray:
    """USD/day: ``Σ_k λ_k b_k`` over the active limits (the constant of the Lagrangian)."""
    return jnp.where(mask > 0, limit_terms(lam, prob), 0.0).sum()


def limit_excess(x: Primal, prob: Problem, mask: jnp.ndarray) -> jnp.ndarray:
    """(G + 2,) relative excess of the fleet over each active limit (−1 where inactive), with
    pools sized by the same smooth max as :func:`optimizer.objective.evaluate`."""
    gpus = smooth_max_pos(x.peak_need, x.daily_need, POOL_SHARPNESS)
    per_type = gpus.sum((1, 2))
    spend = jnp.sum(per_type * prob.usd_per_gpu_hour * 24.0)
    capex = jnp.sum(per_type * prob.capex_per_gpu)
    used = jnp.concatenate([per_type, spend[None], capex[None]])
    limit = jnp.concatenate([prob.gpu_cap, prob.budget_usd_per_day[None], prob.capex_budget_usd[None]])
    return jnp.where(mask > 0, (used - limit) / limit, -1.0)


def dual_bound(mu: jnp.ndarray, prob: Problem, lam: jnp.ndarray | None = None,
               active: jnp.ndarray | None = None) -> jnp.ndarray:
    """The dual function at ``(mu, lam)``: exact best option per offer (argmax), closed-form prices.

    By weak duality it bounds the relaxed optimum from above for every ``mu`` in [0, 1] and every
    ``lam`` ≥ 0 on the active caps and budgets (the inner problem is solved globally: vertex-optimal
    option, unimodal price [ECONOMICS.md §2.2, §2.3]; exact when no price floor or ceiling binds).
    """
    mask = limit_mask(prob, active)
    lam = jnp.zeros_like(mask) if lam is None else lam * mask
    return primal(mu, prob, 1e-9, limit_rate(lam, prob)).lagrangian + limit_value(lam, prob, mask)


def solve_dual(prob: Problem, mu0: jnp.ndarray, settings: DualSettings = DualSettings(),
               lam0: jnp.ndarray | None = None, active: jnp.ndarray | None = None) -> DualSolution:
    """Find the peak/daily cost split ``μ`` (and, with active GPU caps or budgets, their prices ``λ``)
    with sign-adaptive projected steps (Optax Rprop) on the dual gradient, keeping the feasible
    primal solution of highest true margin; pure, jittable and vmappable over scenarios.

    The dual gradient is ``e_p = (P_p/ρp − D_p/ρd) / (P_p/ρp + D_p/ρd)`` for ``μ_p`` (normalised per
    pool) and minus the relative excess over each active limit for ``λ`` [a cap or budget is a
    Lagrange multiplier on the GPU price: ECONOMICS.md §2.5]. The loop runs four evaluation-only
    iterations after the ``steps`` updates (one traced copy of :func:`primal`, which halves compile
    time against separate calls): the last ``(μ, λ)`` at the final temperature, the best at the
    temperature it was found at, and both again with an exact argmax for the dual bound.

    Args:
      prob: one scenario. mu0: (G, J, K) warm start (e.g. a neighbouring scenario's ``μ``).
      lam0: (G + 2,) warm start of the limit prices (zeros by default).
      active: the constraint mask of :func:`optimizer.constraints.active_mask`; its GPU caps and
        budgets are priced. Quality floors are not handled here (use the Adam solver).
    """
    opt = optax.rprop(settings.learning_rate, min_step_size=1e-12, max_step_size=0.5)
    n = settings.steps
    t0 = max(settings.temperature_start, settings.temperature)
    ratio = (settings.temperature / t0) ** (1.0 / max(n - 1, 1))
    dtype = mu0.dtype
    mask = limit_mask(prob, active)
    lam0 = jnp.zeros_like(mask) if lam0 is None else lam0 * mask
    params0 = (mu0, lam0)

    class Carry(NamedTuple):
        params: tuple  # current (μ, λ)
        opt_state: optax.OptState
        best_margin: jnp.ndarray  # best true margin among feasible iterates (−inf: none yet)
        best: tuple  # its (μ, λ)
        best_t: jnp.ndarray  # the temperature it was found at
        final: Primal  # the solution returned (last or best iterate)
        final_ok: jnp.ndarray  # whether `final` is feasible
        bound: jnp.ndarray  # min of the dual function at the last and the best (μ, λ)

    def step(c: Carry, k):
        # k < n: Rprop update; n: last (μ, λ) at the final temperature; n+1: best at its temperature
        # (kept if feasible and better); n+2, n+3: last and best with an exact argmax (dual bounds).
        # ``k`` is never batched, so the branch stays a real conditional under vmap.
        use_best = (k == n + 1) | (k == n + 3)
        mu, lam = jax.tree.map(lambda b, p: jnp.where(use_best, b, p), c.best, c.params)
        t = jnp.where(k < n, t0 * ratio**jnp.minimum(k, n - 1),
                      jnp.where(k == n, settings.temperature, jnp.where(k == n + 1, c.best_t, 1e-9)))
        x = primal(mu, prob, t, limit_rate(lam, prob))
        excess = limit_excess(x, prob, mask)
        feasible = jnp.max(excess) <= settings.tol_feasibility
        better = feasible & (x.margin > c.best_margin)  # every feasible primal point is a plan: keep the best

        def keep(c):
            return c._replace(best_margin=jnp.where(better, x.margin, c.best_margin),
                              best=jax.tree.map(lambda a, b: jnp.where(better, a, b), (mu, lam), c.best),
                              best_t=jnp.where(better, t, c.best_t))

        def update(c):
            e = (x.peak_need - x.daily_need) / jnp.maximum(x.peak_need + x.daily_need, 1e-9)
            upd, st = opt.update((-e, -excess * mask), c.opt_state, c.params)
            mu_new, lam_new = optax.apply_updates(c.params, upd)
            params = (jnp.clip(mu_new, 0.0, 1.0), jnp.maximum(lam_new, 0.0) * mask)
            return keep(c)._replace(params=params, opt_state=st)

        def finish(c):
            c = jax.lax.cond(k == n, keep, lambda c: c, c)
            take = (k == n) | ((k == n + 1) & (c.best_margin > -jnp.inf)
                               & ((x.margin >= c.final.margin) | ~c.final_ok))
            dual_value = x.lagrangian + limit_value(lam, prob, mask)
            return c._replace(final=jax.tree.map(lambda a, b: jnp.where(take, a, b), x, c.final),
                              final_ok=jnp.where(take, feasible, c.final_ok),
                              bound=jnp.where(k >= n + 2, jnp.minimum(c.bound, dual_value), c.bound))

        return jax.lax.cond(k < n, update, finish, c), None

    x0 = jax.tree.map(lambda a: jnp.zeros(a.shape, dtype), jax.eval_shape(lambda: primal(mu0, prob, 1.0)))
    carry = Carry(params0, opt.init(params0), jnp.asarray(-jnp.inf, dtype), params0,
                  jnp.asarray(settings.temperature, dtype), x0, jnp.asarray(False), jnp.asarray(jnp.inf, dtype))
    c, _ = jax.lax.scan(step, carry, jnp.arange(n + 4))
    best = c.final
    gap = (c.bound - best.margin) / jnp.maximum(jnp.abs(c.bound), 1e-9)
    violation = jnp.maximum(jnp.max(limit_excess(best, prob, mask)), 0.0)
    mu_out, lam_out = jax.tree.map(lambda b, p: jnp.where(c.best_margin > -jnp.inf, b, p), c.best, c.params)
    return DualSolution(mu_out, lam_out, best, c.bound, gap, violation)


WARM_START_STEPS = 1000
"""Dual steps of a scenario solved from scratch (an even cost split, unpriced limits)."""


@functools.lru_cache(maxsize=8)
def dual_program(settings: DualSettings):
    """``solve_dual(prob, mu0, lam0, active)`` jitted with its static settings bound (exportable)."""
    return jax.jit(lambda prob, mu0, lam0, active: solve_dual(prob, mu0, settings, lam0, active))


def scratch_start(prob: Problem, active: jnp.ndarray) -> tuple:
    """Arguments of :func:`dual_program` for a solve from scratch: an even split, unpriced limits."""
    G = prob.usd_per_gpu_hour.shape[0]
    return prob, jnp.full(prob.tp.shape, 0.5), jnp.zeros(G + N_LIMITS), jnp.asarray(active)


def solve_from_scratch(prob: Problem, active: jnp.ndarray, steps: int = WARM_START_STEPS) -> DualSolution:
    """The dual solution of one scenario from :func:`scratch_start` (compiled once per problem
    shape): the sweep's base solve, and a start for the single-run Adam solver."""
    return dual_program(DualSettings(steps=steps))(*scratch_start(prob, active))


class PlanCheck(NamedTuple):
    """A dual plan checked against the objective of single runs (:func:`optimizer.objective.evaluate`)."""

    decision: Decision
    breakdown: Breakdown
    violation: jnp.ndarray  # () largest normalised excess over an active constraint (0 if none)
    gap: jnp.ndarray  # () certified relative gap (bound − margin) / |bound|
    status: jnp.ndarray  # () int, optimizer.solver.STATUS_NAMES


def check_plan(sol: DualSolution, prob: Problem, active: jnp.ndarray, settings: DualSettings) -> PlanCheck:
    """Evaluate a dual solution's plan and give it a status: infeasible beyond ``INFEASIBLE_TOL``;
    converged within ``settings.tol_feasibility`` of every limit and ``settings.tol_gap`` of the
    bound; step_limit otherwise. Pure; jittable and vmappable."""
    dec = to_decision(sol.primal, prob)
    b = evaluate(dec, prob, None, active)
    viol = jnp.maximum(jnp.max(b.constraints), 0.0)
    gap = (sol.bound - b.margin) / jnp.maximum(jnp.abs(sol.bound), 1e-9)
    finite = jnp.isfinite(b.margin) & jnp.isfinite(sol.bound)
    status = jnp.where(~finite, NONFINITE, jnp.where(
        viol > INFEASIBLE_TOL, INFEASIBLE,
        jnp.where((gap <= settings.tol_gap) & (viol <= settings.tol_feasibility), CONVERGED, STEP_LIMIT)))
    return PlanCheck(dec, b, viol, gap, status)


def to_decision(x: Primal, prob: Problem) -> Decision:
    """The unconstrained :class:`Decision` reproducing a primal solution in :func:`evaluate`."""
    lo, hi = prob.log_mu_lo[:, None], prob.log_mu_hi[:, None]
    offered = prob.demand.offer_mask > 0
    log_mu = jnp.where(offered, jnp.log(jnp.where(offered, x.price / jnp.where(offered, prob.demand.ref_price, 1.0),
                                                  1.0)), 0.0)
    pos = jnp.clip((log_mu - lo) / (hi - lo), 1e-12, 1 - 1e-12)
    raw = jnp.log(pos) - jnp.log1p(-pos)
    return Decision(raw, jnp.log(jnp.maximum(x.mix, 1e-300)), jnp.log(jnp.maximum(x.route, 1e-300)))
