"""Structured (dual) solver of the relaxed margin problem: closed-form prices at given capacity prices.

The relaxed problem (derived fleet, :mod:`optimizer.objective`) is, in flow space, a concave revenue
(MNL: concave in shares [ECONOMICS.md §2.5]) minus a convex, piecewise-linear fleet cost
``Σ_p c_p · max(P_p/ρ_peak, D_p/ρ_day)`` (``P_p`` peak, ``D_p`` daily GPU load of pool ``p``).
Writing the max with a *split* ``s_p ∈ [0, 1]`` of each pool's cost between its peak and its daily
load (the peak-load pricing dual of Steiner/Boiteux, ECONOMICS.md §2.7)::

    c_p · max(P/ρp, D/ρd) = max_s c_p · (s · P/ρp + (1 − s) · D/ρd)

every request then has a *linear* cost, and for a given split the problem separates by segment:

* each offer (segment, model) serves from the option (precision, GPU) with the best
  quality-for-cost score — a vertex of the mix/routing simplex [the utility is linear in the mix];
  a softmax at a small temperature stands in for the argmax so that ties split smoothly;
* logit segments price by the constant adjusted markup ``p_j = c_j + 1/β + Π`` with
  ``βΠ = W(Σ_j exp(A_j − 1))`` (Lambert W; price floors and ceilings by a clipped Newton solve
  of ``Π = Σ_j m_j P_j``) [ECONOMICS.md §2.3, Gallego & Wang 2014];
* constant-elasticity offers price at the Lerner markup ``p = c·ε/(ε − 1)`` clipped to the box
  [ECONOMICS.md §2.1]; demand at those prices is :func:`kernels.demand.demand`.

The outer problem finds the split: at the optimum a pool's cost goes to its peak (``s = 1``) when
its peak load binds, to its daily load (``s = 0``) when batch traffic more than fills the off-peak
valley, and is split exactly where batch traffic fills the valley to the brim (``P/ρp = D/ρd``).
With one period it is found by sign-adaptive projected steps (Optax Rprop) on
``e_p = P_p/ρp − D_p/ρd`` (the gradient of the dual, normalised per pool), warm-started from a
neighbouring scenario's split.

Over T periods the cost is the load-duration optimum of reserved and on-demand GPUs
(:mod:`kernels.capacity`), whose subgradients are the period weights ``π`` (``ν/T ≤ π_t ≤ κ/T``,
``Σ π_t = 1``), so the charges are ``(π_t s_t, π_t (1 − s_t))`` per period: a polytope. They take
Frank–Wolfe steps (``2/(k + 4 + offset)``, offset > 0 from a warm start) towards :func:`charge_target`, the
subgradient of the cost at the current solution's needs chosen as the water-filled batch's
optimality conditions ask — the linear minimiser of the dual over the charge set.

GPU caps, the daily GPU budget and the capex budget are limits on the fleet, linear in the pool
sizes, so their Lagrange multipliers (*limit prices* ``λ ≥ 0``, dimensionless) just raise the GPU
price that requests are charged (:func:`charged_rate`); they are found by the same Rprop steps on
the relative excess over each limit, and only plans within the feasibility tolerance are kept.
Quality floors and fixed fleets are not handled here (:func:`optimizer.solve.choose` sends those
to the augmented Lagrangian).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kernels.demand import demand, nested_shares, outside_log
from kernels.capacity import project_weights, smooth_charge_weights
from optimizer import economics as econ
from optimizer.decision import MASKED, encode, flow_prices, log_multiplier, price_box, sheet_log_mu, sheet_params
from optimizer.objective import evaluate
from optimizer.problem import NO_ON_DEMAND, Problem
from optimizer.solve.base import Solution, Stats, Task, result_of

FINAL_SHEET_FACTOR = 4
"""The final evaluations run this many times the per-step Newton steps on shared sheets."""
SHEET_GAIN_TOL = 1e-4
"""Relative profit the last Newton step on shared sheets may have promised for a converged plan (the
step then leaves about its square: Newton converges quadratically near a maximum)."""
WEIGHT_WIDTH = 1e-4
"""Band of needs (a share of each pool's peak need) over which the period weights are smoothed at the
start temperature; it narrows with the temperature (``× t / t_start``), so the charges' Frank–Wolfe
target nears the exact subgradient as the option choice nears its argmax. The charges settle where
the smoothing puts them, not at the dual's minimum, by about what the band spreads: with a fixed band
the bound rose with more steps on high-volume 24-period scenarios, and with a band of 1 % `wide`
rows under a budget priced at twice the rent stalled above their plans at a fixed point of the
smoothed target (README: the `wide` design table)."""
FILLED_TOL = 1e-9
"""Relative tolerance of "the batch filled this period's free room" (:func:`charge_target`)."""
CLIP_ITERS = 1
"""Newton steps on the clipped markup fixed point (exact after 0 steps when no price bound binds)."""
N_LIMITS = 2
"""Limits besides the per-GPU caps: the daily GPU budget and the capex budget."""


def omega(x: jnp.ndarray, iters: int = 8) -> jnp.ndarray:
    """Wright omega ``ω(x) = W(e^x)``: Newton on ``w + log w = x`` [ECONOMICS.md §2.2]."""
    w = jnp.where(x > 1.0, x - jnp.log(jnp.maximum(x, 1.0)), jnp.exp(jnp.minimum(x, 1.0)))
    w = jnp.maximum(w, 1e-300)
    for _ in range(iters):
        w = w - (w + jnp.log(w) - x) * w / (1.0 + w)
        w = jnp.maximum(w, 1e-300)
    return w


class Charges(NamedTuple):
    """What each unit of a pool's need costs in the Lagrangian, per period, in units of the pool's
    rent per GPU-day: ``peak`` on the GPUs its interactive peak needs, ``daily`` on those its mean
    load needs. In :func:`solve_dual` ``peak = π s`` and ``daily = π (1 − s)`` with the period weights
    ``π`` (a subgradient of the reserved/on-demand cost: ``ν/T ≤ π_t ≤ κ/T``, ``Σ_t π_t = 1``) and
    the split ``s ∈ [0, 1]``; in the fixed-fleet dual they are the capacity prices themselves."""

    peak: jnp.ndarray  # (G, J, K, T) ≥ 0
    daily: jnp.ndarray  # (G, J, K, T) ≥ 0


def split_charges(split: jnp.ndarray, weight: jnp.ndarray) -> Charges:
    """:class:`Charges` of a split ``s`` and period weights ``π`` (both (G, J, K, T))."""
    return Charges(weight * split, weight * (1.0 - split))


def uniform_weight(shape, dtype=float, xp=jnp):
    """(G, J, K, T) period weights 1/T (inside the weight set whenever ν ≤ 1 ≤ κ)."""
    return xp.full(shape, 1.0 / shape[-1], dtype)


def charge_target(x: "Primal", kappa, nu, width: float = WEIGHT_WIDTH) -> Charges:
    """The charges the plan ``x`` should pay: a subgradient of the fleet's cost at its needs (period
    weights smoothed over ``width`` of each pool's peak need, the split over that share of each
    period's need), chosen in the face of ties the way the optimality conditions of the
    water-filled batch ask [ECONOMICS.md §2.7]: every period whose free room the batch has filled
    (daily need = peak need, or the valley above it) charges the daily load the same ``β``, the
    weight of the valley (the lowest of those periods' weights), the rest going to the peak.

    Without that rule the split of an exactly filled period is ½, which charges the batch there
    more than the valley it is priced at, and the dual stalls about 1 % above the plan on the default
    scenario."""
    need = jnp.maximum(x.peak_need, x.daily_need)
    top = need.max(-1, keepdims=True)
    weight = smooth_charge_weights(need, kappa, nu, width * top[..., 0])
    band = jnp.maximum(width * need, 1e-30)
    daily = weight * jax.nn.sigmoid((x.daily_need - x.peak_need) / band)
    filled = (x.batch_need > FILLED_TOL * top) & (x.daily_need >= x.peak_need - FILLED_TOL * need)
    beta = jnp.min(jnp.where(filled, weight, jnp.inf), -1, keepdims=True)
    daily = jnp.where(filled, jnp.minimum(beta, weight), daily)
    return Charges(weight - daily, daily)


def charges_towards(weight: jnp.ndarray, split: jnp.ndarray, goal: Charges, eta) -> tuple[jnp.ndarray, jnp.ndarray]:
    """A Frank–Wolfe step ``eta`` of the charges ``(π s, π (1 − s))`` towards ``goal``: the new
    period weights ``π`` and split ``s`` (all (G, J, K, T))."""
    peak = weight * split + eta * (goal.peak - weight * split)
    daily = weight * (1.0 - split) + eta * (goal.daily - weight * (1.0 - split))
    moved = peak + daily
    return moved, peak / jnp.maximum(moved, 1e-300)


def charge_share(ch: Charges, prob: Problem) -> jnp.ndarray:
    """(S, J, K, G) reserved GPU-days per day charged per unit of each flow's mean load (busy GPUs):
    interactive flows pay every period's peak and daily charges on their load there; deferrable
    flows are placed in their pool's cheapest period (``T · min_t daily_t / ρ_day``)."""
    peak_f, mean_f = econ.period_weights(prob)
    T = ch.peak.shape[-1]
    inter = (jnp.einsum("st,gjkt->sjkg", peak_f, ch.peak) / prob.peak_utilization
             + jnp.einsum("st,gjkt->sjkg", mean_f, ch.daily) / prob.daily_utilization)
    batch = jnp.transpose(T * ch.daily.min(-1), (1, 2, 0))[None] / prob.daily_utilization  # (1, J, K, G)
    return inter + jnp.asarray(prob.is_batch).astype(inter.dtype)[:, None, None, None] * batch


class Primal(NamedTuple):
    """Primal solution for given capacity prices (one scenario)."""

    price: jnp.ndarray  # (S, J) USD per request
    log_mu: jnp.ndarray  # (R, 3) log(price / reference) of each product's sheet
    mix: jnp.ndarray  # (S, J, K)
    route: jnp.ndarray  # (S, J, K, G)
    requests: jnp.ndarray  # (S, J) per day
    peak_need: jnp.ndarray  # (G, J, K, T) GPUs each period's interactive peak needs
    daily_need: jnp.ndarray  # (G, J, K, T) GPUs each period's mean load needs (batch water-filled)
    batch_need: jnp.ndarray  # (G, J, K, T) the part of ``daily_need`` the deferrable load placed there needs
    lagrangian: jnp.ndarray  # () USD/day: the dual function, with per-segment prices (an upper bound when sheets are shared)
    margin: jnp.ndarray  # () USD/day: revenue − cost of the fleet (per period max(peak, daily)) this solution needs
    local_lagrangian: jnp.ndarray  # () USD/day: the Lagrangian at the shared sheets found (= lagrangian for contracts)
    sheet_gain: jnp.ndarray  # () relative profit the last Newton step on the sheets predicted (0 for contracts)
    od_price: jnp.ndarray  # (G, T) the on-demand caps' prices at these needs ((G, 0) without caps)
    fleet_cost: jnp.ndarray  # () USD/day of the fleet these needs take (within the on-demand caps)


def primal(charges: Charges, prob: Problem, temperature: float = 1e-2, rate: jnp.ndarray | None = None,
           sheet_steps: int = 0, sheet_init: jnp.ndarray | None = None, sheet_iters=None,
           cap_charges: Charges | None = None, cap_rate: jnp.ndarray | None = None,
           od_start: jnp.ndarray | None = None) -> Primal:
    """Optimal prices, mix and routing when pool ``(g, j, k)`` charges ``charges`` (rent-days per GPU
    of need, per period) on the GPUs its peak and its mean load need.

    Args:
      charges: :class:`Charges`. prob: one scenario's :class:`Problem`.
      temperature: softmax temperature of the option choice, in utils (logit) and in log-profit (CE).
      rate: (G,) USD per GPU-hour the requests are charged (default: the rent; :func:`solve_dual`
        adds the prices of GPU caps and budgets). ``margin`` always uses the rent.
      sheet_steps: static; Newton steps on shared price sheets (0: every product is a contract, whose
        sheet reproduces the per-segment optimum exactly). ``sheet_iters`` (possibly traced)
        overrides the count; ``sheet_init`` (R, 3) warm-starts the sheets.
      cap_charges, cap_rate: the GPU caps' prices (G,) USD per GPU-hour, charged on their own
        period weights (a cap binds at each pool's peak, not over the day like the rent).
      od_start: (G, T) the on-demand caps' prices at nearby needs (the previous step's), from which
        the capped reserves of ``margin`` take a few warm steps (None: a full solve).
    """
    d = prob.demand
    share = charge_share(charges, prob)
    rate = prob.usd_per_gpu_hour if rate is None else rate
    cost = econ.usd_per_gpu_second(rate) * prob.gpu_s_per_request * share  # (S, J, K, G) USD/request
    if cap_charges is not None:
        cost = cost + econ.usd_per_gpu_second(cap_rate) * prob.gpu_s_per_request * charge_share(cap_charges, prob)
    allowed = prob.route_mask > 0
    q = prob.quality[None, :, :, None] - d.ref_quality[:, :, None, None]  # (S, J, K, 1)
    shift = -(d.latency_sens * (prob.served_latency_ms - d.ref_latency_ms))  # (S,)
    lo = jnp.exp(prob.log_mu_lo)[prob.flow_product] * d.ref_price  # each flow's product's box
    hi = jnp.exp(prob.log_mu_hi)[prob.flow_product] * d.ref_price
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
    S, J = d.ref_price.shape
    z = jnp.where(allowed, score / temperature, MASKED).reshape(S, J, -1)
    w = jax.nn.softmax(z, axis=-1).reshape(allowed.shape) * allowed
    mix = w.sum(-1)
    route = w / jnp.maximum(mix[..., None], 1e-300)
    c = (w * cost).sum((-1, -2))  # (S, J) USD/request
    quality_gap = (w * q).sum((-1, -2))  # (S, J) served quality − reference

    # logit prices: the per-segment optimum (nested logit, ours vs theirs, ECONOMICS.md §1.4 / §2.3):
    # every unclipped offer has the same markup t = λ/β + (1 − λ) m̄ + λ Π (m̄: within-nest mean
    # markup, Π = Σ y_j s_j); unclipped, βt = 1 + W(exp(IV_ours − 1) / Z)
    b = d.beta[:, None]
    lam = d.nest[:, None]
    A = d.alpha + d.quality_sens[:, None] * 100.0 * quality_gap + shift[:, None] - b * c

    def share_of(y):
        return nested_shares(A - b * y, d.offer_mask, d.comp_utility, d.comp_mask, d.nest)

    iv = d.nest * jax.nn.logsumexp(jnp.where(offered, A / lam, MASKED), axis=-1)
    t0 = (1.0 + omega(iv - 1.0 - outside_log(d.comp_utility, d.comp_mask, d.nest))) / d.beta  # (S,) unclipped root

    def markup(t):
        return jnp.clip(t[:, None], lo - c, hi - c)

    def resid(t):
        y = markup(t)
        sh = share_of(y)
        nest_share = jnp.maximum(sh.sum(-1), 1e-300)
        mbar = (sh * y).sum(-1) / nest_share
        return t - d.nest / d.beta - (1.0 - d.nest) * mbar - d.nest * (y * sh).sum(-1)

    t = t0
    for _ in range(CLIP_ITERS):  # Newton on the clipped fixed point (no-op when no bound binds)
        r, dr = jax.jvp(resid, (t,), (jnp.ones_like(t),))
        t = t - r / jnp.where(jnp.abs(dr) > 1e-12, dr, 1.0)
    p_logit = c + markup(t)
    p_ce = jnp.clip(c * d.elasticity[:, None] / (d.elasticity[:, None] - 1.0), lo, hi)
    price = jnp.where(offered, jnp.where(d.is_logit[:, None], p_logit, p_ce), d.ref_price)
    quality = d.ref_quality + quality_gap
    reqs = demand(price, quality, prob.served_latency_ms, d)
    lagrangian = ((price - c) * reqs).sum()  # per-segment prices: the dual function of the relaxation
    log_mu = sheet_start(price, prob)
    gain = jnp.zeros((), price.dtype)
    if sheet_steps:  # shared price sheets: Newton on the products' prices, from the better of the
        # per-segment optimum's levels and ``sheet_init`` (the previous step's sheets)
        profit = lambda u: sheet_profit(u, c, quality, prob)  # noqa: E731
        if sheet_init is not None:
            warm = sheet_log_mu(sheet_params(sheet_init, prob), prob)
            both = jax.vmap(profit)(jnp.stack([warm, log_mu]))  # one traced copy of the profit
            log_mu = jnp.where(both[0] > both[1], warm, log_mu)
        log_mu, gain = sheet_newton(log_mu, profit, prob, sheet_steps if sheet_iters is None else sheet_iters)
        price = jnp.where(offered, flow_prices(log_mu, prob), d.ref_price)
        reqs = demand(price, quality, prob.served_latency_ms, d)
    local = ((price - c) * reqs).sum()
    peak_need, interactive_need, batch_need = econ.period_need_parts(econ.work_of(reqs, mix, route, prob), prob)
    daily_need = interactive_need + batch_need
    revenue = (price * reqs).sum()
    need = jnp.maximum(peak_need, daily_need)
    if econ.has_on_demand_caps(prob):
        reserved, od_price = econ.capped_pools(need, prob, od_start)
        fleet_cost = econ.cycle_fleet_cost(need, prob, reserved)
    else:
        od_price, fleet_cost = jnp.zeros(np.shape(prob.on_demand_cap), need.dtype), econ.cycle_fleet_cost(need, prob)
    return Primal(price, log_mu, mix, route, reqs, peak_need, daily_need, batch_need, lagrangian, revenue - fleet_cost,
                  local, gain, od_price, fleet_cost)


def sheet_start(price: jnp.ndarray, prob: Problem) -> jnp.ndarray:
    """(R, 3) log multipliers of each product's sheet: the reference-revenue-weighted mean of its
    buyers' price / reference (exact for a contract), the same for its three prices, in its box."""
    d = prob.demand
    R = prob.sheet_ref.shape[0]
    offered = d.offer_mask > 0
    w = jnp.where(offered, d.ref_demand * d.ref_price, 0.0)
    log_ratio = jnp.where(offered, jnp.log(jnp.where(offered, price / jnp.where(offered, d.ref_price, 1.0), 1.0)), 0.0)
    one_hot = jax.nn.one_hot(prob.flow_product, R) * offered[..., None]  # (S, J, R)
    level = jnp.einsum("sj,sjr->r", w * log_ratio, one_hot) / jnp.maximum(jnp.einsum("sj,sjr->r", w, one_hot), 1e-300)
    return jnp.clip(jnp.broadcast_to(level[:, None], (R, 3)), prob.log_mu_lo[:, None], prob.log_mu_hi[:, None])


def sheet_profit(log_mu: jnp.ndarray, cost: jnp.ndarray, quality: jnp.ndarray, prob: Problem) -> jnp.ndarray:
    """USD/day: ``Σ (price − cost) × requests`` when every flow pays its product's sheet at log
    multipliers ``log_mu`` (R, 3), at linear costs ``cost`` (S, J) USD/request."""
    d = prob.demand
    offered = d.offer_mask > 0
    price = jnp.where(offered, flow_prices(log_mu, prob), d.ref_price)
    return ((price - cost) * demand(price, quality, prob.served_latency_ms, d)).sum()


SHEET_STEP_SIZES = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.0)
"""Fractions of the Newton step tried each iteration (the best is kept, so no step loses profit)."""


def value_grad_hessian(f, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """``(f(x), ∇f(x), ∇²f(x))`` of a scalar ``f`` of a vector ``x`` (n,) in one forward-over-reverse
    pass: the value and gradient are the primal outputs of the gradient's directional derivatives
    along the n unit vectors, which are the Hessian's columns (``jax.hessian`` traces the same pass
    without returning them, so a separate ``value_and_grad`` would trace ``f`` once more)."""
    def along(v):
        return jax.jvp(jax.value_and_grad(f), (x,), (v,))

    (value, grad), (_, hess) = jax.vmap(along, out_axes=((None, None), (0, 0)))(jnp.eye(x.shape[0], dtype=x.dtype))
    return value, grad, hess


def sheet_newton(log_mu: jnp.ndarray, profit, prob: Problem, steps) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Maximise ``profit(log_mu)`` over the products' price parameters (level and tilts, R × 3; see
    :func:`optimizer.decision.sheet_log_mu`) in their boxes by
    ``steps`` (an int, possibly traced) projected saddle-free Newton steps (|eigenvalues| of the
    Hessian, floored; parameters held at a bound the gradient pushes against) with a step-size
    search over :data:`SHEET_STEP_SIZES`; a few dozen variables, so the Hessian is exact.

    Returns ``(log_mu, gain)``: the prices and the relative profit the last full (box-clipped)
    Newton step predicted, ``g·Δ / |profit|`` — near 0 at a stationary point.
    """
    shape = log_mu.shape
    lo, hi = (b.reshape(-1) for b in price_box(prob))
    flat = lambda x: profit(sheet_log_mu(x.reshape(shape), prob))  # noqa: E731  (level, tilts) -> profit
    sizes = jnp.asarray(SHEET_STEP_SIZES, log_mu.dtype)

    def body(_, carry):
        x, _gain = carry
        value, g, h = value_grad_hessian(flat, x)
        # projected Newton: parameters at a bound that the gradient pushes outward stay there
        free = ~(((x <= lo + 1e-12) & (g < 0)) | ((x >= hi - 1e-12) & (g > 0)))
        scale = jnp.max(jnp.abs(h)) + 1e-300
        h = jnp.where(free[:, None] & free[None, :], h, 0.0) + jnp.diag(jnp.where(free, 0.0, scale))
        w, V = jnp.linalg.eigh(h)
        floor = 1e-9 * jnp.max(jnp.abs(w)) + 1e-300
        step = V @ ((V.T @ jnp.where(free, g, 0.0)) / jnp.maximum(jnp.abs(w), floor))
        cands = jnp.clip(x[None] + sizes[:, None] * step[None], lo, hi)
        vals = jax.vmap(flat)(cands)
        gain = jnp.dot(g, cands[0] - x) / jnp.maximum(jnp.abs(value), 1e-9)
        return cands[jnp.argmax(jnp.where(jnp.isfinite(vals), vals, -jnp.inf))], gain

    x0 = jnp.clip(sheet_params(log_mu, prob).reshape(-1), lo, hi)
    x, gain = jax.lax.fori_loop(0, steps, body, (x0, jnp.asarray(jnp.inf, log_mu.dtype)))
    return sheet_log_mu(x.reshape(shape), prob), gain


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


def charged_rate(limit_price: jnp.ndarray, prob: Problem) -> jnp.ndarray:
    """(G,) USD per GPU-hour charged to requests when the limits have prices ``limit_price`` ≥ 0.

    The prices are dimensionless: a cap's in units of its GPU's rent, the budget's per dollar spent,
    and the capex budget's in units of the fleet's mean rent per dollar of capex.
    """
    G = prob.usd_per_gpu_hour.shape[0]
    lam = limit_price
    return prob.usd_per_gpu_hour * (1.0 + lam[:G] + lam[G]) + lam[G + 1] * _capex_rate(prob) * prob.capex_per_gpu


def limit_terms(limit_price: jnp.ndarray, prob: Problem) -> jnp.ndarray:
    """(G + 2,) USD/day: ``λ_k b_k`` of each limit (cap, budget, capex budget), active or not."""
    G = prob.usd_per_gpu_hour.shape[0]
    lam = limit_price
    return jnp.concatenate([lam[:G] * econ.usd_per_gpu_day(prob) * prob.gpu_cap,
                            (lam[G] * prob.budget_usd_per_day)[None],
                            (lam[G + 1] * _capex_rate(prob) * econ.HOURS_PER_DAY * prob.capex_budget_usd)[None]])


def limit_value(limit_price: jnp.ndarray, prob: Problem, mask: jnp.ndarray) -> jnp.ndarray:
    """USD/day: ``Σ_k λ_k b_k`` over the active limits (the constant of the Lagrangian)."""
    return jnp.where(mask > 0, limit_terms(limit_price, prob), 0.0).sum()


def on_demand_value(od_price: jnp.ndarray, prob: Problem) -> jnp.ndarray:
    """USD/day: ``Σ_g rent_g · (1/T) Σ_t μ_gt A_gt``, the on-demand caps' term of the Lagrangian (their
    prices ``μ`` (G, T) in reserved rents per on-demand GPU-hour; 0 without caps)."""
    if not econ.has_on_demand_caps(prob):
        return jnp.zeros((), prob.usd_per_gpu_hour.dtype)
    return jnp.sum(econ.usd_per_gpu_day(prob) * jnp.mean(od_price * prob.on_demand_cap, -1))


def period_ratio(kappa: jnp.ndarray, od_price: jnp.ndarray, prob: Problem) -> jnp.ndarray:
    """On-demand / reserved rent per pool (G, 1, 1), or per pool and period (G, 1, 1, T) with the
    on-demand caps' prices ``od_price`` (G, T) added: the weight set's ceiling ``π_t ≤ κ_t / T``."""
    if not econ.has_on_demand_caps(prob):
        return kappa
    return kappa[..., None] + od_price[:, None, None, :]


def limit_excess(x: Primal, prob: Problem, mask: jnp.ndarray) -> jnp.ndarray:
    """(G + 2,) relative excess of the fleet over each active limit (−1 where inactive), with
    pools sized by the same smooth max as :func:`optimizer.objective.evaluate`."""
    need = econ.pool_gpus(x.peak_need, x.daily_need)
    per_type = econ.gpus_per_type(need.max(-1))
    if econ.has_on_demand_caps(prob):  # the caps' LP at these (smooth) needs, warm from the plan's prices
        spend = econ.cycle_fleet_cost(need, prob, econ.capped_pools(need, prob, x.od_price)[0])
    else:
        spend = econ.cycle_fleet_cost(need, prob)
    used = jnp.concatenate([per_type, spend[None], econ.fleet_capex(per_type, prob)[None]])
    limit = jnp.concatenate([prob.gpu_cap, prob.budget_usd_per_day[None], prob.capex_budget_usd[None]])
    return jnp.where(mask > 0, (used - limit) / limit, -1.0)


def dual_bound(split: jnp.ndarray, prob: Problem, limit_price: jnp.ndarray | None = None,
               active: jnp.ndarray | None = None, weight: jnp.ndarray | None = None) -> jnp.ndarray:
    """The dual function at ``(split, limit_price, weight)``: exact best option per offer (argmax),
    closed-form prices.

    By weak duality it bounds the relaxed optimum from above for every split in [0, 1] (G, J, K, T),
    period weights in their set (default 1/T) and every limit price ≥ 0 on the active caps and budgets (the inner problem is solved globally:
    vertex-optimal option, unimodal price [ECONOMICS.md §2.2, §2.3]; exact when no price floor or
    ceiling binds).
    """
    mask = limit_mask(prob, active)
    lam = jnp.zeros_like(mask) if limit_price is None else limit_price * mask
    weight = uniform_weight(split.shape, split.dtype) if weight is None else weight
    return primal(split_charges(split, weight), prob, 1e-9, charged_rate(lam, prob)).lagrangian + limit_value(lam, prob, mask)


class DualStart(NamedTuple):
    """Where the dual solver starts: a cost split per pool and a price per limit."""

    split: jnp.ndarray  # (G, J, K, T) in [0, 1]: share of each period's charge on its peak load
    limit_price: jnp.ndarray  # (G + 2,) ≥ 0: prices of the GPU caps, the daily budget, the capex budget
    sheet: jnp.ndarray | None = None  # (R, 3) log multipliers of shared sheets to start from (None: reference)
    weight: jnp.ndarray | None = None  # (G, J, K, T) period weights π (None: 1/T)
    age: jnp.ndarray | None = None  # () Frank–Wolfe steps these charges have taken (a continued solve's steps
    # are 2 / (age + k + 4 + offset)); None: 0, a new solve from a neighbour's charges (a solve returns its age)
    cap_weight: jnp.ndarray | None = None  # (G, J, K, T) the GPU caps' period weights (None: ``weight``)
    od_price: jnp.ndarray | None = None  # (G, T) prices of the on-demand caps per period, in reserved rents per
    # on-demand GPU-hour (None: 0); (G, 0) without caps
    cap_split: jnp.ndarray | None = None  # (G, J, K, T) in [0, 1]: share of the caps' weight charged on the peak
    # load's GPUs, the rest on the mean load's (None: ``split``)


class DualState(NamedTuple):
    """The dual solver's own result (a pytree; batched under vmap)."""

    start: DualStart  # the last iterate's charges, limit prices and sheets: a warm start for a continued or neighbouring solve
    primal: Primal  # the best feasible primal solution seen (by true margin)
    bound: jnp.ndarray  # () USD/day: upper bound on the relaxed optimum (dual function at the split)
    gap: jnp.ndarray  # () relative certified gap (bound − margin) / |bound|
    violation: jnp.ndarray  # () largest relative excess of the primal over an active cap or budget
    local_bound: jnp.ndarray  # () USD/day: the dual function with the shared sheets found (= bound for contracts)
    set_bound: jnp.ndarray | None = None  # () USD/day: ``bound`` for the limits of ``as_set`` (= bound without it)


def solve_dual(prob: Problem, y0: DualStart, solver: "Dual", active: jnp.ndarray | None = None,
               as_set: Problem | None = None) -> DualState:
    """Find the peak/daily cost split (and, with active GPU caps or budgets, their prices) with
    sign-adaptive projected steps (Optax Rprop) on the dual gradient — over several periods the
    charges by Frank–Wolfe steps instead (module docstring) — keeping the feasible primal solution
    of highest true margin; pure, jittable and vmappable over scenarios.

    The dual gradient is ``e_p = (P_p/ρp − D_p/ρd) / (P_p/ρp + D_p/ρd)`` for the split ``s_p``
    (normalised per pool) and minus the relative excess over each active limit for its price [a
    cap or budget is a Lagrange multiplier on the GPU price: ECONOMICS.md §2.5]. The loop runs four
    evaluation-only iterations after the ``steps`` updates (one traced copy of :func:`primal`, which
    compiles faster than separate calls): the last iterate at the final temperature, the
    best at the temperature it was found at, and both again with an exact argmax for the dual bound.

    ``as_set``: the scenario as set, when ``prob`` is it within lowered limits (a sweep's repair
    pass). The limits enter the Lagrangian only as the constant ``Σ λ_k b_k``, so the same
    iterates bound the scenario as set too (``set_bound``): a plan found within lowered limits is
    certified against the scenario's own optimum.
    """
    opt = optax.rprop(solver.learning_rate, min_step_size=1e-12, max_step_size=0.5)
    n = solver.steps
    t0 = max(solver.temperature_start, solver.temperature)
    ratio = (solver.temperature / t0) ** (1.0 / max(n - 1, 1))
    dtype = y0.split.dtype
    mask = limit_mask(prob, active)
    params0 = (y0.split, y0.limit_price * mask)
    kappa, nu = econ.pool_ratios(prob)
    capped = econ.has_on_demand_caps(prob)
    od0 = (jnp.zeros(np.shape(prob.on_demand_cap), dtype) if y0.od_price is None
           else jnp.maximum(jnp.asarray(y0.od_price, dtype), 0.0))
    # a neighbour's weights may lie outside this scenario's set (another on-demand / reserved rent
    # ratio), where the dual function bounds nothing: project them in
    weight0 = (uniform_weight(y0.split.shape, dtype) if y0.weight is None
               else project_weights(y0.weight, period_ratio(kappa, od0, prob), nu))
    # the caps' weights lie in the simplex whatever the rents, so a neighbour's stay valid
    cap_weight0 = weight0 if y0.cap_weight is None else jnp.asarray(y0.cap_weight, dtype)
    cap_split0 = jnp.asarray(y0.split if y0.cap_split is None else y0.cap_split, dtype)
    periods = y0.split.shape[-1]
    age = jnp.zeros((), dtype) if y0.age is None else jnp.asarray(y0.age, dtype)

    class Carry(NamedTuple):
        params: tuple  # current (split, limit prices)
        opt_state: optax.OptState
        best_margin: jnp.ndarray  # best true margin among feasible iterates (−inf: none yet)
        best: tuple  # its (split, limit prices)
        best_t: jnp.ndarray  # the temperature it was found at
        final: Primal  # the solution returned (last or best iterate)
        final_ok: jnp.ndarray  # whether `final` is feasible
        bound: jnp.ndarray  # min of the dual function at the last and the best iterate
        local_bound: jnp.ndarray  # the same with the shared sheets found (= bound for contracts)
        set_bound: jnp.ndarray  # the same for the limits of ``as_set``
        sheet: jnp.ndarray  # (R, 3) the last iterate's sheets (warm start of the next)
        best_sheet: jnp.ndarray  # (R, 3) the best iterate's sheets
        weight: jnp.ndarray  # (G, J, K, T) the period weights (Frank–Wolfe iterate)
        best_weight: jnp.ndarray  # (G, J, K, T) the best iterate's
        cap_weight: jnp.ndarray  # (G, J, K, T) the caps' period weights (Frank–Wolfe iterate; periods > 1)
        best_cap_weight: jnp.ndarray  # (G, J, K, T) the best iterate's
        cap_split: jnp.ndarray  # (G, J, K, T) the caps' split between peak and mean load (with ``cap_weight``)
        best_cap_split: jnp.ndarray  # (G, J, K, T) the best iterate's
        od_price: jnp.ndarray  # (G, T) the on-demand caps' prices (Frank–Wolfe iterate, with the weights)
        od_last: jnp.ndarray  # (G, T) the caps' prices at the last step's needs (a warm start for the next)
        best_od_price: jnp.ndarray  # (G, T) the best iterate's

    def rates(lam, cap_weight, cap_split):
        """(rate, cap charges, cap rate): over several periods the prices of the GPU caps and the
        capex budget are charged on their own weights, towards each pool's peak, split on their own
        between the peak and the mean load's GPUs (the subgradient of the GPUs they count,
        Σ_p max_t max(P_pt/ρp, D_pt/ρd))."""
        if periods == 1 or not solver.cap_weights:
            return charged_rate(lam, prob), None, None
        G = prob.usd_per_gpu_hour.shape[0]
        at_peak = lam.at[G].set(0.0)  # the caps' and the capex budget's prices
        return (charged_rate(lam - at_peak, prob), split_charges(cap_split, cap_weight),
                charged_rate(at_peak, prob) - prob.usd_per_gpu_hour)

    def step(c: Carry, k):
        # k < n: Rprop update; n: last iterate at the final temperature; n+1: best at its temperature
        # (kept if feasible and better); n+2, n+3: last and best with an exact argmax (dual bounds).
        # ``k`` is never batched, so the branch stays a real conditional under vmap.
        use_best = (k == n + 1) | (k == n + 3)
        split, lam = jax.tree.map(lambda b, p: jnp.where(use_best, b, p), c.best, c.params)
        weight = jnp.where(use_best, c.best_weight, c.weight)
        cap_weight = jnp.where(use_best, c.best_cap_weight, c.cap_weight)
        cap_split = jnp.where(use_best, c.best_cap_split, c.cap_split)
        od_price = jnp.where(use_best, c.best_od_price, c.od_price)
        t = jnp.where(k < n, t0 * ratio**jnp.minimum(k, n - 1),
                      jnp.where(k == n, solver.temperature, jnp.where(k == n + 1, c.best_t, 1e-9)))
        iters = jnp.where(k < n, solver.sheet_steps, solver.sheet_steps * FINAL_SHEET_FACTOR)
        rate, cap_charges, cap_rate = rates(lam, cap_weight, cap_split)
        x = primal(split_charges(split, weight), prob, t, rate, solver.sheet_steps,
                   jnp.where(use_best, c.best_sheet, c.sheet), iters, cap_charges, cap_rate, c.od_last)
        excess = limit_excess(x, prob, mask)
        feasible = jnp.max(excess) <= solver.tol_feasibility
        better = feasible & (x.margin > c.best_margin)  # every feasible primal point is a plan: keep the best

        def keep(c):
            return c._replace(best_margin=jnp.where(better, x.margin, c.best_margin),
                              best=jax.tree.map(lambda a, b: jnp.where(better, a, b), (split, lam), c.best),
                              best_t=jnp.where(better, t, c.best_t),
                              best_sheet=jnp.where(better, x.log_mu, c.best_sheet),
                              best_weight=jnp.where(better, weight, c.best_weight),
                              best_cap_weight=jnp.where(better, cap_weight, c.best_cap_weight),
                              best_cap_split=jnp.where(better, cap_split, c.best_cap_split),
                              best_od_price=jnp.where(better, od_price, c.best_od_price))

        def update(c):
            e = (x.peak_need - x.daily_need) / jnp.maximum(x.peak_need + x.daily_need, 1e-9)
            upd, st = opt.update((-e, -excess * mask), c.opt_state, c.params)
            split_new, lam_new = optax.apply_updates(c.params, upd)
            params = (jnp.clip(split_new, 0.0, 1.0), jnp.maximum(lam_new, 0.0) * mask)
            if periods > 1:  # a Frank–Wolfe step of the charges (π s, π (1 − s)) towards the ones
                # this solution should pay (the linear minimiser of the dual over the charge set)
                width = WEIGHT_WIDTH * t / t0  # the smoothing narrows with the temperature
                if capped:  # the caps' prices at this solution's needs: the other half of the linear
                    # minimiser over the charge set {(π, μ): ν/T ≤ π_t ≤ (κ + μ_t)/T}
                    od_goal = x.od_price
                else:
                    od_goal = od_price
                goal = charge_target(x, period_ratio(kappa, od_goal, prob), nu, width)
                eta = 2.0 / (k + 4.0 + solver.charge_offset + age)
                od_moved = od_price + eta * (od_goal - od_price)
                moved, split_moved = charges_towards(weight, split, goal, eta)
                params = (split_moved, params[1])
                cap_moved, cap_split_moved = cap_weight, cap_split
                if solver.cap_weights:
                    # a cap counts each pool's GPUs at its peak period: the load-duration cost with no
                    # on-demand option (κ → ∞, ν = 0), so its charges take the same target as the rent's —
                    # a smoothed argmax of each pool's needs, split between the peak and the mean load
                    # by the rule of the water-filled batch — on their own split (with the rent's split
                    # the caps' price was charged on too few GPUs where the batch fills the peak period:
                    # capped `wide` rows stalled with a bound about 0.7 % high)
                    cap_goal = charge_target(x, NO_ON_DEMAND, 0.0, width)
                    cap_moved, cap_split_moved = charges_towards(cap_weight, cap_split, cap_goal, eta)
            else:
                moved, cap_moved, od_moved, cap_split_moved = weight, cap_weight, od_price, cap_split
            return keep(c)._replace(params=params, opt_state=st, sheet=x.log_mu, weight=moved, cap_weight=cap_moved,
                                    cap_split=cap_split_moved, od_price=od_moved, od_last=x.od_price)

        def finish(c):
            c = jax.lax.cond(k == n, keep, lambda c: c, c)
            take = (k == n) | ((k == n + 1) & (c.best_margin > -jnp.inf)
                               & ((x.margin >= c.final.margin) | ~c.final_ok))
            od_value = on_demand_value(od_price, prob)
            dual_value = x.lagrangian + limit_value(lam, prob, mask) + od_value
            local_value = x.local_lagrangian + limit_value(lam, prob, mask) + od_value
            set_value = dual_value if as_set is None else (x.lagrangian + limit_value(lam, as_set, mask)
                                                            + on_demand_value(od_price, as_set))
            return c._replace(final=jax.tree.map(lambda a, b: jnp.where(take, a, b), x, c.final),
                              final_ok=jnp.where(take, feasible, c.final_ok),
                              bound=jnp.where(k >= n + 2, jnp.minimum(c.bound, dual_value), c.bound),
                              local_bound=jnp.where(k >= n + 2, jnp.minimum(c.local_bound, local_value),
                                                    c.local_bound),
                              set_bound=jnp.where(k >= n + 2, jnp.minimum(c.set_bound, set_value), c.set_bound))

        return jax.lax.cond(k < n, update, finish, c), None

    x0 = jax.tree.map(lambda a: jnp.zeros(a.shape, dtype),
                      jax.eval_shape(lambda: primal(split_charges(y0.split, weight0), prob, 1.0)))
    sheet0 = jnp.zeros(prob.sheet_ref.shape, dtype) if y0.sheet is None else y0.sheet
    carry = Carry(params0, opt.init(params0), jnp.asarray(-jnp.inf, dtype), params0,
                  jnp.asarray(solver.temperature, dtype), x0, jnp.asarray(False), jnp.asarray(jnp.inf, dtype),
                  jnp.asarray(jnp.inf, dtype), jnp.asarray(jnp.inf, dtype), sheet0, sheet0, weight0, weight0,
                  cap_weight0, cap_weight0, cap_split0, cap_split0, od0, od0, od0)
    c, _ = jax.lax.scan(step, carry, jnp.arange(n + 4))
    best = c.final
    gap = (c.bound - best.margin) / jnp.maximum(jnp.abs(c.bound), 1e-9)
    violation = jnp.maximum(jnp.max(limit_excess(best, prob, mask)), 0.0)
    # the state a continued or neighbouring solve starts from is the last iterate's: the Frank–Wolfe
    # iterate of the charges (an average of their targets) and the limit prices where the steps left
    # them. The best plan's charges are one point of an oscillation between plans, a worse dual point
    # (restarting from them made every repair round of a `wide` sweep row raise its bound).
    start = DualStart(*c.params, c.sheet, c.weight, age + n, c.cap_weight, c.od_price, c.cap_split)
    return DualState(start, best, c.bound, gap, violation, c.local_bound, c.set_bound)


def pool_period_shape(prob: Problem) -> tuple[int, int, int, int]:
    """(G, J, K, T): one entry per pool and period."""
    return tuple(np.shape(prob.tp)) + (np.shape(prob.profile)[-1],)


def plan_decision(x: Primal, prob: Problem):
    """The :class:`~optimizer.decision.Decision` reproducing a primal solution in :func:`evaluate`."""
    return encode(x.log_mu, x.mix, x.route, prob)


@dataclasses.dataclass(frozen=True)
class Dual:
    """The structured dual solver's hyperparameters (hashable: a static argument of ``jit``).

    Defaults were chosen on 1,024 scenarios of the `risk` sweep against 1,000-step solves;
    ``benchmarks/sweep_speed.py`` reports each run's figures against the augmented Lagrangian and
    SciPy.
    """

    steps: int = 100  # Rprop steps on the split (and on the limit prices)
    learning_rate: float = 0.01  # first step in split and limit prices (Rprop then adapts it per coordinate)
    temperature: float = 1e-2  # final option-choice softmax temperature (utils; log-profit for CE)
    temperature_start: float = 5e-2  # annealed geometrically to `temperature` over the steps
    cap_weights: bool = False  # a GPU cap or the capex budget is active: over several periods, priced on own weights
    tol_gap: float = 5e-3  # certified relative gap (bound − margin) / |bound| to call a scenario converged
    tol_feasibility: float = 1e-4  # relative excess over a GPU cap or budget that still counts as feasible
    sheet_steps: int = 0  # Newton steps on shared price sheets per step (0: contracts only)
    charge_offset: float = 0.0  # several periods: the charges' Frank–Wolfe step is 2 / (k + 4 + offset)

    name = "dual"

    def init(self, task: Task) -> DualStart:
        """An even cost split and unpriced limits (a solve from scratch)."""
        G = task.problem.usd_per_gpu_hour.shape[0]
        R = np.shape(task.problem.sheet_ref)[0]
        shape = pool_period_shape(task.problem)
        return DualStart(np.full(shape, 0.5), np.zeros(G + N_LIMITS), np.zeros((R, 3)), uniform_weight(shape, xp=np),
                         None, uniform_weight(shape, xp=np), np.zeros(np.shape(task.problem.on_demand_cap)),
                         np.full(shape, 0.5))

    def start_from(self, task: Task, sol: Solution) -> DualStart:
        """An even split and the limit prices implied by a solution's multipliers of the GPU caps
        and budgets (the inverse of :meth:`solve`'s conversion). Host-side (NumPy)."""
        prob = task.problem
        G = np.shape(prob.usd_per_gpu_hour)[0]
        per_unit = np.asarray(limit_terms(jnp.ones(G + N_LIMITS), prob)) / float(prob.scale)
        lam = np.asarray(sol.multipliers)[:G + N_LIMITS] / np.maximum(per_unit, 1e-300)
        sheet = np.asarray(log_multiplier(np.asarray(sol.decision.price_raw), prob))
        shape = pool_period_shape(prob)
        return DualStart(np.full(shape, 0.5), np.maximum(lam, 0.0), sheet, uniform_weight(shape, xp=np), None,
                         uniform_weight(shape, xp=np), np.zeros(np.shape(prob.on_demand_cap)), np.full(shape, 0.5))

    def solve(self, task: Task, y0: DualStart, as_set: Problem | None = None) -> tuple[Solution, DualState]:
        """``(Solution, DualState)``: the plan checked against the objective of every solver
        (:func:`optimizer.objective.evaluate`), and the dual's own state (its last iterate's charges
        and limit prices warm-start neighbouring scenarios and continued solves). Pure; jittable and
        vmappable. ``as_set``: the scenario as set when ``task`` holds it within lowered limits
        (the state's ``set_bound`` then bounds it; see :func:`solve_dual`).

        Result: infeasible beyond ``INFEASIBLE_TOL``; converged within ``tol_feasibility`` of every
        limit and ``tol_gap`` of the certified bound; step limit otherwise. Quality floors and a
        fixed fleet are outside this solver (``task.fixed`` must be false).
        """
        prob = task.problem
        st = solve_dual(prob, y0, self, task.active, as_set)
        # shadow prices of the normalised constraints g = (used − limit) / limit, in objective units
        G = prob.usd_per_gpu_hour.shape[0]
        mask = limit_mask(prob, task.active)
        heads = jnp.where(mask > 0, limit_terms(st.start.limit_price, prob), 0.0) / prob.scale
        mult = jnp.zeros(task.active.shape, heads.dtype).at[:G + N_LIMITS].set(heads)
        return certified(self, task, st, None, mult), st

    def run(self, task: Task, y0: DualStart) -> Solution:
        """Solve one task from ``y0`` (see :meth:`solve`). Pure; vmappable."""
        return self.solve(task, y0)[0]


def certified(solver, task: Task, st: DualState, fleet, multipliers) -> Solution:
    """The :class:`Solution` of a dual solve: its primal plan evaluated by the objective of every
    solver (:func:`optimizer.objective.evaluate`, on ``fleet`` when fixed), certified against the
    dual bound: converged within ``solver.tol_feasibility`` of every constraint and ``solver.tol_gap``
    of the bound."""
    prob = task.problem
    dec = plan_decision(st.primal, prob)
    b = evaluate(dec, prob, fleet, task.active)
    viol = jnp.maximum(jnp.max(b.constraints), 0.0)
    gap = (st.bound - b.margin) / jnp.maximum(jnp.abs(st.bound), 1e-9)
    finite = jnp.isfinite(b.margin) & jnp.isfinite(st.bound)
    if solver.sheet_steps:  # shared sheets: the bound (per-segment prices) includes the value of price
        # discrimination, so convergence is stationarity: of the sheets (Newton), and of the dual
        # with the sheets found (its gap); the certified gap is reported as it is
        local_gap = (st.local_bound - b.margin) / jnp.maximum(jnp.abs(st.local_bound), 1e-9)
        done = (local_gap <= solver.tol_gap) & (st.primal.sheet_gain <= SHEET_GAIN_TOL)
    else:
        done = gap <= solver.tol_gap
    result = result_of(finite, viol, done & (viol <= solver.tol_feasibility))
    stats = Stats(jnp.asarray(solver.steps), jnp.asarray(1), jnp.asarray(jnp.nan))
    return Solution(dec, result, -b.margin / prob.scale, b.margin, viol, multipliers, st.bound, gap, stats)


@functools.lru_cache(maxsize=8)
def dual_program(solver: Dual):
    """``solver.solve(task, y0)`` jitted with its static settings bound (exportable)."""
    return jax.jit(solver.solve)
