"""Demand models: multinomial logit with an outside option, and constant elasticity.

Shapes: ``S`` segments × ``J`` models. Prices are per **request** of the segment's mean shape
(input, cached input and output tokens billed at their own prices), so that one number carries
the whole price level of an offer [ECONOMICS.md §1.7 item 1].

Logit (latent-class MNL, one class per segment) [Berry 1994; Train 2009 ch. 3; ECONOMICS.md §1.3]::

    v_sj = α_sj − β_s · p_sj + γ_s · 100 · (Q_sj − Q_ref) − δ_s · (L_s − L_ref,s)
    D_sj = M_s · exp(v_sj) / (1 + Σ_j' exp(v_sj'))

Constant elasticity [ECONOMICS.md §1.1]::

    D_sj = D_ref,sj · (p_sj / p_ref,sj)^(−ε_s) · exp(γ_s · 100 · (Q_sj − Q_ref) − δ_s · (L_s − L_ref,s))

Parameters are set so that demand at the reference price, quality and latency equals the
reference volume (:func:`calibrate_logit`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from kernels.smooth import safe_log


class DemandParams(NamedTuple):
    """Demand parameters of every (segment, model) offer."""

    ref_demand: jnp.ndarray  # (S, J) requests/day at reference price, quality, latency (0 if not offered)
    ref_price: jnp.ndarray  # (S, J) USD per request at reference list prices
    offer_mask: jnp.ndarray  # (S, J) 1.0 where the model is offered to the segment
    is_logit: jnp.ndarray  # (S,) bool: logit (True) or constant elasticity (False)
    elasticity: jnp.ndarray  # (S,) own-price elasticity at reference (> 0; > 1 for CE)
    market: jnp.ndarray  # (S,) logit market size, requests/day
    beta: jnp.ndarray  # (S,) logit price coefficient, 1 / USD per request
    alpha: jnp.ndarray  # (S, J) logit constants
    quality_sens: jnp.ndarray  # (S,) per percentage point of quality retention
    latency_sens: jnp.ndarray  # (S,) per ms of TPOT
    ref_quality: jnp.ndarray  # (S, J) quality retention at which the reference was observed
    ref_latency_ms: jnp.ndarray  # (S,) TPOT at which the reference was observed, ms


def calibrate_logit(ref_price: jnp.ndarray, volume_share: jnp.ndarray, offer_mask: jnp.ndarray,
                    ref_volume: jnp.ndarray, market_share: jnp.ndarray, elasticity: jnp.ndarray):
    """Logit (market, beta, alpha) reproducing the reference volumes and elasticity.

    With the provider holding share ``σ`` of the market at reference, split ``w_j`` over models:
    ``M = V/σ``, ``β = ε / (p̄ (1 − σ))`` (so the aggregate own-price elasticity ``β p̄ (1 − σ)``
    equals ``ε``) and ``α_j = log(σ w_j / (1 − σ)) + β p_ref,j``.

    Args:
      ref_price: (S, J) USD per request. volume_share: (S, J) normalised over offered models.
      offer_mask: (S, J). ref_volume: (S,) requests/day. market_share: (S,) in (0, 1).
      elasticity: (S,) > 0.

    Returns:
      ``(market (S,), beta (S,), alpha (S, J))``.
    """
    w = volume_share * offer_mask
    w = w / jnp.maximum(w.sum(-1, keepdims=True), 1e-30)
    pbar = (w * ref_price).sum(-1)
    market = ref_volume / market_share
    beta = elasticity / (pbar * (1.0 - market_share))
    alpha = safe_log(market_share[:, None] * w / (1.0 - market_share[:, None])) + beta[:, None] * ref_price
    return market, beta, jnp.where(offer_mask > 0, alpha, 0.0)


def logit_shares(v: jnp.ndarray, offer_mask: jnp.ndarray) -> jnp.ndarray:
    """(S, J) MNL shares ``exp(v_j) / (1 + Σ_j' exp(v_j'))`` of the offered options (outside option
    utility 0), computed without overflow; 0 where not offered."""
    v = jnp.where(offer_mask > 0, v, -jnp.inf)
    vmax = jnp.maximum(jnp.max(v, axis=-1, keepdims=True), 0.0)
    ev = jnp.exp(v - vmax) * offer_mask
    return ev / (jnp.exp(-vmax) + ev.sum(-1, keepdims=True))


def demand(price: jnp.ndarray, quality: jnp.ndarray, latency_ms: jnp.ndarray,
           p: DemandParams) -> jnp.ndarray:
    """Requests per day of every offer.

    Args:
      price: (S, J) USD per request. quality: (S, J) served quality retention (BF16 = 1).
      latency_ms: (S,) served TPOT, ms. p: :class:`DemandParams`.

    Returns:
      (S, J) requests/day (0 where not offered). Smooth in price and quality.
    """
    shift = (p.quality_sens[:, None] * 100.0 * (quality - p.ref_quality)
             - (p.latency_sens * (latency_ms - p.ref_latency_ms))[:, None])
    v = p.alpha - p.beta[:, None] * price + shift
    logit = p.market[:, None] * logit_shares(v, p.offer_mask)
    ratio = jnp.where(p.offer_mask > 0, price / jnp.where(p.offer_mask > 0, p.ref_price, 1.0), 1.0)
    ce = p.ref_demand * jnp.exp(-p.elasticity[:, None] * safe_log(ratio) + shift)
    return jnp.where(p.is_logit[:, None], logit, ce) * p.offer_mask
