"""Solution → tables: the pricing plan (one row per segment × model) and the fleet (one per pool).

pandas lives here, at the edge; every number is converted to float64 and rounded so no float32
noise reaches an export.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from kernels.capacity import charge_weights

from optimizer import aot
from optimizer import economics as econ
from optimizer.economics import HOURS_PER_DAY
from optimizer.objective import Breakdown
from optimizer.errors import SolverFailure
from optimizer.problem import NO_CAP, PRICE_BOUND_TOL, Labels, Problem


class TableArrays(NamedTuple):
    """The pool arithmetic every table of a plan needs (host-side NumPy, float64)."""

    peak_f: np.ndarray  # (S, T) peak load per unit of mean load (econ.period_weights)
    daily_need: np.ndarray  # (G, J, K, T) GPUs each period's mean load needs (batch water-filled)
    kappa: np.ndarray  # (G, 1, 1) on-demand / reserved rent
    nu: np.ndarray  # (G, 1, 1) idle value / reserved rent
    share: np.ndarray  # (S, J, K, G, T) each flow's share of its pool's GPUs per period
    weight: np.ndarray  # (G, J, K, T) the pools' charge weights (subgradient of the load-duration cost)
    pool_cost: np.ndarray  # (G, J, K) USD/day
    busy: np.ndarray  # (G, J, K, T) GPUs busy with the load that sizes each period (``share``'s total)


_LAST: list = []  # [(prob, breakdown, TableArrays)] of the latest plan: its tables share one call


def _table_args(prob: Problem, work, period_gpus, reserved) -> tuple:
    return prob, np.asarray(work, float), np.asarray(period_gpus, float), np.asarray(reserved, float)


def prepare_tables(prob: Problem) -> None:
    """Compile (or load) the tables' program ahead, e.g. in the background while the solve runs."""
    G, J, K = np.shape(prob.tp)
    S, T = np.shape(prob.window)
    args = _table_args(prob, np.zeros((S, J, K, G)), np.zeros((G, J, K, T)), np.zeros((G, J, K)))
    aot.exported("plan_tables", _table_arrays, args, quick=True)


def table_arrays(prob: Problem, b: Breakdown) -> TableArrays:
    """:class:`TableArrays` of plan ``b``: one compiled program (stored by :mod:`optimizer.aot`, so
    a new process neither traces nor compiles it; eager JAX operations would each compile)."""
    if _LAST and _LAST[0][0] is prob and _LAST[0][1] is b:
        return _LAST[0][2]
    args = _table_args(prob, b.work, b.period_gpus, b.reserved)
    program = aot.exported("plan_tables", _table_arrays, args, quick=True)
    out = TableArrays(*(np.asarray(x, float) for x in program(*args)))
    _LAST[:] = [(prob, b, out)]
    return out


def _r(x, nd=4):
    return float(np.round(float(x), nd))


def _main_layout(prob: Problem, labels: Labels, work: np.ndarray, g: int, j: int, k: int):
    """The layout carrying most of pool (g, j, k)'s work, and every layout it uses."""
    dep = np.asarray(prob.deployment, float)[:, j, k, g]  # (S,)
    w = work[:, j, k, g]
    used = {}
    for s in range(len(w)):
        lay = labels.layout_at(g, j, k, dep[s])
        if lay is not None and w[s] > 0:
            used[lay] = used.get(lay, 0.0) + w[s]
    if not used:
        return None, []
    return max(used, key=used.get), sorted(used, key=used.get, reverse=True)


def fleet_table(prob: Problem, labels: Labels, b: Breakdown) -> pd.DataFrame:
    """One row per pool with GPUs: its deployment, GPUs (prefill / decode), replicas, cost, utilisation.

    ``peak_utilization`` is the busy share of the pool's GPUs in its busiest period (the interactive
    peak, or the period's mean load with the batch placed there, whichever sized the pool: at most the
    fleet's cap of that kind; below it by the rounding slack of whole replicas), like the plan rows';
    ``daily_utilization`` its mean load over the day on those GPUs."""
    gpus, rep = np.asarray(b.gpus, float), np.asarray(prob.tp, float)
    daily = np.asarray(b.daily_load, float)
    price = np.asarray(prob.usd_per_gpu_hour, float)
    work = np.asarray(b.work, float)
    pre = np.asarray(prob.prefill_share, float)
    per_period = np.asarray(b.period_gpus, float)  # (G, J, K, T)
    reserved = np.asarray(b.reserved, float)
    arrays = table_arrays(prob, b)
    pool_cost, peak_gpus = arrays.pool_cost, per_period.max(-1)
    peak_util = np.where(peak_gpus > 0, at_busiest(arrays.busy, per_period) / np.maximum(peak_gpus, 1e-300), 0.0)
    hours = HOURS_PER_DAY / per_period.shape[-1]  # per period, scaled to a day
    on_demand_h = np.maximum(per_period - reserved[..., None], 0.0).sum(-1) * hours
    od_rate = price * np.asarray(prob.on_demand_ratio, float)
    rows = []
    for (g, j, k), n in np.ndenumerate(gpus):
        if n <= 1e-6:
            continue
        main, used = _main_layout(prob, labels, work, g, j, k)
        w = work[:, j, k, g]
        share = float((w * pre[:, j, k, g]).sum() / max(w.sum(), 1e-300))
        disagg = main is not None and main.disaggregated
        rows.append({
            "gpu": labels.gpus[g], "model": labels.models[j], "precision": labels.precisions[k],
            "deployment": main.label() if main else "", "other_deployments": "; ".join(x.label() for x in used[1:]),
            "replica_gpus": int(rep[g, j, k]), "nodes_per_replica": main.nodes_of(labels.gpus_per_node[g]) if main else 0,
            "tp": main.tp if main else 0, "dp": main.dp if main else 0, "ep": main.ep if main else 0,
            "disaggregated": bool(disagg), "speculation": f"MTP-{main.spec_k}" if main and main.spec_k else "none",
            "replicas": _r(n / max(rep[g, j, k], 1), 3), "gpus": _r(n, 3),
            "prefill_gpus": _r(n * share, 3) if disagg else 0.0, "decode_gpus": _r(n * (1 - share), 3) if disagg else 0.0,
            "reserved_gpus": _r(reserved[g, j, k], 3), "mean_gpus": _r(per_period[g, j, k].mean(), 3),
            "on_demand_gpu_hours_per_day": _r(on_demand_h[g, j, k], 2),
            "usd_per_gpu_hour": _r(price[g], 4),
            "on_demand_usd_per_gpu_hour": _r(od_rate[g], 4) if od_rate[g] < 1e5 * max(price[g], 1e-9) else None,
            "cost_usd_per_day": _r(pool_cost[g, j, k], 2),
            "peak_utilization": _r(peak_util[g, j, k], 4),
            "daily_utilization": _r(daily[g, j, k] / n, 4),
        })
    return pd.DataFrame(rows, columns=FLEET_COLUMNS)


FLEET_COLUMNS = ["gpu", "model", "precision", "deployment", "other_deployments", "replica_gpus", "nodes_per_replica",
                 "tp", "dp", "ep", "disaggregated", "speculation", "replicas", "gpus", "prefill_gpus", "decode_gpus",
                 "reserved_gpus", "mean_gpus", "on_demand_gpu_hours_per_day", "usd_per_gpu_hour",
                 "on_demand_usd_per_gpu_hour", "cost_usd_per_day", "peak_utilization", "daily_utilization"]


def fleet_hourly_table(prob: Problem, labels: Labels, b: Breakdown, hours_per_period: float) -> pd.DataFrame:
    """One row per (period, pool with GPUs): GPUs run, of which reserved and on-demand, busy GPUs,
    utilisation and cost of the period (USD, scaled so the periods of a cycle sum to the cost per day)."""
    per_period = np.asarray(b.period_gpus, float)
    T = per_period.shape[-1]
    reserved = np.asarray(b.reserved, float)
    arrays = table_arrays(prob, b)
    busy = arrays.daily_need * float(prob.daily_utilization)
    rent_day = np.asarray(econ.usd_per_gpu_day(prob, np), float)
    kappa, nu = arrays.kappa, arrays.nu
    d = per_period - reserved[..., None]
    cost = rent_day[:, None, None, None] / T * (reserved[..., None] + np.maximum(kappa[..., None] * d, nu[..., None] * d))
    rows = []
    for (g, j, k), n in np.ndenumerate(np.asarray(b.gpus, float)):
        if n <= 1e-6:
            continue
        for t in range(T):
            run = per_period[g, j, k, t]
            rows.append({"period": t, "start_hour": _r(t * hours_per_period, 3), "gpu": labels.gpus[g],
                         "model": labels.models[j], "precision": labels.precisions[k], "gpus": _r(run, 3),
                         "reserved_gpus": _r(min(reserved[g, j, k], run), 3),
                         "idle_reserved_gpus": _r(max(reserved[g, j, k] - run, 0.0), 3),
                         "on_demand_gpus": _r(max(run - reserved[g, j, k], 0.0), 3),
                         "busy_gpus": _r(busy[g, j, k, t], 3),
                         "utilization": _r(busy[g, j, k, t] / run, 4) if run > 0 else 0.0,
                         "cost_usd": _r(cost[g, j, k, t], 2)})
    return pd.DataFrame(rows, columns=["period", "start_hour", "gpu", "model", "precision", "gpus", "reserved_gpus",
                                       "idle_reserved_gpus", "on_demand_gpus", "busy_gpus", "utilization", "cost_usd"])


def reserved_commitment(prob: Problem, labels: Labels, b: Breakdown) -> pd.DataFrame:
    """The headline capacity decision: per GPU type, GPUs to reserve (paid around the clock), the
    peak and mean GPUs run, on-demand GPU-hours per day and the cost per day."""
    per_period = np.asarray(b.period_gpus, float)
    reserved = np.asarray(b.reserved, float)
    pool_cost = table_arrays(prob, b).pool_cost
    hours = HOURS_PER_DAY / per_period.shape[-1]
    by_type = per_period.sum((1, 2))  # (G, T)
    on_demand = econ.on_demand_per_type(per_period, reserved)  # (G, T)
    capped = econ.has_on_demand_caps(prob)
    caps = np.asarray(prob.on_demand_cap, float) if capped else None
    rows = []
    for g, name in enumerate(labels.gpus):
        if by_type[g].max() <= 1e-6:
            continue
        row = {"gpu": name, "reserved_gpus": _r(reserved[g].sum(), 3), "peak_gpus": _r(by_type[g].max(), 3),
               "mean_gpus": _r(by_type[g].mean(), 3), "peak_on_demand_gpus": _r(on_demand[g].max(), 3),
               "on_demand_gpu_hours_per_day": _r(on_demand[g].sum() * hours, 2),
               "cost_usd_per_day": _r(pool_cost[g].sum(), 2)}
        if capped:  # the cap (its tightest period) and the hours in which it binds
            limited = caps[g] < NO_CAP / 10
            row["on_demand_cap_gpus"] = _r(caps[g].min(), 3) if limited.any() else np.nan
            row["hours_at_on_demand_cap"] = (float((limited & (on_demand[g] >= caps[g] * (1 - 1e-6) - 1e-9)).sum() * hours)
                                             if limited.any() else 0.0)
        rows.append(row)
    columns = ["gpu", "reserved_gpus", "peak_gpus", "mean_gpus", "peak_on_demand_gpus", "on_demand_gpu_hours_per_day",
               "cost_usd_per_day"] + (["on_demand_cap_gpus", "hours_at_on_demand_cap"] if capped else [])
    return pd.DataFrame(rows, columns=columns)


def check_on_demand_caps(prob: Problem, labels: Labels, b: Breakdown) -> None:
    """Raise :class:`~optimizer.errors.SolverFailure` where a plan's on-demand GPUs of a type exceed
    its cap in some period (the reserves are chosen within the caps, so this guards the export)."""
    if not econ.has_on_demand_caps(prob):
        return
    on_demand = econ.on_demand_per_type(np.asarray(b.period_gpus, float), np.asarray(b.reserved, float))
    caps = np.asarray(prob.on_demand_cap, float)
    over = on_demand > caps * (1 + 1e-6) + 1e-6
    if over.any():
        g, t = map(int, np.argwhere(over)[0])
        raise SolverFailure(f"the plan runs {on_demand[g, t]:.4g} on-demand {labels.gpus[g]} GPUs in period {t}, "
                            f"over fleet.on_demand_cap.{labels.gpus[g]} ({caps[g, t]:.4g} in that period); not exported")


def plan_table(prob: Problem, labels: Labels, b: Breakdown) -> pd.DataFrame:
    """One row per offered (segment, model): prices, volumes, revenue, mix, quality, GPUs, margin.

    GPU cost is attributed the peak-load way (ECONOMICS.md §2.7), period by period: each pool's
    cost per day is ``Σ_t π_t n_t`` (``π``: the reserved/on-demand cost's weight of period t, a
    subgradient of the load-duration cost; ``n_t``: the GPUs it runs in period t), and each period's
    GPUs go to the loads that need them — to the interactive flows by their peak load where the
    interactive peak binds, and by their mean load plus the batch placed there where the period's
    mean load binds (batch riding in spare room pays nothing). Rounding slack of an integer fleet
    is shared pro rata. A row's ``gpus`` are its share of its pools' GPUs in their busiest period,
    and its ``peak_utilization`` the share of those GPUs its load keeps busy then (at most the
    fleet's ``peak_utilization`` or ``daily_utilization`` cap, whichever sized the pool).
    """
    dp = prob.demand
    offer = np.asarray(dp.offer_mask)
    work = np.asarray(b.work, float)  # (S, J, K, G) GPU-s/s
    alloc_cost, alloc_gpus, alloc_busy = flow_allocation(prob, b)  # (S, J, K, G) USD/day, GPUs attributed, busy
    mu = np.asarray(b.price_multiplier, float)
    reqs = np.asarray(b.requests_per_day, float)
    rev = np.asarray(b.revenue, float)
    mix = np.asarray(b.mix, float)
    q = np.asarray(b.quality, float)
    ref_reqs = np.asarray(dp.ref_demand, float)
    log_lo, log_hi = np.asarray(prob.log_mu_lo, float), np.asarray(prob.log_mu_hi, float)
    sheet = np.asarray(b.sheet, float)
    rows = []
    for s, seg in enumerate(labels.segments):
        isl, osl = labels.isl[s], labels.osl[s]
        for j, m in enumerate(labels.models):
            if offer[s, j] <= 0:
                continue
            r = labels.flow_product[s][j]
            gpu_alloc = alloc_gpus[s, j].sum(0)  # (G,)
            cost = float(alloc_cost[s, j].sum())
            tok_in, tok_out = reqs[s, j] * isl, reqs[s, j] * osl
            # the busy share of its GPUs where they are counted (their pools' busiest period), so within
            # the pools' utilisation caps like fleet.csv's (its own peak over GPUs counted in another
            # period, e.g. an off-peak batch-sized one, read above 1)
            peak_util = alloc_busy[s, j].sum() / gpu_alloc.sum() if gpu_alloc.sum() > 0 else 0.0
            mixes = ", ".join(f"{labels.precisions[k]} {mix[s, j, k]:.0%}" for k in np.argsort(-mix[s, j])
                              if mix[s, j, k] >= 0.005)
            by_type = ", ".join(f"{labels.gpus[g]} {gpu_alloc[g]:.1f}" for g in range(len(labels.gpus))
                                if gpu_alloc[g] >= 0.05)
            deps = []
            for (k, g) in zip(*np.nonzero(work[s, j] > 1e-9 * max(work[s, j].sum(), 1e-300))):
                lay = labels.layout_at(int(g), j, int(k), float(np.asarray(prob.deployment)[s, j, k, g]))
                if lay is not None:
                    deps.append(f"{labels.gpus[g]}/{labels.precisions[k]}: {lay.label()}")
            rows.append({
                "segment": seg, "tier": labels.tiers[s], "model": m, "product": labels.products[r],
                "hours": (labels.segment_hours[s] if labels.segment_hours else "") or "all day",
                "input_usd_per_mtok": _r(sheet[r, 0]), "cached_input_usd_per_mtok": _r(sheet[r, 1]),
                "output_usd_per_mtok": _r(sheet[r, 2]), "price_vs_reference": _r(mu[s, j], 4),
                "requests_per_day": _r(reqs[s, j], 1), "input_tokens_per_day": _r(tok_in, 0),
                "output_tokens_per_day": _r(tok_out, 0), "revenue_usd_per_day": _r(rev[s, j], 2),
                "precision_mix": mixes, "served_quality": _r(q[s, j], 4), "gpus_by_type": by_type,
                "deployments": "; ".join(deps),
                "gpus": _r(gpu_alloc.sum(), 3), "peak_utilization": _r(peak_util, 4),
                "cost_usd_per_day": _r(cost, 2),
                "cost_usd_per_mtok": _r(cost / max((tok_in + tok_out) / 1e6, 1e-300), 4) if tok_in + tok_out > 0 else 0.0,
                "margin_usd_per_day": _r(rev[s, j] - cost, 2),
                "margin_pct": _r(100 * (rev[s, j] - cost) / rev[s, j], 2) if rev[s, j] > 0 else 0.0,
                "price_at_bound": price_bound_note(mu[s, j], log_lo[r], log_hi[r]),
                "note": ("not served: no price covers the cost at this SLO (demand < 0.1 % of reference)"
                         if reqs[s, j] < 1e-3 * ref_reqs[s, j] else ""),
            })
    return pd.DataFrame(rows)



@jax.jit
def _table_arrays(prob: Problem, work, period_gpus, reserved):
    """Traced core of :func:`table_arrays` (the fields of :class:`TableArrays`, in order)."""
    peak_f, mean_f = econ.period_weights(prob)
    peak_need, daily_need = econ.period_needs(work, prob)
    is_batch = jnp.asarray(prob.is_batch)
    batch = jnp.einsum("sjkg->gjk", work * is_batch[:, None, None, None])
    placed = daily_need * prob.daily_utilization - jnp.einsum("sjkg,st->gjkt", work, mean_f)  # (G, J, K, T)
    per_batch = jnp.where(batch[..., None] > 0, placed / jnp.maximum(batch[..., None], 1e-300), 0.0)
    peak_c = jnp.einsum("sjkg,st->sjkgt", work, peak_f)
    daily_c = (jnp.einsum("sjkg,st->sjkgt", work, mean_f)
               + (work * is_batch[:, None, None, None])[..., None] * jnp.transpose(per_batch, (1, 2, 0, 3))[None])
    peak_binds = jnp.transpose(peak_need >= daily_need, (1, 2, 0, 3))[None]
    contrib = jnp.where(peak_binds, peak_c, daily_c)
    total = contrib.sum(0, keepdims=True)
    by_work = work / jnp.maximum(work.sum(0, keepdims=True), 1e-300)  # periods without load: by mean load
    share = jnp.where(total > 0, contrib / jnp.maximum(total, 1e-300), by_work[..., None])
    kappa, nu = econ.pool_ratios(prob)
    if econ.has_on_demand_caps(prob):  # a capped period's on-demand GPU-hour costs its cap's price too
        weight = charge_weights(period_gpus, kappa[..., None] + econ.capped_pools(period_gpus, prob)[1][:, None, None],
                                nu)
    else:
        weight = charge_weights(period_gpus, kappa, nu)
    pool_cost = econ.cycle_fleet_cost_per_pool(period_gpus, prob, reserved)
    busy = jnp.transpose(total[0], (2, 0, 1, 3))  # (G, J, K, T)
    return peak_f, daily_need, kappa, nu, share, weight, pool_cost, busy


def at_busiest(x: np.ndarray, period_gpus: np.ndarray) -> np.ndarray:
    """(G, J, K) the value of ``x`` (G, J, K, T) in each pool's busiest period (most GPUs run: the
    period its GPUs are sized for)."""
    return np.take_along_axis(x, period_gpus.argmax(-1)[..., None], -1)[..., 0]


def flow_allocation(prob: Problem, b: Breakdown) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cost, gpus, busy)`` (S, J, K, G): USD/day of GPU cost attributed to each flow (they sum to
    the fleet's cost), each flow's share of its pools' GPUs in their busiest period, and the GPUs its
    load keeps busy there (its part of the load that sizes the pool in that period).

    Each flow's share of a pool's GPUs in a period is its share of the binding load there (peak or
    daily, the batch by where it was placed); a period carries the pool's cost in proportion to
    its charge weight × GPUs (the subgradient of the load-duration cost)."""
    arrays = table_arrays(prob, b)
    share, weight, pool_cost = arrays.share, arrays.weight, arrays.pool_cost
    need = np.asarray(b.period_gpus, float)
    value = weight * need  # reserved GPU-days per day carried by each period
    total = value.sum(-1, keepdims=True)
    from_pool = np.where(total > 0, value / np.maximum(total, 1e-300), 0.0)
    cost = (share * np.transpose(from_pool * pool_cost[..., None], (1, 2, 0, 3))[None]).sum(-1)
    top = need.argmax(-1)  # (G, J, K)
    at_top = np.take_along_axis(share, np.transpose(top, (1, 2, 0))[None, ..., None], -1)[..., 0]
    busy_top = at_busiest(arrays.busy, need)  # (G, J, K)
    return (cost, at_top * np.transpose(np.asarray(b.gpus, float), (1, 2, 0))[None],
            at_top * np.transpose(busy_top, (1, 2, 0))[None])


def price_bound_note(mu: float, log_lo: float, log_hi: float) -> str:
    """``floor (0.02x reference)`` / ``ceiling (...)`` when a price sits at its search bound, else ``""``:
    the optimum may lie beyond it (widen demand.segments.<s>.price_floor_ratio / price_ceiling_ratio)."""
    lm = np.log(max(float(mu), 1e-300))
    if lm <= log_lo + PRICE_BOUND_TOL:
        return f"floor ({np.exp(log_lo):.3g}x reference)"
    if lm >= log_hi - PRICE_BOUND_TOL:
        return f"ceiling ({np.exp(log_hi):.3g}x reference)"
    return ""


def loss_making(plan: pd.DataFrame) -> list[str]:
    """One line per plan row whose revenue does not cover the GPU cost attributed to it (the
    peak-load way), saying whether its product is shared with other segments (a shared price sheet
    may keep a losing buyer for the others' sake) or its own."""
    losing = plan[(plan["margin_usd_per_day"] < 0) & (plan["revenue_usd_per_day"] > 0)]
    buyers = plan.groupby("product")["segment"].nunique()
    return [f"{r.segment}/{r.model}: margin {r.margin_usd_per_day:,.0f} USD/day ({r.margin_pct:.1f} % of its revenue) "
            + (f"at product {r.product}, shared with {buyers[r.product] - 1} other segment(s)"
               if buyers[r.product] > 1 else f"at product {r.product}, its own")
            for r in losing.itertuples()]


def segment_summary(plan: pd.DataFrame) -> pd.DataFrame:
    """Revenue, cost and margin per segment, USD/day."""
    g = plan.groupby("segment", sort=False)[["revenue_usd_per_day", "cost_usd_per_day", "margin_usd_per_day"]].sum()
    g["margin_pct"] = (100 * g["margin_usd_per_day"] / g["revenue_usd_per_day"]).round(2)
    return g.round(2).reset_index()


