"""Capacity over a cycle of periods: where deferrable load goes, and what a load curve costs.

Pure JAX functions over arrays whose last axis is the period (T periods of equal length); every
leading axis is a pool. Loads and needs are in GPUs (busy GPU-seconds per second).

* :func:`water_fill` places a deferrable (batch) load in the periods of lowest need, which minimises
  every symmetric convex cost of the needs at once (it gives the majorisation-least need vector),
  so it is the optimal schedule for the reserved/on-demand cost below and for peak sizing alike.
* :func:`reserve_level` is the load-duration rule: the k-th GPU of a pool is reserved iff it is busy
  in more than the fraction ``θ = (1 − ν) / (κ − ν)`` of the periods (``κ``: on-demand / reserved
  rent, ``ν``: value of an idle reserved GPU-hour / reserved rent) [ECONOMICS.md §2.7: the
  peak-load problem with two technologies; with ``κ → ∞`` every GPU is reserved and the pool costs
  its peak].
* :func:`cycle_cost` is the pool's cost in reserved GPU-days per day at that reserve:
  ``R + mean_t max(κ (n_t − R), ν (n_t − R))``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

PROJECTION_BISECTION_STEPS = 64
"""Bisection steps of the shift of :func:`project_weights` (its bracket is at most about 2 wide, so
2⁻⁶⁴ of it is below float64's resolution of a weight)."""
WEIGHT_BISECTION_STEPS = 24
"""Bisection steps of the level of the smoothed period weights (2⁻²⁴ of the bracket: a few thousandths
of a band of 1e-4 of the needs' range), then :data:`WEIGHT_NEWTON_STEPS` Newton steps."""
WEIGHT_NEWTON_STEPS = 2
"""Newton steps on the level after the bisection (within its bracket). The weights are normalised to
sum to 1 exactly, which moves each by the relative error of their sum: after the bisection alone that
was about 1e-5 with a narrow band, enough to put a weight below its bound ν/T; after two Newton steps
it is at rounding level (more bisection steps would do as well, at a cost in every dual step)."""


def water_fill(peak_need: jnp.ndarray, daily: jnp.ndarray, batch: jnp.ndarray, daily_util) -> jnp.ndarray:
    """(…, T) deferrable load placed in each period, mean ``batch`` (…,) over the periods.

    A period's need is ``max(P_t, (D_t + B_t) / ρd)`` (``P_t``: GPUs its interactive peak needs,
    ``D_t``: its interactive mean load, ``B_t``: the deferrable load placed there, ``ρd``:
    ``daily_util``). The batch first fills the free room ``(P_t ρd − D_t)⁺`` pro rata; what does not
    fit raises the lowest needs ``u_t = max(P_t, D_t / ρd)`` to a common water level ``λ``:
    ``B_t = free_t + ρd (λ − u_t)⁺``. The load placed beyond the room is piecewise linear in ``λ``
    with kinks at the ``u_t``, so the level is exact: the highest kink below it, then the linear
    piece through the periods at or below that kink (differentiable; no iteration, no sort).
    """
    T = peak_need.shape[-1]
    total = T * batch  # (…,) GPU-periods to place
    if T == 1:  # one period: all of it there
        return batch[..., None] * jnp.ones_like(peak_need)
    free = jnp.maximum(peak_need * daily_util - daily, 0.0)
    room = free.sum(-1)
    fits = total <= room
    floor = jnp.maximum(peak_need, daily / daily_util)  # (…, T) each period's need without batch
    # the load placed beyond the room at λ = each kink u_j: ρd Σ_t (u_j − u_t)⁺ (pairwise, T × T:
    # XLA's sort on CPU costs ten times as much at T = 24)
    beyond = daily_util * jnp.maximum(floor[..., :, None] - floor[..., None, :], 0.0).sum(-1)  # (…, T)
    extra = jnp.maximum(total - room, 0.0)
    kink = jnp.max(jnp.where(beyond <= extra[..., None], floor, -jnp.inf), -1)  # the highest kink at or below
    under = floor <= kink[..., None]  # the periods at or below it (at least the lowest)
    count = jnp.maximum(under.sum(-1), 1)
    level = (extra / daily_util + jnp.where(under, floor, 0.0).sum(-1)) / count
    has_room = room > 1e-30  # GPUs; below it the 1/room² of the gradient would overflow (and leak through the where)
    safe_room = jnp.where(has_room, room, 1.0)
    spread = free * jnp.where(fits & has_room, total / safe_room, 0.0)[..., None]
    over = free + daily_util * jnp.maximum(jnp.where(fits, 0.0, level)[..., None] - floor, 0.0)
    return jnp.where(fits[..., None], spread, over)


def _per_period(ratio, like: jnp.ndarray) -> jnp.ndarray:
    """``ratio`` as (…, T) like ``like``: per period when it has ``like``'s rank, else per pool (…,)."""
    r = jnp.asarray(ratio)
    if r.ndim == like.ndim:
        return jnp.broadcast_to(r, like.shape)
    return jnp.broadcast_to(r, like.shape[:-1])[..., None]


def reserve_level(need: jnp.ndarray, on_demand_ratio, idle_ratio) -> jnp.ndarray:
    """(…,) reserved GPUs of a pool with needs ``need`` (…, T): its k-th largest need, ``k = ⌊θT⌋ + 1``
    with ``θ = (1 − ν)/(κ − ν)`` (0 GPUs when ``k > T``: nothing is busy often enough).

    ``on_demand_ratio`` κ ≥ 1 and ``idle_ratio`` ν ∈ [0, 1) broadcast against the leading axes.
    """
    T = need.shape[-1]
    kappa, nu = jnp.asarray(on_demand_ratio), jnp.asarray(idle_ratio)
    theta = (1.0 - nu) / jnp.maximum(kappa - nu, 1e-12)
    k = jnp.floor(theta * T + 1e-9) + 1.0  # (…,)
    # the k-th largest by ranks (pairwise, T × T; no sort): n_t is it iff #{n_s > n_t} < k ≤ #{n_s ≥ n_t}
    greater = (need[..., None, :] > need[..., :, None]).sum(-1)
    at_least = (need[..., None, :] >= need[..., :, None]).sum(-1)
    kk = jnp.broadcast_to(k, need.shape[:-1])[..., None]
    level = jnp.max(jnp.where((greater < kk) & (kk <= at_least), need, -jnp.inf), -1)
    return jnp.where(kk[..., 0] <= T, level, 0.0)


def cycle_cost(need: jnp.ndarray, reserved: jnp.ndarray, on_demand_ratio, idle_ratio) -> jnp.ndarray:
    """(…,) cost of a pool in reserved GPU-days per day: ``R + mean_t max(κ (n_t − R), ν (n_t − R))``
    (on-demand GPUs above the reserve at κ, idle reserved GPUs below it credited at ν)."""
    kappa = jnp.asarray(on_demand_ratio)[..., None]
    nu = jnp.asarray(idle_ratio)[..., None]
    d = need - reserved[..., None]
    return reserved + jnp.mean(jnp.maximum(kappa * d, nu * d), axis=-1)


def charge_weights(need: jnp.ndarray, on_demand_ratio, idle_ratio) -> jnp.ndarray:
    """(…, T) a subgradient of the cycle cost (at its optimal reserve) w.r.t. each period's need:
    ``κ_t/T`` above the reserve (κ per pool, or per period where on-demand caps are priced), ``ν/T`` below it, the rest shared by the periods at the reserve so
    the weights sum to 1 (the price of one reserved GPU-day). The extreme points of the set of
    such weights are the linear pieces of the cost [the dual of the load-duration LP]."""
    T = need.shape[-1]
    kappa = _per_period(on_demand_ratio, need)
    nu = jnp.broadcast_to(jnp.asarray(idle_ratio), need.shape[:-1])[..., None]
    level = reserve_level_periods(need, kappa, nu[..., 0])[..., None]
    tol = 1e-9 * jnp.maximum(jnp.max(jnp.abs(need), -1, keepdims=True), 1e-30)
    above, below = need > level + tol, need < level - tol
    at = ~(above | below)
    fixed = jnp.where(above, kappa / T, jnp.where(below, nu / T, 0.0))
    rest = (1.0 - fixed.sum(-1, keepdims=True)) / jnp.maximum(at.sum(-1, keepdims=True), 1)
    return jnp.where(at, jnp.clip(rest, nu / T, kappa / T), fixed)


def smooth_charge_weights(need: jnp.ndarray, on_demand_ratio, idle_ratio, width) -> jnp.ndarray:
    """(…, T) :func:`charge_weights` smoothed over a band ``width`` (…,) of needs: ``π_t = (ν + (κ_t − ν)
    σ((n_t − c)/width)) / T`` (κ per pool (…,) or per period (…, T): on-demand caps' prices added) with the level ``c`` set so that ``Σ_t π_t = 1`` (the gradient of an
    entropy-smoothed cycle cost; with ``κ → ∞`` it is a softmax of the needs). Continuous in the
    needs, so averaging it converges where the exact subgradient jumps between tied periods."""
    T = need.shape[-1]
    if T == 1:  # one period carries the whole GPU-day
        return jnp.ones_like(need)
    kappa = _per_period(on_demand_ratio, need)
    nu = jnp.broadcast_to(jnp.asarray(idle_ratio), need.shape[:-1])[..., None]
    w = jnp.maximum(jnp.asarray(width), 1e-30)[..., None]

    def total(c):
        return (nu + (kappa - nu) * jax.nn.sigmoid((need - c[..., None]) / w)).sum(-1)

    lo = jnp.min(need, -1) - 60.0 * w[..., 0]
    hi = jnp.max(need, -1) + 60.0 * w[..., 0]

    def bisect(_, lohi):
        a, b = lohi
        mid = 0.5 * (a + b)
        high = total(mid) > T  # weights too large: raise the level
        return jnp.where(high, mid, a), jnp.where(high, b, mid)

    a, b = jax.lax.fori_loop(0, WEIGHT_BISECTION_STEPS, bisect, (lo, hi))
    c = 0.5 * (a + b)
    for _ in range(WEIGHT_NEWTON_STEPS):  # the sum is decreasing in the level: Newton within [a, b]
        s = jax.nn.sigmoid((need - c[..., None]) / w)
        excess = (nu + (kappa - nu) * s).sum(-1) - T
        slope = ((kappa - nu) * s * (1.0 - s) / w).sum(-1)
        c = jnp.clip(c + excess / jnp.maximum(slope, 1e-300), a, b)
    sig = (nu + (kappa - nu) * jax.nn.sigmoid((need - c[..., None]) / w))
    return sig / jnp.maximum(sig.sum(-1, keepdims=True), 1e-300)


def project_weights(weight: jnp.ndarray, on_demand_ratio, idle_ratio) -> jnp.ndarray:
    """(…, T) the Euclidean projection of period weights ``weight`` (…, T) onto their set at ``(κ, ν)``
    (κ per pool or per period): ``ν/T ≤ π_t ≤ κ_t/T``, ``Σ_t π_t = 1`` (the subgradients of :func:`cycle_cost`).

    Weights valid for one scenario need not be for another (with ``κ = 1``, on-demand at the
    reserved rent, the only weights are ``1/T``); the dual function is an upper bound only inside
    the set, so a warm start from a neighbour is projected first. ``π_t = clip(w_t + τ, ν/T, κ/T)``
    with the shift ``τ`` bracketed by bisection (the sum is monotone in ``τ``), then solved exactly
    on the periods it leaves free (so the result sums to 1 and its gradient is the projection's).
    """
    T = weight.shape[-1]
    kappa = _per_period(on_demand_ratio, weight)
    nu = jnp.broadcast_to(jnp.asarray(idle_ratio), weight.shape[:-1])[..., None]
    lo, hi = nu / T, jnp.minimum(kappa / T, 1.0)  # no weight exceeds 1

    def total(tau):
        return jnp.clip(weight + tau[..., None], lo, hi).sum(-1)

    a = jnp.min(lo - weight, -1)  # every weight at its floor: Σ = ν ≤ 1
    b = jnp.max(hi - weight, -1)  # every weight at its ceiling: Σ = min(κ, T) ≥ 1

    def bisect(_, ab):
        a, b = ab
        mid = 0.5 * (a + b)
        low = total(mid) < 1.0
        return jnp.where(low, mid, a), jnp.where(low, b, mid)

    a, b = jax.lax.fori_loop(0, PROJECTION_BISECTION_STEPS, bisect, (jax.lax.stop_gradient(a), jax.lax.stop_gradient(b)))
    guess = jax.lax.stop_gradient(weight + (0.5 * (a + b))[..., None])
    floor, ceil = guess <= lo, guess >= hi
    free = ~(floor | ceil)
    fixed = jnp.where(floor, lo, 0.0).sum(-1) + jnp.where(ceil, hi, 0.0).sum(-1)
    tau = (1.0 - fixed - jnp.where(free, weight, 0.0).sum(-1)) / jnp.maximum(free.sum(-1), 1)
    return jnp.where(free, weight + tau[..., None], jnp.where(floor, lo, hi))


CAP_ITERS = 64
"""Adaptive steps on the prices of the on-demand availability caps in :func:`capped_reserve`."""
PRICE_STEP0, PRICE_GROW, PRICE_SHRINK = 0.5, 1.5, 0.5
"""The caps' prices' first step (× κ) and the factors its size grows by while a period's excess keeps
its sign and shrinks by when it flips. Chosen on 40 random five-pool types against the LP (SciPy
HiGHS): the cost within 0.11 % (median 2e-5); with pure sign steps (Rprop: 0.05, 1.2, 0.5) the
dual stalled up to 0.5 % short and the cost was up to 0.5 % high."""
PRICE_WARM_STEP0 = 0.05
"""The first step (× κ) of prices warm-started from nearby needs' (the dual solver's previous step)."""
CAP_WARM_ITERS, CAP_WARM_FEASIBLE_ITERS = 8, 2
"""Price steps, and of them the last made feasible, of a warm-started :func:`capped_reserve`."""
CAP_FEASIBLE_ITERS = 8
"""The last price steps whose reserves are made feasible (the best kept): where the prices have settled."""
LOWER_SWEEPS = 2
"""Passes of lowering each pool's reserve towards its own optimum within the room the caps leave."""
RAISE_BISECTION_STEPS = 40
"""Bisection steps of the reserve raise that brings a pool type within its on-demand caps."""


def reserve_level_periods(need: jnp.ndarray, period_ratio: jnp.ndarray, idle_ratio) -> jnp.ndarray:
    """(…,) the optimal reserve of a pool whose on-demand GPU-hour costs ``period_ratio`` (…, T)
    reserved rents in each period (:func:`reserve_level` with a per-period κ_t).

    The cost ``R + (1/T) Σ_t max(κ_t (n_t − R), ν (n_t − R))`` has right derivative
    ``1 − (1/T) [Σ_{n_t > R} κ_t + Σ_{n_t ≤ R} ν]`` in ``R``, increasing; the optimum is the lowest
    need (or 0) at which it is ≥ 0: ``Σ_{n_t > R} (κ_t − ν) ≤ T (1 − ν)``. With a constant κ this is
    the k-th largest need of :func:`reserve_level`.
    """
    T = need.shape[-1]
    kappa = jnp.broadcast_to(jnp.asarray(period_ratio), need.shape)
    nu = jnp.asarray(idle_ratio)[..., None]
    room = T * (1.0 - nu) * (1.0 + 1e-12)
    above = jnp.where(need[..., None, :] > need[..., :, None], kappa[..., None, :] - nu[..., None], 0.0).sum(-1)  # (…, T)
    level = jnp.min(jnp.where(above <= room, need, jnp.inf), -1)
    at_zero = jnp.where(need > 0.0, kappa - nu, 0.0).sum(-1) <= room[..., 0]
    return jnp.where(at_zero, 0.0, level)


def on_demand_gpus(need: jnp.ndarray, reserved: jnp.ndarray) -> jnp.ndarray:
    """(G, T) on-demand GPUs of each type in each period: ``Σ_p (n_pt − R_p)⁺`` over its pools
    (``need`` (G, P, T), ``reserved`` (G, P)). Array methods only: NumPy arrays give a NumPy result
    (the reports call it on a finished plan without JAX)."""
    return (need - reserved[..., None]).clip(min=0.0).sum(-2)


class CapCarry(NamedTuple):
    """The state of :func:`capped_reserve`'s price steps."""

    mu: jnp.ndarray  # (G, T) the caps' prices
    size: jnp.ndarray  # (G, T) their step sizes
    sign: jnp.ndarray  # (G, T) the last step's direction
    best_r: jnp.ndarray  # (G, P) the cheapest feasible reserves found
    best_cost: jnp.ndarray  # (G,) their cost
    best_mu: jnp.ndarray  # (G, T) the prices of the highest dual value
    best_dual: jnp.ndarray  # (G,) that value (a lower bound on the cost)
    mean_r: jnp.ndarray  # (G, P) the mean of the iterates' reserves


def capped_reserve(need: jnp.ndarray, on_demand_ratio, idle_ratio, cap: jnp.ndarray,
                   iters: int = CAP_ITERS, start: jnp.ndarray | None = None,
                   tail: int = CAP_FEASIBLE_ITERS) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(reserved, price)``: reserves (G, P) of the pools (need (G, P, T) GPUs per period) of each
    GPU type that keep its on-demand GPUs within ``cap`` (G, T) in every period at least cost, and
    the caps' prices (G, T) ≥ 0 (per on-demand GPU-hour, in reserved rents: on-demand in period t
    costs ``κ + μ_t``).

    The problem ``min Σ_p cost_p(R_p)`` s.t. ``Σ_p (n_pt − R_p)⁺ ≤ A_t`` (a small LP) is solved by
    its Lagrangian dual: at prices ``μ`` every pool reserves alone at per-period rents ``κ + μ_t``
    (:func:`reserve_level_periods`) and ``μ_t`` follows the cap's excess (scaled by the type's
    largest) by steps whose size adapts per period as in Rprop. In the last
    :data:`CAP_FEASIBLE_ITERS` steps, three candidate reserves — the iterate's, the iterates' mean,
    and the reserves optimal within one step of μ split as the caps ask — are raised until they are
    within the caps (each pool towards its largest on-demand need in a period over its cap, by a
    common fraction found by bisection) and the cheapest is kept; then each pool is lowered towards
    its own optimum where the caps leave room. The result is feasible whatever the steps left, and
    within 0.11 % of the LP's cost on random instances (``tests/test_on_demand_cap.py``). ``price``
    is the best dual iterate's. ``start``: prices to start from (e.g. those at nearby needs; first
    steps of :data:`PRICE_WARM_STEP0`), with ``iters`` and ``tail`` (the last steps made feasible). Pure; ``stop_gradient``
    everywhere (the reserves are a decision, not a differentiable map: see
    :func:`optimizer.economics.cycle_fleet_cost_per_pool` for the cost's gradient).
    """
    need = jax.lax.stop_gradient(need)
    G, P, T = need.shape
    kappa = jnp.broadcast_to(jnp.asarray(on_demand_ratio, need.dtype), (G,))
    nu = jnp.broadcast_to(jnp.asarray(idle_ratio, need.dtype), (G,))
    cap = jnp.broadcast_to(jnp.asarray(cap, need.dtype), (G, T))
    top = need.max(-1)  # (G, P): a reserve at each pool's peak needs no on-demand GPUs

    def cost(reserved):
        d = need - reserved[..., None]
        return (reserved + jnp.mean(jnp.maximum(kappa[:, None, None] * d, nu[:, None, None] * d), -1)).sum(-1)

    def dual_value(mu, reserved):
        k = kappa[:, None, None] + mu[:, None, :]
        d = need - reserved[..., None]
        pools = reserved + jnp.mean(jnp.maximum(k * d, nu[:, None, None] * d), -1)
        return pools.sum(-1) - jnp.mean(mu * cap, -1)

    def fits(reserved):
        return jnp.all(on_demand_gpus(need, reserved) <= cap * (1.0 + 1e-12) + 1e-9, -1)

    def toward(reserved, lift):
        """``reserved + s · lift`` with the least common ``s`` in [0, 1] per type that fits (1 if none)."""
        def bisect(_, ab):
            a, b = ab
            mid = 0.5 * (a + b)
            ok = fits(reserved + mid[:, None] * lift)
            return jnp.where(ok, a, mid), jnp.where(ok, mid, b)

        a, b = jax.lax.fori_loop(0, RAISE_BISECTION_STEPS, bisect, (jnp.zeros(G, need.dtype), jnp.ones(G, need.dtype)))
        b = jnp.where(fits(reserved), 0.0, b)
        return reserved + b[:, None] * lift

    def raise_within(reserved):
        over = on_demand_gpus(need, reserved) > cap  # (G, T)
        lift = jnp.max(jnp.where(over[:, None, :], need - reserved[..., None], 0.0), -1)  # (G, P)
        return jnp.minimum(toward(reserved, lift), top)

    scale = jnp.maximum(kappa, 1.0)

    def price_step(k, c):
        """An adaptive step of the caps' prices (and the dual's bookkeeping)."""
        mu, size, sign, best_r, best_cost, best_mu, best_dual, mean_r = c
        r = reserve_level_periods(need, kappa[:, None, None] + mu[:, None, :], nu[:, None])
        excess = on_demand_gpus(need, r) - cap
        value = dual_value(mu, r)
        up = value > best_dual
        s = jnp.sign(excess)
        size = jnp.where(s * sign > 0, size * PRICE_GROW, jnp.where(s * sign < 0, size * PRICE_SHRINK, size))
        mu_next = jnp.maximum(mu + size * jnp.clip(excess / jnp.maximum(jnp.abs(excess).max(-1, keepdims=True), 1e-12), -1.0, 1.0), 0.0)
        return CapCarry(mu_next, size, s, best_r, best_cost, jnp.where(up[:, None], mu, best_mu),
                        jnp.maximum(value, best_dual), mean_r + (r - mean_r) / (k + 1.0)), r

    def step(k, c):
        """A price step, with the reserves it brackets made feasible (the last iterations only)."""
        mu, size = c.mu, c.size
        c, r = price_step(k, c)
        best_r, best_cost, mean_r = c.best_r, c.best_cost, c.mean_r
        # the reserves optimal at prices within one step of μ bracket the LP's when μ is near μ*:
        # split the difference as the caps ask (the tie-break complementary slackness needs)
        lo = reserve_level_periods(need, kappa[:, None, None] + jnp.maximum(mu - size, 0.0)[:, None, :], nu[:, None])
        hi = reserve_level_periods(need, kappa[:, None, None] + (mu + size)[:, None, :], nu[:, None])
        cands = jnp.stack([raise_within(r), raise_within(mean_r), raise_within(toward(lo, jnp.maximum(hi - lo, 0.0)))])
        costs = jax.vmap(cost)(cands)
        pick = jnp.argmin(costs, 0)
        feasible = jnp.take_along_axis(cands, pick[None, :, None], 0)[0]
        c_new = jnp.min(costs, 0)
        better = c_new < best_cost
        return c._replace(best_r=jnp.where(better[:, None], feasible, best_r), best_cost=jnp.minimum(c_new, best_cost))

    if start is None:
        mu0, size0 = jnp.zeros((G, T), need.dtype), PRICE_STEP0
    else:  # a warm start (the prices at nearby needs): smaller first steps
        mu0, size0 = jnp.maximum(jax.lax.stop_gradient(jnp.asarray(start, need.dtype)), 0.0), PRICE_WARM_STEP0
    init = CapCarry(mu0, size0 * scale[:, None] * jnp.ones((G, T), need.dtype), jnp.zeros((G, T), need.dtype), top,
                    cost(top), mu0, jnp.full((G,), -jnp.inf, need.dtype), jnp.zeros((G, P), need.dtype))
    tail = min(tail, iters)
    c = jax.lax.fori_loop(0, iters - tail, lambda k, c: price_step(k, c)[0], init)
    c = jax.lax.fori_loop(iters - tail, iters, step, c)
    best_r, best_mu = c.best_r, c.best_mu
    # lowering a pool's reserve towards its own optimum (where the caps leave room) only saves:
    # first towards the lowest reserve optimal at the best prices (the Lagrangian is flat there, so
    # each GPU of room used is the caps' price saved), then towards its optimum without caps
    priced = reserve_level_periods(need, kappa[:, None, None] + best_mu[:, None, :], nu[:, None])
    alone = reserve_level(need, kappa[:, None], nu[:, None])

    def lower(goal):
        def one(i, r):
            p = i % P
            others = on_demand_gpus(need, r) - jnp.maximum(need[:, p] - r[:, p, None], 0.0)
            floor = jnp.max(need[:, p] - (cap - others), -1)
            return r.at[:, p].set(jnp.clip(jnp.maximum(goal[:, p], floor), 0.0, r[:, p]))
        return one

    best_r = jax.lax.fori_loop(0, LOWER_SWEEPS * P, lower(priced), best_r)
    best_r = jax.lax.fori_loop(0, LOWER_SWEEPS * P, lower(alone), best_r)
    return best_r, best_mu
