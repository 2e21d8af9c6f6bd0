"""The economics every consumer shares: unit conversions, pool loads, pool sizes and fleet cost.

The objective, the dual solver, the plan tables, the sweep flags and the plots all size pools and
price fleets with these functions, so a change to the cost model is made once. Pure functions
over a :class:`optimizer.problem.Problem` (``prob``); ``xp`` is ``jnp`` (traced) or ``np`` (reports).

A *pool* is one (GPU type g, model j, precision k). ``work`` is the mean GPU-seconds per second
(i.e. busy GPUs) of each flow, shape (S, J, K, G). A pool must hold its interactive peak load at
``peak_utilization`` and its mean load over the day (batch included) at ``daily_utilization``.
"""

from __future__ import annotations

import jax.numpy as jnp

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


def peak_weight(prob, xp=jnp):
    """(S,) how much of a segment's mean load its peak adds to a pool's peak: peak-to-mean for
    interactive segments, 0 for batch (which rides in the off-peak valley)."""
    return (~xp.asarray(prob.is_batch)).astype(float) * xp.asarray(prob.peak_to_mean)


def pool_loads(work, prob, xp=jnp):
    """``(peak, daily)`` (G, J, K) busy GPUs of each pool: the sum of interactive segments' peaks,
    and the mean over the day of all traffic."""
    w = xp.asarray(work)
    peak = xp.einsum("sjkg->gjk", w * peak_weight(prob, xp)[:, None, None, None])
    return peak, xp.einsum("sjkg->gjk", w)


def pool_needs(peak, daily, prob):
    """``(GPUs the peak needs, GPUs the day needs)`` (G, J, K) at the utilisation caps."""
    return peak / prob.peak_utilization, daily / prob.daily_utilization


def pool_gpus(need_peak, need_daily, sharpness=POOL_SHARPNESS):
    """(G, J, K) GPUs of derived pools: a smooth max of the two needs (see ``kernels.smooth``)."""
    return smooth_max_pos(need_peak, need_daily, sharpness)


def fleet_cost(gpus, prob, xp=jnp):
    """USD/day of a fleet (G, J, K) GPUs per pool."""
    return xp.sum(xp.asarray(gpus) * usd_per_gpu_day(prob, xp)[:, None, None])


def gpus_per_type(gpus, xp=jnp):
    """(G,) GPUs per type of a fleet (G, J, K)."""
    return xp.asarray(gpus).sum((1, 2))


def fleet_capex(per_type, prob, xp=jnp):
    """USD purchase value of ``per_type`` (G,) GPUs (0 where the catalog has no capex)."""
    return xp.sum(per_type * xp.asarray(prob.capex_per_gpu))
