"""The margin objective: decision → (−margin / scale, Breakdown, constraint values).

One signature for everything the solver and the reports need (STYLE.md §2)::

    objective(decision, problem, fleet, active) -> (loss, Breakdown)

Decisions are unconstrained (reparametrised): log price multiplier in a box by a scaled sigmoid,
precision mix by a masked softmax, routing of each (segment, model, precision) flow over GPU
types by a masked softmax. In the relaxed problem the fleet is *derived*: in every period each pool
gets exactly the GPUs its load needs (``n_t = smax(peak load_t / ρ_peak, load_t / ρ_day)``, batch
traffic water-filled into the periods of lowest need), so capacity can never be short; the GPUs it
reserves and the on-demand ones it adds per period follow the load-duration rule
(:mod:`optimizer.economics`). With a fixed (integer) fleet of ``N`` GPUs per pool the same loads
become constraints ``load_t ≤ ρ · N`` in every period instead.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from kernels.demand import demand
from optimizer import economics as econ
from optimizer.decision import Decision, decode, flow_prices, sheet_prices
from optimizer.economics import POOL_SHARPNESS
from optimizer.problem import Problem

__all__ = ["Breakdown", "Decision", "POOL_SHARPNESS", "evaluate", "evaluate_plan", "objective", "price_response"]


class Breakdown(NamedTuple):
    """Everything a report needs about one decision (USD, requests, GPUs per day)."""

    price_multiplier: jnp.ndarray  # (S, J) price per request / reference price per request
    sheet: jnp.ndarray  # (R, 3) USD/Mtok of each product's input, cached input and output
    price_per_request: jnp.ndarray  # (S, J) USD
    requests_per_day: jnp.ndarray  # (S, J)
    quality: jnp.ndarray  # (S, J) served quality retention
    mix: jnp.ndarray  # (S, J, K)
    route: jnp.ndarray  # (S, J, K, G)
    revenue: jnp.ndarray  # (S, J) USD/day
    work: jnp.ndarray  # (S, J, K, G) mean GPU-seconds per second of each flow
    peak_load: jnp.ndarray  # (G, J, K) GPU-s/s at the busiest period's interactive peak
    daily_load: jnp.ndarray  # (G, J, K) mean GPU-s/s over the day (all tiers)
    gpus: jnp.ndarray  # (G, J, K) GPUs per pool at its peak (derived, or the fixed fleet)
    period_gpus: jnp.ndarray  # (G, J, K, T) GPUs each pool runs in each period
    reserved: jnp.ndarray  # (G, J, K) of which reserved (paid in every period); the rest on-demand
    gpu_cost: jnp.ndarray  # () USD/day
    margin: jnp.ndarray  # () USD/day
    constraints: jnp.ndarray  # (C,) normalised g(x) ≤ 0 (inactive ones = −1)


def evaluate(dec: Decision, prob: Problem, fleet: jnp.ndarray | None = None,
             active: jnp.ndarray | None = None, sharpness=POOL_SHARPNESS, fixed=True) -> Breakdown:
    """Margin and its parts for a decision; ``fleet`` (G, J, K) fixes the GPUs per pool when
    ``fixed`` (a bool, possibly traced) is true, and is ignored otherwise.

    ``sharpness`` of the smooth max that sizes derived pools; the solver anneals it upwards so
    the final pool sizes are within ``2**(1/sharpness)`` of the exact ``max``.
    """
    log_mu, mix, route = decode(dec, prob, fleet, fixed)
    offered = prob.demand.offer_mask > 0
    price = jnp.where(offered, flow_prices(log_mu, prob), 0.0)
    multiplier = jnp.where(offered, price / jnp.where(offered, prob.demand.ref_price, 1.0), 1.0)
    quality = jnp.einsum("sjk,jk->sj", mix, prob.quality)
    # an offer with no usable pool (e.g. a fixed fleet without its model) serves nobody
    servable = jnp.einsum("sjk,sjkg->sj", mix, route)
    reqs = demand(price, quality, prob.served_latency_ms, prob.demand) * servable
    revenue = reqs * price
    work = econ.work_of(reqs, mix, route, prob)  # busy GPUs per flow
    need_peak, need_daily = econ.period_needs(work, prob)  # (G, J, K, T)
    need = econ.pool_gpus(need_peak, need_daily, sharpness)
    derived = need.max(-1)
    gpus = derived if fleet is None else jnp.where(fixed, fleet, derived)
    per_period = need if fleet is None else jnp.where(fixed, econ.provisioned(need, fleet, prob.tp), need)
    reserved, gpu_cost = econ.cycle_fleet(per_period, prob, whole=False if fleet is None else fixed)
    margin = revenue.sum() - gpu_cost
    peak = need_peak.max(-1) * prob.peak_utilization
    daily = jnp.einsum("sjkg->gjk", work)

    per_type = econ.gpus_per_type(gpus)
    g_cap = (per_type - prob.gpu_cap) / jnp.maximum(prob.gpu_cap, 1.0)  # a cap of 0 GPUs is allowed
    g_budget = (gpu_cost - prob.budget_usd_per_day) / prob.budget_usd_per_day
    g_capex = (econ.fleet_capex(per_type, prob) - prob.capex_budget_usd) / prob.capex_budget_usd
    g_quality = 10.0 * (prob.min_quality[:, None] - quality) * prob.demand.offer_mask
    top_peak, top_daily = need_peak.max(-1), need_daily.max(-1)
    denom = jnp.maximum(fleet, 1.0) if fleet is not None else jnp.ones_like(top_peak)
    g_fixed_peak = (top_peak - (fleet if fleet is not None else top_peak)) / denom
    g_fixed_daily = (top_daily - (fleet if fleet is not None else top_daily)) / denom
    g = jnp.concatenate([g_cap, g_budget[None], g_capex[None], g_quality.ravel(), g_fixed_peak.ravel(),
                         g_fixed_daily.ravel()])
    if active is not None:
        g = jnp.where(active > 0, g, -1.0)
    return Breakdown(multiplier, sheet_prices(log_mu, prob), price, reqs, quality, mix, route, revenue, work, peak, daily, gpus, per_period, reserved,
                     gpu_cost, margin, g)


def objective(dec: Decision, prob: Problem, fleet: jnp.ndarray | None = None,
              active: jnp.ndarray | None = None, sharpness=POOL_SHARPNESS, fixed=True):
    """``(−margin / scale, Breakdown)`` — the single signature the solver minimises."""
    b = evaluate(dec, prob, fleet, active, sharpness, fixed)
    return -b.margin / prob.scale, b


def evaluate_plan(dec: Decision, prob: Problem, fleet: jnp.ndarray, fixed) -> Breakdown:
    """:func:`evaluate` of a plan on a fixed fleet (``fixed`` true) or with pools sized by load
    (``fixed`` false, ``fleet`` ignored): one program for both."""
    return evaluate(dec, prob, fleet, None, POOL_SHARPNESS, fixed)


evaluate_plan_jit = jax.jit(evaluate_plan)


def price_response(dec: Decision, prob: Problem, log_shifts: jnp.ndarray):
    """Demand and margin when prices move: ``(requests (N, S, J), margin (N,) USD/day)`` at the
    decision's price sheets × ``exp(log_shifts)`` (N, R) (each product's sheet moves as a whole),
    mix and routing held, pools sized by load (the relaxed cost model). Shifted prices stay
    inside the price box."""
    from optimizer.decision import log_multiplier, raw_price

    base = log_multiplier(dec.price_raw, prob)

    def one(shift):
        b = evaluate(dec._replace(price_raw=raw_price(base + shift[:, None], prob, eps=1e-9)), prob)
        return b.requests_per_day, b.margin

    return jax.vmap(one)(log_shifts)


price_response_jit = jax.jit(price_response)
