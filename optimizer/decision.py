"""The decision and its parametrization: unconstrained arrays ↔ prices, precision mix and routing.

Every solver, the sweep and the reports go through these functions; nothing else writes the
price box, its inverse or the masked softmax.

* Prices: each product's price sheet (input, cached input, output; ``R`` products) as
  ``log(price / reference) = lo + (hi − lo) · sigmoid(raw)`` in the product's box ``[lo, hi]``
  (``Problem.log_mu_lo`` / ``log_mu_hi``: its price floor and ceiling ratios) for the level (the
  input price), and tilts of the cached-input and output prices against it within the product's
  ratio band. Prices that the buyers' token mixes do not identify get no tilt
  (``Problem.sheet_tie``): a contract's sheet moves as one multiplier, as before price sheets.
* Precision mix of each (segment, model) and routing of each (segment, model, precision) flow over
  GPU types: softmax of logits over the allowed options (``MASKED`` elsewhere).

Shapes: ``S`` segments, ``J`` models, ``K`` precisions, ``G`` GPU types.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

MASKED = -1e30
"""Logit of an option that is not allowed: its softmax weight is exactly 0 in float64."""

START_FACTORS = (1.0, 0.6, 1.7, 2.8, 0.35, 4.5, 1.25, 0.8)
"""Price multipliers of the generated starts (the first is the reference price), cycled."""


class Decision(NamedTuple):
    """Unconstrained decision variables (a pytree; a leading axis batches starts or scenarios)."""

    price_raw: jnp.ndarray  # (R, 3) → each product's price level and its cached / output tilts, boxed by sigmoids
    mix_logits: jnp.ndarray  # (S, J, K) → precision mix by masked softmax
    route_logits: jnp.ndarray  # (S, J, K, G) → GPU-type routing by masked softmax


def price_box(prob, xp=jnp) -> tuple:
    """``(lo, hi)`` (R, 3): the box of each product's price parameters — its price level (the log
    multiplier of its input price, within its floor and ceiling) and the tilts of its cached-input
    and output prices against it (within ±log of its ratio band)."""
    lo, hi, band = (xp.asarray(x)[:, None] for x in (prob.log_mu_lo, prob.log_mu_hi, prob.log_band))
    return (xp.concatenate([lo, -band, -band], -1), xp.concatenate([hi, band, band], -1))


def free_tilts(prob, xp=jnp):
    """(R, 3) 1.0 where a price has its own tilt: the buyers' token mixes identify it apart from the
    input price (``Problem.sheet_tie``); never the input price itself."""
    tie = xp.asarray(prob.sheet_tie)
    return ((tie == xp.arange(3)) & (xp.arange(3) > 0)).astype(float)


def sheet_log_mu(z, prob, xp=jnp):
    """(R, 3) ``log(price / reference)`` of each product's prices from its parameters ``z`` (R, 3):
    level ``z[:, 0]``, tilts ``z[:, 1:]`` (used where free)."""
    return z[..., :1] + free_tilts(prob, xp) * z


def sheet_params(log_mu, prob, xp=jnp):
    """The inverse of :func:`sheet_log_mu` (tilts of tied prices are 0)."""
    return xp.concatenate([log_mu[..., :1], (free_tilts(prob, xp) * (log_mu - log_mu[..., :1]))[..., 1:]], -1)


def log_multiplier(price_raw: jnp.ndarray, prob) -> jnp.ndarray:
    """(R, 3) ``log(price / reference)`` of each product's prices (level and tilts inside their box)."""
    lo, hi = price_box(prob)
    return sheet_log_mu(lo + (hi - lo) * jax.nn.sigmoid(price_raw), prob)


def raw_price(log_mu, prob, xp=jnp, eps: float = 1e-12):
    """The inverse of :func:`log_multiplier` (clipped ``eps`` inside the box; ``xp`` jnp or np)."""
    lo, hi = price_box(prob, xp)
    pos = xp.clip((sheet_params(log_mu, prob, xp) - lo) / (hi - lo), eps, 1 - eps)
    return xp.log(pos) - xp.log1p(-pos)


def sheet_prices(log_mu: jnp.ndarray, prob) -> jnp.ndarray:
    """(R, 3) USD/Mtok of each product at log multipliers ``log_mu`` (R, 3)."""
    return prob.sheet_ref * jnp.exp(log_mu)


def request_prices(log_sheet: jnp.ndarray, tokens: jnp.ndarray, flow_product: jnp.ndarray) -> jnp.ndarray:
    """(S, J) USD per request of each flow: its product's sheet ``exp(log_sheet)`` (R, 3) at the
    segment's token mix (S, 3)."""
    return jnp.einsum("sjt,st->sj", jnp.exp(log_sheet)[flow_product], tokens)


def flow_prices(log_mu: jnp.ndarray, prob) -> jnp.ndarray:
    """(S, J) USD per request each segment pays for each model at the products' log multipliers."""
    return request_prices(jnp.log(jnp.maximum(prob.sheet_ref, 1e-300)) + log_mu, prob.tokens, prob.flow_product)


def masked_softmax(logits: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Softmax over the last axis restricted to ``mask`` > 0 (all-masked rows give zeros)."""
    z = jnp.where(mask > 0, logits, MASKED)
    return jax.nn.softmax(z, axis=-1) * (mask.sum(-1, keepdims=True) > 0)


def option_masks(prob, fleet: jnp.ndarray | None = None, fixed=True) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(mix mask (S, J, K), route mask (S, J, K, G))``: with a fixed fleet (``fixed`` true, possibly
    traced) flows may only use pools that have GPUs."""
    route_mask = prob.route_mask
    if fleet is not None:
        has = jnp.transpose(fleet, (1, 2, 0))[None] > 0
        route_mask = route_mask * jnp.where(fixed, has, True)
    return prob.mix_mask * (route_mask.sum(-1) > 0), route_mask


def decode(dec: Decision, prob, fleet: jnp.ndarray | None = None, fixed=True):
    """``(log price multiplier (S, J), mix (S, J, K), route (S, J, K, G))`` of a decision."""
    mix_mask, route_mask = option_masks(prob, fleet, fixed)
    return (log_multiplier(dec.price_raw, prob), masked_softmax(dec.mix_logits, mix_mask),
            masked_softmax(dec.route_logits, route_mask))


def encode(log_mu, mix, route, prob) -> Decision:
    """The :class:`Decision` that :func:`decode` maps to these price log multipliers (R, 3), mix and routing."""
    return Decision(raw_price(log_mu, prob), jnp.log(jnp.maximum(mix, 1e-300)), jnp.log(jnp.maximum(route, 1e-300)))


def start_factors(n: int) -> np.ndarray:
    """(n,) price multipliers of ``n`` generated starts: :data:`START_FACTORS`, cycled."""
    return np.asarray((list(START_FACTORS) * (n // len(START_FACTORS) + 1))[:n])


def price_starts(prob, factors, xp=jnp):
    """(n, R, 3) raw prices at ``factors`` × reference (kept 1e-3 inside the box)."""
    R = prob.sheet_ref.shape[-2]
    lm = xp.broadcast_to(xp.log(xp.asarray(factors, float))[:, None, None], (len(factors), R, 3))
    return raw_price(lm, prob, xp, eps=1e-3)


def initial_decisions(prob, starts: int, seed: int) -> Decision:
    """``starts`` decisions (leading axis): reference prices × :func:`start_factors`, uniform mix and
    routing for the first start and small seeded noise on the logits of the others.

    Host-side NumPy (a seeded ``default_rng``), so no random-number kernel needs compiling.
    """
    S, J = prob.demand.ref_price.shape
    K, G = prob.quality.shape[1], prob.usd_per_gpu_hour.shape[0]
    rng = np.random.default_rng(seed)
    noise = (np.arange(starts) > 0).astype(float)
    mix = 0.3 * noise[:, None, None, None] * rng.standard_normal((starts, S, J, K))
    route = 0.3 * noise[:, None, None, None, None] * rng.standard_normal((starts, S, J, K, G))
    price = price_starts(prob, start_factors(starts), np)
    return Decision(np.asarray(price, np.float64), mix, route)


def reference_decision(prob) -> Decision:
    """Reference prices, uniform mix and routing: the default start, and the example every plan is
    shaped and typed like (for compiling programs ahead)."""
    return jax.tree.map(lambda x: x[0], initial_decisions(prob, 1, 0))


def warm_and_cold(prob, warm: Decision, starts: int) -> Decision:
    """Starts inside jit: ``warm`` (e.g. the base scenario's optimum), then reference prices ×
    :func:`start_factors` with uniform mix and routing."""
    if starts == 1:
        return jax.tree.map(lambda x: x[None], warm)
    S, J = prob.demand.ref_price.shape
    K, G = prob.quality.shape[1], prob.usd_per_gpu_hour.shape[0]
    n = starts - 1
    cold = Decision(price_starts(prob, start_factors(n)), jnp.zeros((n, S, J, K)), jnp.zeros((n, S, J, K, G)))
    return jax.tree.map(lambda w, c: jnp.concatenate([w[None], c]), warm, cold)
