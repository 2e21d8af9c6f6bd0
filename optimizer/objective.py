"""The margin objective: decision → (−margin / scale, Breakdown, constraint values).

One signature for everything the solver and the reports need (STYLE.md §2)::

    objective(decision, problem, fleet, active) -> (loss, Breakdown)

Decisions are unconstrained (reparametrised): log price multiplier in a box by a scaled sigmoid,
precision mix by a masked softmax, routing of each (segment, model, precision) flow over GPU
types by a masked softmax. In the relaxed problem the fleet is *derived*: each pool gets exactly
the GPUs its load needs (``N = smax(peak load / ρ_peak, daily load / ρ_day)``), so capacity can
never be short and batch traffic rides in the interactive pools' off-peak spare time first. With
a fixed (integer) fleet the same loads become constraints ``load ≤ ρ · N`` instead.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from kernels.demand import demand
from kernels.smooth import smooth_max_pos
from optimizer.problem import SECONDS_PER_DAY, Problem

MASKED = -1e9
"""Logit added to masked-out options (softmax weight exactly 0 in float64)."""

POOL_SHARPNESS = 5000.0
"""Final sharpness of the smooth max sizing a pool (≤ 0.014 % above the hard max, only at a tie)."""
SHARPNESS_START, SHARPNESS_GROWTH = 40.0, 1.3
"""The solver starts at a gentle 40 (≤ 1.8 % at a tie) and multiplies by 1.3 per outer step."""


class Decision(NamedTuple):
    """Unconstrained decision variables."""

    price_raw: jnp.ndarray  # (S, J) → log price multiplier in [lo, hi] by a scaled sigmoid
    mix_logits: jnp.ndarray  # (S, J, K) → precision mix by masked softmax
    route_logits: jnp.ndarray  # (S, J, K, G) → GPU-type routing by masked softmax


class Breakdown(NamedTuple):
    """Everything a report needs about one decision (USD, requests, GPUs per day)."""

    price_multiplier: jnp.ndarray  # (S, J) price / reference price
    price_per_request: jnp.ndarray  # (S, J) USD
    requests_per_day: jnp.ndarray  # (S, J)
    quality: jnp.ndarray  # (S, J) served quality retention
    mix: jnp.ndarray  # (S, J, K)
    route: jnp.ndarray  # (S, J, K, G)
    revenue: jnp.ndarray  # (S, J) USD/day
    work: jnp.ndarray  # (S, J, K, G) mean GPU-seconds per second of each flow
    peak_load: jnp.ndarray  # (G, J, K) GPU-s/s at peak (interactive, sum of segment peaks)
    daily_load: jnp.ndarray  # (G, J, K) mean GPU-s/s over the day (all tiers)
    gpus: jnp.ndarray  # (G, J, K) GPUs per pool (derived, or the fixed fleet)
    gpu_cost: jnp.ndarray  # () USD/day
    margin: jnp.ndarray  # () USD/day
    constraints: jnp.ndarray  # (C,) normalised g(x) ≤ 0 (inactive ones = −1)


def masked_softmax(logits: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Softmax over the last axis restricted to ``mask`` (all-masked rows give zeros)."""
    z = jnp.where(mask > 0, logits, MASKED)
    return jax.nn.softmax(z, axis=-1) * (mask.sum(-1, keepdims=True) > 0)


def decode(dec: Decision, prob: Problem, fleet: jnp.ndarray | None = None, fixed=True):
    """(log price multiplier (S,J), mix (S,J,K), route (S,J,K,G)) from a decision.

    With a fixed fleet, flows may only use pools that have GPUs.
    """
    lo, hi = prob.log_mu_lo[:, None], prob.log_mu_hi[:, None]
    log_mu = lo + (hi - lo) * jax.nn.sigmoid(dec.price_raw)
    route_mask = prob.route_mask
    if fleet is not None:
        has = jnp.transpose(fleet, (1, 2, 0))[None] > 0
        route_mask = route_mask * jnp.where(fixed, has, True)
    mix_mask = prob.mix_mask * (route_mask.sum(-1) > 0)
    return log_mu, masked_softmax(dec.mix_logits, mix_mask), masked_softmax(dec.route_logits, route_mask)


def evaluate(dec: Decision, prob: Problem, fleet: jnp.ndarray | None = None,
             active: jnp.ndarray | None = None, sharpness=POOL_SHARPNESS, fixed=True) -> Breakdown:
    """Margin and its parts for a decision; ``fleet`` (G, J, K) fixes the GPUs per pool when
    ``fixed`` (a bool, possibly traced) is true, and is ignored otherwise.

    ``sharpness`` of the smooth max that sizes derived pools; the solver anneals it upwards so
    the final pool sizes are within ``2**(1/sharpness)`` of the exact ``max``.
    """
    log_mu, mix, route = decode(dec, prob, fleet, fixed)
    mu = jnp.exp(log_mu)
    price = mu * prob.demand.ref_price
    quality = jnp.einsum("sjk,jk->sj", mix, prob.quality)
    # an offer with no usable pool (e.g. a fixed fleet without its model) serves nobody
    servable = jnp.einsum("sjk,sjkg->sj", mix, route)
    reqs = demand(price, quality, prob.served_latency_ms, prob.demand) * servable
    revenue = reqs * price
    rate = reqs / SECONDS_PER_DAY  # requests/s
    work = rate[:, :, None, None] * mix[..., None] * route * prob.gpu_s_per_request  # GPU-s/s
    interactive = (~prob.is_batch).astype(work.dtype)[:, None, None, None]
    peak = jnp.einsum("sjkg->gjk", work * interactive * prob.peak_to_mean[:, None, None, None])
    daily = jnp.einsum("sjkg->gjk", work)
    need_peak = peak / prob.peak_utilization
    need_daily = daily / prob.daily_utilization
    derived = smooth_max_pos(need_peak, need_daily, sharpness)
    gpus = derived if fleet is None else jnp.where(fixed, fleet, derived)
    gpu_cost = jnp.sum(gpus * (prob.usd_per_gpu_hour * 24.0)[:, None, None])
    margin = revenue.sum() - gpu_cost

    per_type = gpus.sum((1, 2))
    g_cap = (per_type - prob.gpu_cap) / jnp.maximum(prob.gpu_cap, 1.0)  # a cap of 0 GPUs is allowed
    g_budget = (gpu_cost - prob.budget_usd_per_day) / prob.budget_usd_per_day
    g_capex = (jnp.sum(per_type * prob.capex_per_gpu) - prob.capex_budget_usd) / prob.capex_budget_usd
    g_quality = 10.0 * (prob.min_quality[:, None] - quality) * prob.demand.offer_mask
    denom = jnp.maximum(fleet, 1.0) if fleet is not None else jnp.ones_like(need_peak)
    g_fixed_peak = (need_peak - (fleet if fleet is not None else need_peak)) / denom
    g_fixed_daily = (need_daily - (fleet if fleet is not None else need_daily)) / denom
    g = jnp.concatenate([g_cap, g_budget[None], g_capex[None], g_quality.ravel(), g_fixed_peak.ravel(),
                         g_fixed_daily.ravel()])
    if active is not None:
        g = jnp.where(active > 0, g, -1.0)
    return Breakdown(mu, price, reqs, quality, mix, route, revenue, work, peak, daily, gpus, gpu_cost, margin, g)


def objective(dec: Decision, prob: Problem, fleet: jnp.ndarray | None = None,
              active: jnp.ndarray | None = None, sharpness=POOL_SHARPNESS, fixed=True):
    """``(−margin / scale, Breakdown)`` — the single signature the solver minimises."""
    b = evaluate(dec, prob, fleet, active, sharpness, fixed)
    return -b.margin / prob.scale, b


evaluate_jit = jax.jit(evaluate)
"""Compiled :func:`evaluate` (one program per problem shape and fleet mode)."""
