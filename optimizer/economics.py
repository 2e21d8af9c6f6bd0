"""The economics every consumer shares: unit conversions, pool loads, pool sizes and fleet cost.

The objective, the dual solver, the plan tables, the sweep flags and the plots all size pools and
price fleets with these functions, so a change to the cost model is made once. Pure functions
over a :class:`optimizer.problem.Problem` (``prob``); ``xp`` is ``jnp`` (traced) or ``np`` (reports).

A *pool* is one (GPU type g, model j, precision k). ``work`` is the mean GPU-seconds per second
(i.e. busy GPUs) of each flow, shape (S, J, K, G). The day is a cycle of T equal periods: in each
period a pool must hold its interactive peak load at ``peak_utilization`` and its mean load (the
deferrable load placed there included) at ``daily_utilization``. A segment's load in period t is
its mean × its profile, shaped to its ``peak_to_mean`` (:func:`period_weights`). A pool's GPUs are
reserved (paid in every period) or on-demand (paid in the periods used); its cost per day is the
load-duration optimum of :mod:`kernels.capacity`. With one period and no on-demand GPUs this is
the two-number model: ``max(peak / ρ_peak, daily / ρ_day)`` GPUs paid all day.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.capacity import (CAP_FEASIBLE_ITERS, CAP_ITERS, CAP_WARM_FEASIBLE_ITERS, CAP_WARM_ITERS, capped_reserve,
                              cycle_cost, on_demand_gpus, reserve_level, reserve_level_periods, water_fill)
from kernels.smooth import smooth_max_pos

SECONDS_PER_DAY = 86400.0
SECONDS_PER_HOUR = 3600.0
HOURS_PER_DAY = 24.0

POOL_SHARPNESS = 5000.0
"""Sharpness of the smooth max that sizes a pool (≤ 0.014 % above the hard max, only at a tie)."""


def usd_per_gpu_day(prob, xp=jnp):
    """(G,) USD per GPU per day."""
    return xp.asarray(prob.usd_per_gpu_hour) * HOURS_PER_DAY


def usd_per_gpu_second(rate_usd_per_gpu_hour):
    """USD per GPU-second of a rent (or charged rate) in USD per GPU-hour."""
    return rate_usd_per_gpu_hour / SECONDS_PER_HOUR


def work_of(requests_per_day, mix, route, prob):
    """(S, J, K, G) busy GPUs of each flow: requests/s × mix × routing × GPU-s per request."""
    return (requests_per_day / SECONDS_PER_DAY)[..., None, None] * mix[..., None] * route * prob.gpu_s_per_request




def shaped_profile(profile, peak_to_mean):
    """``(shaped, burst)``: the profile ``f`` (S, T; mean 1, peak ``F``) shaped to each segment's
    ``peak_to_mean`` ``κ`` (S,): flattened towards 1 when ``κ < F`` (``f' = 1 + α (f − 1)``,
    α = (κ−1)/(F−1)), mean still 1; and ``burst`` (S, 1) = ``κ / max f'``, the rest of the peak
    when ``κ > F``: burstiness within a period, sized for but not movable."""
    f = jnp.asarray(profile)
    ptm = jnp.asarray(peak_to_mean)[:, None]
    top = jnp.max(f, -1, keepdims=True)
    alpha = jnp.clip((ptm - 1.0) / jnp.maximum(top - 1.0, 1e-12), 0.0, 1.0)
    shaped = 1.0 + alpha * (f - 1.0)
    return shaped, ptm / jnp.max(shaped, -1, keepdims=True)


def block_share(profile, peak_to_mean, window):
    """(S,) share of its configured segment's daily load a block carries: the mean over the cycle
    of the shaped profile × the block's ``window`` (S, T) share of each period. Exactly 1 for a
    segment that is not split by the clock (window 1 everywhere)."""
    return _block_share(shaped_profile(profile, peak_to_mean)[0], window)


def _block_share(shaped, window):
    w = jnp.asarray(window)
    return jnp.where(jnp.all(w >= 1.0, -1), 1.0, jnp.mean(shaped * w, -1))


def period_weights(prob):
    """``(peak, mean)`` (S, T): per unit of a segment's mean load, its peak load within period t
    and its mean load in t, from its profile shaped to its ``peak_to_mean``
    (:func:`shaped_profile`). A block of a segment split by the clock (an off-peak price sheet,
    :mod:`optimizer.windows`) carries its ``window`` share of each period of the segment's load,
    per unit of its own mean. Deferrable segments: 0 (placed by :func:`period_needs`). One
    period, one block: ``(κ, 1)`` — the two-number model."""
    shaped, burst = shaped_profile(prob.profile, prob.peak_to_mean)
    w = jnp.asarray(prob.window)
    per_block = w / jnp.maximum(_block_share(shaped, w), 1e-12)[:, None]
    interactive = (~jnp.asarray(prob.is_batch)).astype(shaped.dtype)[:, None]
    return shaped * burst * per_block * interactive, shaped * per_block * interactive


def period_needs(work, prob):
    """``(peak_need, daily_need)`` (G, J, K, T) GPUs each pool needs in each period: its interactive
    peak / ρ_peak, and its mean load with the deferrable load water-filled into the periods of
    lowest need (:func:`kernels.capacity.water_fill`), / ρ_day."""
    peak, interactive, batch = period_need_parts(work, prob)
    return peak, interactive + batch


def period_need_parts(work, prob):
    """``(peak_need, interactive_daily_need, batch_need)`` (G, J, K, T): :func:`period_needs` with
    the daily need split into its interactive part and the deferrable load placed in each period."""
    w = jnp.asarray(work)
    peak_f, mean_f = period_weights(prob)
    peak = jnp.einsum("sjkg,st->gjkt", w, peak_f) / prob.peak_utilization
    daily = jnp.einsum("sjkg,st->gjkt", w, mean_f)
    batch = jnp.einsum("sjkg->gjk", w * jnp.asarray(prob.is_batch).astype(w.dtype)[:, None, None, None])
    placed = water_fill(peak, daily, batch, prob.daily_utilization)
    return peak, daily / prob.daily_utilization, placed / prob.daily_utilization


def pool_ratios(prob):
    """``(κ, ν)`` (G, 1, 1): on-demand / reserved rent and idle value / reserved rent per pool."""
    return (jnp.asarray(prob.on_demand_ratio)[:, None, None], jnp.asarray(prob.idle_ratio)[:, None, None])


def has_on_demand_caps(prob) -> bool:
    """Whether some GPU type's on-demand GPUs are capped per period (static: the caps' shape)."""
    return int(prob.on_demand_cap.shape[-1]) > 0


def capped_pools(need, prob, start=None):
    """``(reserved, price)``: the least-cost reserves (G, J, K) of pools needing ``need`` (G, J, K, T)
    that keep each type's on-demand GPUs within its per-period cap, and the caps' prices (G, T) in
    reserved rents per on-demand GPU-hour (:func:`kernels.capacity.capped_reserve`). ``start``: the
    prices at nearby needs (G, T) to warm-start a few steps from (an iterative solver's previous step)."""
    G, J, K, T = need.shape
    iters, tail = (CAP_ITERS, CAP_FEASIBLE_ITERS) if start is None else (CAP_WARM_ITERS, CAP_WARM_FEASIBLE_ITERS)
    r, price = capped_reserve(need.reshape(G, J * K, T), prob.on_demand_ratio, prob.idle_ratio, prob.on_demand_cap,
                              iters, start, tail)
    return r.reshape(G, J, K), price


def reserved_gpus(need, prob):
    """(G, J, K) reserved GPUs of pools needing ``need`` (G, J, K, T) GPUs per period: the load-duration
    rule, raised where a type's on-demand GPUs would exceed its per-period cap (:func:`capped_pools`)."""
    if has_on_demand_caps(prob):
        return capped_pools(need, prob)[0]
    return reserve_level(need, *pool_ratios(prob))


def cycle_fleet_cost_per_pool(need, prob, reserved=None):
    """(G, J, K) USD/day of pools needing ``need`` (G, J, K, T) GPUs per period: ``reserved`` (G, J, K;
    default :func:`reserved_gpus`), on-demand above it (and idle reserved GPU-hours credited at their
    value). Without on-demand caps the default reserve's gradient is the cost's own (an envelope);
    with them the reserve is held fixed, so differentiate :func:`cycle_fleet` instead."""
    kappa, nu = pool_ratios(prob)
    reserved = reserved_gpus(need, prob) if reserved is None else reserved
    return cycle_cost(need, reserved, kappa, nu) * usd_per_gpu_day(prob)[:, None, None]


def cycle_fleet(need, prob, whole=False):
    """``(reserved, cost)``: the least-cost reserves (G, J, K) of pools needing ``need`` (G, J, K, T) and
    their USD/day, with the gradient of the optimal cost in ``need`` (what the fleet's last GPU-hour
    in each period costs).

    Without on-demand caps that is the load-duration cost's own gradient. With them the reserves
    solve a small LP, so the cost is differentiated by its envelope: on-demand GPU-hours in period t
    cost ``κ + μ_t`` (μ: the caps' prices), reserved ones ν below the reserve optimal at those
    prices [the LP's dual; ECONOMICS.md §2.7 with a capacity limit on the peaking technology].
    ``whole`` (a bool, possibly traced): a fixed fleet of whole replicas per period, whose reserves
    under the caps are rounded up to whole GPUs (still within the caps: a higher reserve rents fewer
    on-demand GPUs)."""
    if not has_on_demand_caps(prob):
        reserved = reserved_gpus(need, prob)
        return reserved, cycle_fleet_cost(need, prob, reserved)
    reserved, price = capped_pools(need, prob)
    reserved = jnp.where(whole, jnp.minimum(jnp.ceil(reserved - 1e-9), jax.lax.stop_gradient(need).max(-1)), reserved)
    kappa, nu = pool_ratios(prob)
    value = cycle_fleet_cost(need, prob, jax.lax.stop_gradient(reserved))
    priced = kappa[..., None] + price[:, None, None, :]  # (G, 1, 1, T)
    level = jax.lax.stop_gradient(reserve_level_periods(need, priced, nu))
    d = need - level[..., None]
    lag = jnp.sum((level + jnp.mean(jnp.maximum(priced * d, nu[..., None] * d), -1)) * usd_per_gpu_day(prob)[:, None, None])
    return reserved, jax.lax.stop_gradient(value) + lag - jax.lax.stop_gradient(lag)


def cycle_fleet_cost(need, prob, reserved=None):
    """USD/day of pools needing ``need`` (G, J, K, T) GPUs per period at ``reserved`` (default: the
    least-cost reserves, :func:`cycle_fleet`)."""
    if reserved is None:
        return cycle_fleet(need, prob)[1]
    return jnp.sum(cycle_fleet_cost_per_pool(need, prob, reserved))


def on_demand_per_type(need, reserved):
    """(G, T) on-demand GPUs of each type in each period: ``Σ_{j,k} (need − reserved)⁺`` (NumPy
    arrays (G, J, K, T) and (G, J, K) give a NumPy result)."""
    G, T = need.shape[0], need.shape[-1]
    return on_demand_gpus(need.reshape(G, -1, T), reserved.reshape(G, -1))


def provisioned(need, fleet, tp):
    """(G, J, K, T) GPUs a fixed fleet (G, J, K) runs in each period: all of them in the busiest
    period, whole replicas covering the need elsewhere (so off-peak GPUs can be on-demand)."""
    rep = jnp.maximum(tp, 1.0)[..., None]
    up = jnp.ceil(need / rep - 1e-9) * rep
    up = need + jax.lax.stop_gradient(up - need)  # whole replicas; the cost's slope of the load carried through
    whole = jnp.minimum(up, fleet[..., None])
    busiest = need >= jnp.max(need, -1, keepdims=True)
    return jnp.where(busiest, fleet[..., None], whole)






def pool_gpus(need_peak, need_daily, sharpness=POOL_SHARPNESS):
    """(G, J, K) GPUs of derived pools: a smooth max of the two needs (see ``kernels.smooth``)."""
    return smooth_max_pos(need_peak, need_daily, sharpness)




def gpus_per_type(gpus, xp=jnp):
    """(G,) GPUs per type of a fleet (G, J, K)."""
    return xp.asarray(gpus).sum((1, 2))


def fleet_capex(per_type, prob, xp=jnp):
    """USD purchase value of ``per_type`` (G,) GPUs (0 where the catalog has no capex)."""
    return xp.sum(per_type * xp.asarray(prob.capex_per_gpu))


def whole_steps(used, prob, periods: int, xp=jnp):
    """(G + 2,) the smallest step a whole fleet takes in each limited quantity, for pools ``used``
    (G, J, K) bool over a cycle of ``periods`` periods: one replica of the smallest used deployment per GPU type (GPUs), one replica for
    one period at the reserved rent (USD/day: the daily budget), that replica's capex (USD)."""
    rep = xp.maximum(xp.asarray(prob.tp, dtype=float), 1.0)
    smallest = xp.min(xp.where(used, rep, xp.inf), axis=(1, 2))  # (G,)
    smallest = xp.where(xp.isfinite(smallest), smallest, 1.0)
    day = usd_per_gpu_day(prob, xp)
    replica_period = xp.min(xp.where(used, rep * day[:, None, None] / periods, xp.inf))
    replica_period = xp.where(xp.isfinite(replica_period), replica_period, xp.min(day) / periods)
    capex = xp.min(xp.asarray(prob.capex_per_gpu) * smallest)
    return xp.concatenate([smallest, xp.reshape(replica_period, (1,)), xp.reshape(capex, (1,))])
