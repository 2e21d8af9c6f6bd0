"""Fit the roofline model's efficiency factors to measured throughput with Optax.

Fitted (few, physically meaningful; never one per row or per model):
  * achieved share of peak memory bandwidth ``η_bw``, of peak tensor FLOPS in decode ``η_fl`` and
    in prefill ``η_pf`` — one triple per GPU family present in the data (or one shared triple),
    each kept inside a physical range by a scaled sigmoid;
  * ``η_moe``: the rate grouped expert GEMMs reach relative to dense GEMMs (few rows per expert),
    in ``MOE_EFF_RANGE`` — it lowers achieved bandwidth and FLOPs, never multiplies the bytes moved;
  * the fixed times of a decode step: ``t_0`` per step (scheduling, sampling), ``t_layer`` per layer
    (kernel launches), ``t_moe`` more per MoE layer (router, top-k, permutation and grouped-GEMM
    launches) and ``α`` per collective (all-reduce, EP dispatch / combine);
  * ``λ``, the expert-parallel load imbalance (busiest / mean rank), in ``IMBALANCE_RANGE``;
  * the usable share of HBM for weights + KV ``u`` — only when ``fit_mem_util`` is set.

Loss: mean squared log error ``mean((log pred − log measured)²)`` of output tok/s per GPU, averaged
per regime so that both weigh equally: maximum throughput (``measured_throughput.csv``) and the
latency-bound regime (``measured_slo_throughput.csv``: fixed concurrency or a TPOT), plus the same
error of the inter-token latency of online-serving measurements at their Little's-law concurrency.
Only TensorRT-LLM-sourced tables are used.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimizer.cases import EfficiencyTable, LatencyBatch, efficiency_table, predict, predict_itl
from optimizer.schema import GPU_FAMILIES, EfficiencyConfig
from optimizer.runtime import require_float64

MEM_UTIL_RANGE = (0.5, 0.98)
BW_EFF_RANGE = (0.2, 0.95)  # achievable HBM bandwidth tops out near 90-95 % of peak (STREAM-like copies)
FLOPS_EFF_RANGE = (0.02, 0.95)
MOE_EFF_RANGE = (0.5, 1.0)  # ASSUMPTION: grouped GEMMs reach at least half the dense GEMM rate
IMBALANCE_RANGE = (1.0, 2.0)  # busiest / mean EP rank; 1 = perfect balance (EPLB-style balancing keeps it low)
LAYER_OVERHEAD_RANGE_S = (0.0, 200e-6)  # per layer per step
COLLECTIVE_LATENCY_RANGE_S = (0.5e-6, 50e-6)  # one small-message collective on NVLink / RDMA


def _bounded(x, lo_hi):
    lo, hi = lo_hi
    return lo + (hi - lo) * jax.nn.sigmoid(x)


def _unbounded(y, lo_hi):
    lo, hi = lo_hi
    return _logit(jnp.clip((y - lo) / (hi - lo), 1e-4, 1 - 1e-4))


class CalibParams(NamedTuple):
    """Unconstrained calibration parameters."""

    bw_logit: jnp.ndarray  # (n_family,) logit of η_bw
    flops_logit: jnp.ndarray  # (n_family,) logit of η_fl
    prefill_logit: jnp.ndarray  # (n_family,) logit of η_pf
    moe_logit: jnp.ndarray  # () logit of η_moe
    log_overhead_s: jnp.ndarray  # () log of t_0 in seconds
    mem_logit: jnp.ndarray  # () logit of the position of u in MEM_UTIL_RANGE
    layer_logit: jnp.ndarray  # () logit of t_layer in LAYER_OVERHEAD_RANGE_S
    moe_layer_logit: jnp.ndarray  # () logit of t_moe in LAYER_OVERHEAD_RANGE_S
    collective_logit: jnp.ndarray  # () logit of α in COLLECTIVE_LATENCY_RANGE_S
    imbalance_logit: jnp.ndarray  # () logit of λ in IMBALANCE_RANGE


def _logit(p):
    return jnp.log(p) - jnp.log1p(-p)


def to_table(theta: CalibParams, per_family: bool) -> EfficiencyTable:
    """Constrained efficiency table from unconstrained parameters."""
    bw = _bounded(theta.bw_logit, BW_EFF_RANGE)
    fl = _bounded(theta.flops_logit, FLOPS_EFF_RANGE)
    pf = _bounded(theta.prefill_logit, FLOPS_EFF_RANGE)
    if not per_family:
        bw, fl, pf = (jnp.full_like(x, x[0]) for x in (bw, fl, pf))
    return EfficiencyTable(bw, fl, pf, _bounded(theta.moe_logit, MOE_EFF_RANGE),
                           jnp.exp(theta.log_overhead_s), _bounded(theta.mem_logit, MEM_UTIL_RANGE),
                           _bounded(theta.layer_logit, LAYER_OVERHEAD_RANGE_S),
                           _bounded(theta.moe_layer_logit, LAYER_OVERHEAD_RANGE_S),
                           _bounded(theta.collective_logit, COLLECTIVE_LATENCY_RANGE_S),
                           _bounded(theta.imbalance_logit, IMBALANCE_RANGE))


def from_table(table: EfficiencyTable) -> CalibParams:
    return CalibParams(_unbounded(table.bw_eff, BW_EFF_RANGE), _unbounded(table.flops_eff, FLOPS_EFF_RANGE),
                       _unbounded(table.prefill_flops_eff, FLOPS_EFF_RANGE),
                       _unbounded(table.moe_eff, MOE_EFF_RANGE),
                       jnp.log(jnp.maximum(table.step_overhead_s, 1e-6)),
                       _unbounded(table.mem_util, MEM_UTIL_RANGE),
                       _unbounded(table.layer_overhead_s, LAYER_OVERHEAD_RANGE_S),
                       _unbounded(table.moe_layer_overhead_s, LAYER_OVERHEAD_RANGE_S),
                       _unbounded(table.collective_latency_s, COLLECTIVE_LATENCY_RANGE_S),
                       _unbounded(table.ep_imbalance, IMBALANCE_RANGE))


def regime_losses(theta: CalibParams, regimes: dict, per_family: bool,
                  latency: LatencyBatch | None = None) -> dict:
    """Mean squared log error per regime name (``regimes``: name -> {mode: CaseBatch}) and ``latency``."""
    table = to_table(theta, per_family)
    out = {}
    for name, batches in regimes.items():
        total, count = 0.0, 0.0
        for mode, batch in batches.items():
            pred, _, _, fits = predict(batch, table, mode)
            err = jnp.log(jnp.maximum(pred, 1e-9)) - jnp.log(batch.measured)
            w = (fits & jnp.isfinite(batch.measured)).astype(err.dtype)
            total = total + jnp.sum(w * jnp.where(w > 0, err, 0.0) ** 2)
            count = count + jnp.sum(w)
        out[name] = total / jnp.maximum(count, 1.0)
    if latency is not None:
        itl = predict_itl(latency, table)
        out["online_latency"] = jnp.mean((jnp.log(itl) - jnp.log(latency.measured_itl_s)) ** 2)
    return out


def log_error_loss(theta: CalibParams, regimes: dict, per_family: bool, latency: LatencyBatch | None = None):
    """Sum over regimes of their mean squared log errors (each regime weighs the same)."""
    return sum(regime_losses(theta, regimes, per_family, latency).values())


def fit(regimes: dict, start: EfficiencyConfig, per_family: bool = True, steps: int = 600,
        learning_rate: float = 0.05, fit_mem_util: bool = True,
        latency: LatencyBatch | None = None) -> tuple[EfficiencyConfig, dict[str, float]]:
    """Fit the efficiency factors to ``regimes`` (name -> {mode: CaseBatch}) starting from ``start``.

    Adam with a cosine-decayed learning rate (a constant rate stalls; ECONOMICS.md §4.2), all
    steps in one ``lax.scan`` inside ``jit``.

    Returns:
      ``(fitted EfficiencyConfig, {"loss_before", "loss_after"})``. Families absent from the data
      use the ``default_*`` factors, set to the mean over the fitted families.
    """
    require_float64("tokenmargin-calibrate")
    theta0 = from_table(efficiency_table(start))
    sched = optax.cosine_decay_schedule(learning_rate, steps, alpha=0.01)
    opt = optax.adam(sched)
    frozen = jnp.asarray(0.0 if fit_mem_util else 1.0)

    def loss(th):
        th = th._replace(mem_logit=frozen * jax.lax.stop_gradient(th.mem_logit) + (1 - frozen) * th.mem_logit)
        return log_error_loss(th, regimes, per_family, latency)

    @jax.jit
    def run(theta):
        def step(carry, _):
            th, st = carry
            val, g = jax.value_and_grad(loss)(th)
            upd, st = opt.update(g, st, th)
            return (optax.apply_updates(th, upd), st), val
        (th, _), losses = jax.lax.scan(step, (theta, opt.init(theta)), None, length=steps)
        return th, losses

    theta, _ = run(theta0)
    before, after = float(loss(theta0)), float(loss(theta))
    parts = {f"loss_{k}": float(v) for k, v in regime_losses(theta, regimes, per_family, latency).items()}
    t = to_table(theta, per_family)
    present = {int(f) for batches in regimes.values() for b in batches.values() for f in np.asarray(b.family)}
    bw, fl, pf = dict(start.bw_eff), dict(start.flops_eff), dict(start.prefill_flops_eff)
    for i, fam in enumerate(GPU_FAMILIES):
        if i in present:
            bw[fam] = round(float(t.bw_eff[i]), 4)
            fl[fam] = round(float(t.flops_eff[i]), 4)
            pf[fam] = round(float(t.prefill_flops_eff[i]), 4)
    out = replace(start, bw_eff=bw, flops_eff=fl, prefill_flops_eff=pf,
                  moe_eff=round(float(t.moe_eff), 4),
                  step_overhead_ms=round(float(t.step_overhead_s) * 1000.0, 4),
                  layer_overhead_us=round(float(t.layer_overhead_s) * 1e6, 3),
                  moe_layer_overhead_us=round(float(t.moe_layer_overhead_s) * 1e6, 3),
                  collective_latency_us=round(float(t.collective_latency_s) * 1e6, 3),
                  ep_imbalance=round(float(t.ep_imbalance), 4),
                  mem_util=round(float(t.mem_util), 4) if fit_mem_util else start.mem_util)
    # Families absent from the data get the mean of the fitted families (stated in the source).
    idx = sorted(present)
    out = replace(out, default_bw_eff=round(float(jnp.mean(t.bw_eff[jnp.asarray(idx)])), 4),
                  default_flops_eff=round(float(jnp.mean(t.flops_eff[jnp.asarray(idx)])), 4),
                  default_prefill_flops_eff=round(float(jnp.mean(t.prefill_flops_eff[jnp.asarray(idx)])), 4))
    return out, {"loss_before": before, "loss_after": after, **parts}
