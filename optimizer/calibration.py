"""Fit the roofline model's efficiency factors to measured throughput with Optax.

Fitted (few, physically meaningful; never one per row or per model):
  * achieved share of peak memory bandwidth ``η_bw``, of peak tensor FLOPS in decode ``η_fl`` and
    in prefill ``η_pf`` — one triple per GPU family present in the data (or one shared triple),
    each kept inside a physical range (``BW_EFF_RANGE``, ``FLOPS_EFF_RANGE``) by a scaled sigmoid;
  * the efficiency of routed-expert GEMMs relative to dense GEMMs ``η_moe`` (one for all families:
    grouped GEMMs with few rows per expert, routing and dispatch);
  * a fixed per-decode-step overhead ``t_0`` (scheduling, kernel launches), kept > 0 by exp;
  * the usable share of HBM for weights + KV ``u`` (runtime reserve, fragmentation), in
    (0.5, 0.98) by a scaled sigmoid — only when ``fit_mem_util`` is set.

Loss: mean squared log error ``mean((log pred − log measured)²)`` of offline throughput over the
cases that fit (a 20 % miss on a small model counts like one on a large model), plus the same error
of the inter-token latency of online-serving measurements at their Little's-law concurrency when
given. The latency term pins the per-step overhead and bandwidth efficiency at small batches, which
offline maximum-throughput runs alone cannot separate.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimizer.cases import CaseBatch, EfficiencyTable, LatencyBatch, efficiency_table, predict, predict_itl
from optimizer.schema import GPU_FAMILIES, EfficiencyConfig

MEM_UTIL_RANGE = (0.5, 0.98)
BW_EFF_RANGE = (0.2, 0.95)  # achievable HBM bandwidth tops out near 90-95 % of peak (STREAM-like copies)
FLOPS_EFF_RANGE = (0.02, 0.95)
MOE_EFF_RANGE = (0.05, 1.0)


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
                           jnp.exp(theta.log_overhead_s), _bounded(theta.mem_logit, MEM_UTIL_RANGE))


def from_table(table: EfficiencyTable) -> CalibParams:
    return CalibParams(_unbounded(table.bw_eff, BW_EFF_RANGE), _unbounded(table.flops_eff, FLOPS_EFF_RANGE),
                       _unbounded(table.prefill_flops_eff, FLOPS_EFF_RANGE),
                       _unbounded(table.moe_eff, MOE_EFF_RANGE),
                       jnp.log(jnp.maximum(table.step_overhead_s, 1e-6)),
                       _unbounded(table.mem_util, MEM_UTIL_RANGE))


def log_error_loss(theta: CalibParams, batch: CaseBatch, per_family: bool,
                   latency: LatencyBatch | None = None):
    """Mean squared log error of predicted vs measured throughput (+ ITL when given)."""
    table = to_table(theta, per_family)
    pred, fits = predict(batch, table)
    err = jnp.log(jnp.maximum(pred, 1e-9)) - jnp.log(batch.measured)
    w = fits.astype(err.dtype)
    loss = jnp.sum(w * err**2) / jnp.maximum(jnp.sum(w), 1.0)
    if latency is not None:
        itl = predict_itl(latency, table)
        loss = loss + jnp.mean((jnp.log(itl) - jnp.log(latency.measured_itl_s)) ** 2)
    return loss


def fit(batch: CaseBatch, start: EfficiencyConfig, per_family: bool = True, steps: int = 600,
        learning_rate: float = 0.05, fit_mem_util: bool = True,
        latency: LatencyBatch | None = None) -> tuple[EfficiencyConfig, dict[str, float]]:
    """Fit the efficiency factors to ``batch`` starting from ``start``.

    Adam with a cosine-decayed learning rate (a constant rate stalls; ECONOMICS.md §4.2), all
    steps in one ``lax.scan`` inside ``jit``.

    Returns:
      ``(fitted EfficiencyConfig, {"loss_before", "loss_after"})``. Families absent from the data
      use the ``default_*`` factors, set to the mean over the fitted families.
    """
    theta0 = from_table(efficiency_table(start))
    sched = optax.cosine_decay_schedule(learning_rate, steps, alpha=0.01)
    opt = optax.adam(sched)
    frozen = jnp.asarray(0.0 if fit_mem_util else 1.0)

    def loss(th):
        th = th._replace(mem_logit=frozen * jax.lax.stop_gradient(th.mem_logit) + (1 - frozen) * th.mem_logit)
        return log_error_loss(th, batch, per_family, latency)

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
    t = to_table(theta, per_family)
    present = set(np.asarray(batch.family).tolist())
    bw, fl, pf = dict(start.bw_eff), dict(start.flops_eff), dict(start.prefill_flops_eff)
    for i, fam in enumerate(GPU_FAMILIES):
        if i in present:
            bw[fam] = round(float(t.bw_eff[i]), 4)
            fl[fam] = round(float(t.flops_eff[i]), 4)
            pf[fam] = round(float(t.prefill_flops_eff[i]), 4)
    out = replace(start, bw_eff=bw, flops_eff=fl, prefill_flops_eff=pf,
                  moe_eff=round(float(t.moe_eff), 4),
                  step_overhead_ms=round(float(t.step_overhead_s) * 1000.0, 4),
                  mem_util=round(float(t.mem_util), 4) if fit_mem_util else start.mem_util)
    # Families absent from the data get the mean of the fitted families (stated in the source).
    idx = sorted(present)
    out = replace(out, default_bw_eff=round(float(jnp.mean(t.bw_eff[jnp.asarray(idx)])), 4),
                  default_flops_eff=round(float(jnp.mean(t.flops_eff[jnp.asarray(idx)])), 4),
                  default_prefill_flops_eff=round(float(jnp.mean(t.prefill_flops_eff[jnp.asarray(idx)])), 4))
    return out, {"loss_before": before, "loss_after": after}
