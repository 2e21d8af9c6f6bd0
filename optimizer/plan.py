"""Solution → tables: the pricing plan (one row per segment × model) and the fleet (one per pool).

pandas lives here, at the edge; every number is converted to float64 and rounded so no float32
noise reaches an export.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from optimizer import economics as econ
from optimizer.economics import HOURS_PER_DAY
from optimizer.objective import Breakdown
from optimizer.problem import PRICE_BOUND_TOL, Labels, Problem


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
    """One row per pool with GPUs: its deployment, GPUs (prefill / decode), replicas, cost, utilisation."""
    gpus, rep = np.asarray(b.gpus, float), np.asarray(prob.tp, float)
    peak, daily = np.asarray(b.peak_load, float), np.asarray(b.daily_load, float)
    price = np.asarray(prob.usd_per_gpu_hour, float)
    work = np.asarray(b.work, float)
    pre = np.asarray(prob.prefill_share, float)
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
            "usd_per_gpu_hour": _r(price[g], 4), "cost_usd_per_day": _r(n * price[g] * HOURS_PER_DAY, 2),
            "peak_utilization": _r(peak[g, j, k] / n, 4), "daily_utilization": _r(daily[g, j, k] / n, 4),
        })
    return pd.DataFrame(rows, columns=["gpu", "model", "precision", "deployment", "other_deployments", "replica_gpus",
                                       "nodes_per_replica", "tp", "dp", "ep", "disaggregated", "speculation",
                                       "replicas", "gpus", "prefill_gpus", "decode_gpus", "usd_per_gpu_hour",
                                       "cost_usd_per_day", "peak_utilization", "daily_utilization"])


def plan_table(prob: Problem, labels: Labels, b: Breakdown) -> pd.DataFrame:
    """One row per offered (segment, model): prices, volumes, revenue, mix, quality, GPUs, margin.

    GPU cost is attributed the peak-load way (ECONOMICS.md §2.7): each pool's GPUs that interactive
    traffic alone would need are shared by the interactive flows in proportion to their peak load;
    only the GPUs that batch traffic adds on top (its incremental capacity, usually little because
    it fills the off-peak valley) are charged to batch flows, in proportion to their load. Rounding
    slack of an integer fleet is shared pro rata.
    """
    dp = prob.demand
    offer = np.asarray(dp.offer_mask)
    work = np.asarray(b.work, float)  # (S, J, K, G) GPU-s/s
    gpus = np.asarray(b.gpus, float)  # (G, J, K)
    is_batch = np.asarray(prob.is_batch)
    kappa = np.asarray(prob.peak_to_mean, float)
    rp, rd = float(prob.peak_utilization), float(prob.daily_utilization)
    to_gjk = lambda x: np.transpose(x, (2, 0, 1))  # noqa: E731  (J, K, G) -> (G, J, K)
    w_int = work * (~is_batch)[:, None, None, None]
    w_bat = work * is_batch[:, None, None, None]
    peak, daily = econ.pool_loads(work, prob, np)
    need_int = np.maximum(peak / rp, to_gjk(w_int.sum(0)) / rd)
    need_all = np.maximum(peak / rp, daily / rd)
    slack = np.where(need_all > 0, gpus / np.maximum(need_all, 1e-300), 0.0)
    gpus_bat = (need_all - need_int) * slack
    gpus_int = gpus - gpus_bat
    peak_w = w_int * kappa[:, None, None, None]
    per_int = np.where(peak > 0, gpus_int / np.maximum(peak, 1e-300), 0.0)
    bat_load = to_gjk(w_bat.sum(0))
    per_bat = np.where(bat_load > 0, gpus_bat / np.maximum(bat_load, 1e-300), 0.0)
    alloc = peak_w * np.transpose(per_int, (1, 2, 0))[None] + w_bat * np.transpose(per_bat, (1, 2, 0))[None]
    price_h = np.asarray(prob.usd_per_gpu_hour, float)
    peak_mult = np.where(np.asarray(prob.is_batch), 0.0, np.asarray(prob.peak_to_mean, float))
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
            gpu_alloc = alloc[s, j].sum(0)  # (G,)
            cost = float((gpu_alloc * price_h * HOURS_PER_DAY).sum())
            tok_in, tok_out = reqs[s, j] * isl, reqs[s, j] * osl
            peak_util = (work[s, j].sum() * peak_mult[s] / max(gpu_alloc.sum(), 1e-300)) if gpu_alloc.sum() > 0 else 0.0
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


def price_bound_note(mu: float, log_lo: float, log_hi: float) -> str:
    """``floor (0.02x reference)`` / ``ceiling (...)`` when a price sits at its search bound, else ``""``:
    the optimum may lie beyond it (widen demand.segments.<s>.price_floor_ratio / price_ceiling_ratio)."""
    lm = np.log(max(float(mu), 1e-300))
    if lm <= log_lo + PRICE_BOUND_TOL:
        return f"floor ({np.exp(log_lo):.3g}x reference)"
    if lm >= log_hi - PRICE_BOUND_TOL:
        return f"ceiling ({np.exp(log_hi):.3g}x reference)"
    return ""


def segment_summary(plan: pd.DataFrame) -> pd.DataFrame:
    """Revenue, cost and margin per segment, USD/day."""
    g = plan.groupby("segment", sort=False)[["revenue_usd_per_day", "cost_usd_per_day", "margin_usd_per_day"]].sum()
    g["margin_pct"] = (100 * g["margin_usd_per_day"] / g["revenue_usd_per_day"]).round(2)
    return g.round(2).reset_index()


