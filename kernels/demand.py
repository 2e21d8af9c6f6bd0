"""Demand models: multinomial logit with an outside option, and constant elasticity.

Shapes: ``S`` segments × ``J`` models. Prices are per **request** of the segment's mean shape
(input, cached input and output tokens billed at their own prices), so that one number carries
the whole price level of an offer [ECONOMICS.md §1.7 item 1].

Logit (latent-class MNL, one class per segment) [Berry 1994; Train 2009 ch. 3; ECONOMICS.md §1.3]::

    v_sj = α_sj − β_s · p_sj + γ_s · 100 · (Q_sj − Q_ref) − δ_s · (L_s − L_ref,s)
    D_sj = M_s · exp(v_sj) / (1 + Σ_j' exp(v_sj'))          (no competitors, nest parameter 1)

with competitors' products ``c`` and nest parameter ``λ_s`` (nests: ours, theirs; ECONOMICS.md §1.4)::

    D_sj = M_s · exp(v_sj/λ) / Σ_j' exp(v_sj'/λ) · exp(IV_o) / (1 + exp(IV_o) + exp(IV_c)),
    IV_o = λ log Σ_j exp(v_sj/λ),  IV_c = λ log Σ_c exp(v_sc/λ)

Constant elasticity [ECONOMICS.md §1.1]::

    D_sj = D_ref,sj · (p_sj / p_ref,sj)^(−ε_s) · exp(γ_s · 100 · (Q_sj − Q_ref) − δ_s · (L_s − L_ref,s))

Parameters are set so that demand at the reference price, quality and latency equals the
reference volume (:func:`calibrate_logit`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from kernels.smooth import safe_log

MASKED = -1e30
"""Scaled utility of an absent option: its weight is exactly 0 in float64."""


class DemandParams(NamedTuple):
    """Demand parameters of every (segment, model) offer and of the competitors' products.

    Logit segments choose among our offers (one nest), the competitors' products (a second nest)
    and not buying, by a nested logit with nest parameter ``nest`` ∈ (0, 1] (1 = MNL)
    [ECONOMICS.md §1.4]. ``C`` competitor products.
    """

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
    comp_utility: jnp.ndarray  # (S, C) utility of each competitor product at its scenario prices
    comp_mask: jnp.ndarray  # (S, C) 1.0 where the segment considers the competitor product
    nest: jnp.ndarray  # (S,) nest parameter (ours vs theirs), (0, 1]


def calibrate_logit(ref_price: jnp.ndarray, volume_share: jnp.ndarray, offer_mask: jnp.ndarray,
                    ref_volume: jnp.ndarray, market_share: jnp.ndarray, elasticity: jnp.ndarray,
                    comp_share: jnp.ndarray | None = None, nest: jnp.ndarray | None = None):
    """Logit (market, beta, alpha, competitor constants) reproducing the reference volumes and elasticity.

    The provider holds share ``σ`` of the market at reference, split ``w_j`` over its offers; the
    competitors hold ``σ_c`` (split ``w_c = σ_c / Σσ_c``); nobody buys with ``σ_0 = 1 − σ − Σσ_c``.
    Then ``M = V/σ``; ``β = ε / (p̄ (1 − σ))``, so that ``ε`` is **our** own-price elasticity: of our
    whole volume in the segment when all our prices move together (the nest's share elasticity
    ``β p̄ (1 − σ)``, whatever the nest parameter λ); and, inverting the nested logit of
    ECONOMICS.md §1.4, ``α_j = λ log w_j + log(σ/σ_0) + β p_ref,j`` (``α_c`` alike, without the price).

    Args:
      ref_price: (S, J) USD per request. volume_share: (S, J) normalised over offered models.
      offer_mask: (S, J). ref_volume: (S,) requests/day. market_share: (S,) in (0, 1).
      elasticity: (S,) > 0. comp_share: (S, C) competitors' market shares (0 where absent; None:
      no competitors). nest: (S,) λ in (0, 1] (None: 1).

    Returns:
      ``(market (S,), beta (S,), alpha (S, J), comp_alpha (S, C))``; ``comp_alpha`` excludes the
      competitor's price term (add ``−β (p_c − p_c,ref)`` for a what-if price).
    """
    S = ref_price.shape[0]
    comp_share = jnp.zeros((S, 0)) if comp_share is None else comp_share
    lam = jnp.ones(S) if nest is None else nest
    w = volume_share * offer_mask
    w = w / jnp.maximum(w.sum(-1, keepdims=True), 1e-30)
    pbar = (w * ref_price).sum(-1)
    theirs = comp_share.sum(-1)
    none = 1.0 - market_share - theirs
    market = ref_volume / market_share
    beta = elasticity / (pbar * (1.0 - market_share))
    alpha = (lam[:, None] * safe_log(w) + safe_log(market_share / none)[:, None] + beta[:, None] * ref_price)
    wc = comp_share / jnp.maximum(theirs, 1e-30)[:, None]
    comp_alpha = lam[:, None] * safe_log(wc) + safe_log(jnp.maximum(theirs, 1e-300) / none)[:, None]
    return market, beta, jnp.where(offer_mask > 0, alpha, 0.0), jnp.where(comp_share > 0, comp_alpha, 0.0)


def nested_shares(v: jnp.ndarray, offer_mask: jnp.ndarray, comp_v: jnp.ndarray, comp_mask: jnp.ndarray,
                  nest: jnp.ndarray) -> jnp.ndarray:
    """(S, J) nested-logit shares of our offers: nest "ours" (utilities ``v``), nest "theirs"
    (``comp_v``, (S, C)) and the outside option (utility 0), each nest with parameter ``nest`` (S,)
    [ECONOMICS.md §1.4]; multinomial logit at ``nest = 1``. Stable for any utilities; 0 where not offered."""
    lam = nest[:, None]
    zo = jnp.where(offer_mask > 0, v / lam, MASKED)
    zc = jnp.where(comp_mask > 0, comp_v / lam, MASKED)
    lse_o = jax.nn.logsumexp(zo, axis=-1, keepdims=True)
    iv_o = lam * lse_o
    iv_c = lam * jax.nn.logsumexp(zc, axis=-1, keepdims=True) if zc.shape[-1] else jnp.full_like(iv_o, MASKED)
    log_den = jax.nn.logsumexp(jnp.concatenate([jnp.zeros_like(iv_o), iv_o, iv_c], -1), axis=-1, keepdims=True)
    return jnp.exp(zo - lse_o + iv_o - log_den) * offer_mask


def outside_log(comp_v: jnp.ndarray, comp_mask: jnp.ndarray, nest: jnp.ndarray) -> jnp.ndarray:
    """(S,) ``log Z``, ``Z = 1 + exp(IV_theirs)``: the value of every option but ours (not buying and
    the competitors' nest), against which our nest competes."""
    if not comp_v.shape[-1]:
        return jnp.zeros_like(nest)
    zc = jnp.where(comp_mask > 0, comp_v / nest[:, None], MASKED)
    return jnp.logaddexp(0.0, nest * jax.nn.logsumexp(zc, axis=-1))


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
    logit = p.market[:, None] * nested_shares(v, p.offer_mask, p.comp_utility, p.comp_mask, p.nest)
    ratio = jnp.where(p.offer_mask > 0, price / jnp.where(p.offer_mask > 0, p.ref_price, 1.0), 1.0)
    ce = p.ref_demand * jnp.exp(-p.elasticity[:, None] * safe_log(ratio) + shift)
    return jnp.where(p.is_logit[:, None], logit, ce) * p.offer_mask
