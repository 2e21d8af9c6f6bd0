"""Fit the roofline model's efficiency factors to measured throughput with Optax.

Fitted (few, physically meaningful, never one per row or per model):
  * achieved share of peak memory bandwidth ``η_bw`` and of peak tensor FLOPS ``η_fl`` — one pair
    per GPU family present in the data (or one shared pair), kept in (0, 1) by a sigmoid;
  * a fixed per-decode-step overhead ``t_0`` (scheduling, kernel launches), kept > 0 by exp.
The usable HBM share ``mem_util`` stays at its configured value.

Loss: mean squared log error ``mean((log pred − log measured)²)`` over the cases that fit, so a
20 % miss on a small model counts like a 20 % miss on a large one.
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimizer.cases import CaseBatch, EfficiencyTable, efficiency_table, predict
from optimizer.schema import GPU_FAMILIES, EfficiencyConfig


class CalibParams(NamedTuple):
    """Unconstrained calibration parameters."""

    bw_logit: jnp.ndarray  # (n_family,) logit of η_bw
    flops_logit: jnp.ndarray  # (n_family,) logit of η_fl
    log_overhead_s: jnp.ndarray  # () log of t_0 in seconds


def _to_table(theta: CalibParams, mem_util, per_family: bool) -> EfficiencyTable:
    bw, fl = jax.nn.sigmoid(theta.bw_logit), jax.nn.sigmoid(theta.flops_logit)
    if not per_family:
        bw, fl = jnp.full_like(bw, bw[0]), jnp.full_like(fl, fl[0])
    return EfficiencyTable(bw, fl, jnp.exp(theta.log_overhead_s), mem_util)


def log_error_loss(theta: CalibParams, batch: CaseBatch, mem_util, per_family: bool):
    """Mean squared log error of predicted vs measured throughput over fitting cases."""
    pred, fits = predict(batch, _to_table(theta, mem_util, per_family))
    err = jnp.log(jnp.maximum(pred, 1e-9)) - jnp.log(batch.measured)
    w = fits.astype(err.dtype)
    return jnp.sum(w * err**2) / jnp.maximum(jnp.sum(w), 1.0)


def fit(batch: CaseBatch, start: EfficiencyConfig, per_family: bool = True, steps: int = 600,
        learning_rate: float = 0.05) -> tuple[EfficiencyConfig, dict[str, float]]:
    """Fit the efficiency factors to ``batch`` starting from ``start``.

    Adam with a cosine-decayed learning rate (a constant rate stalls; ECONOMICS.md §4.2), all
    steps in one ``lax.scan`` inside ``jit``.

    Returns:
      ``(fitted EfficiencyConfig, {"loss_before", "loss_after"})``. Families absent from the data
      keep their starting values.
    """
    table = efficiency_table(start)
    logit = lambda p: jnp.log(p) - jnp.log1p(-p)  # noqa: E731
    theta0 = CalibParams(logit(table.bw_eff), logit(table.flops_eff), jnp.log(table.step_overhead_s))
    sched = optax.cosine_decay_schedule(learning_rate, steps, alpha=0.01)
    opt = optax.adam(sched)
    loss = lambda th: log_error_loss(th, batch, table.mem_util, per_family)  # noqa: E731

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
    fitted = _to_table(theta, table.mem_util, per_family)
    present = set(np.asarray(batch.family).tolist())
    bw = dict(start.bw_eff)
    fl = dict(start.flops_eff)
    for i, fam in enumerate(GPU_FAMILIES):
        if i in present:
            bw[fam] = round(float(fitted.bw_eff[i]), 4)
            fl[fam] = round(float(fitted.flops_eff[i]), 4)
    out = replace(start, bw_eff=bw, flops_eff=fl,
                  step_overhead_ms=round(float(fitted.step_overhead_s) * 1000.0, 4))
    if not per_family:
        out = replace(out, default_bw_eff=round(float(fitted.bw_eff[0]), 4),
                      default_flops_eff=round(float(fitted.flops_eff[0]), 4))
    return out, {"loss_before": before, "loss_after": after}
