"""The decision and its parametrization: unconstrained arrays ↔ prices, precision mix and routing.

Every solver, the sweep and the reports go through these functions; nothing else writes the
price box, its inverse or the masked softmax.

* Price: ``log(price / reference) = lo + (hi − lo) · sigmoid(raw)`` with the box ``[lo, hi]`` of
  each segment (``Problem.log_mu_lo`` / ``log_mu_hi``: the price floor and ceiling ratios).
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

    price_raw: jnp.ndarray  # (S, J) → log price multiplier in [lo, hi] by a scaled sigmoid
    mix_logits: jnp.ndarray  # (S, J, K) → precision mix by masked softmax
    route_logits: jnp.ndarray  # (S, J, K, G) → GPU-type routing by masked softmax


def price_box(prob, xp=jnp) -> tuple:
    """``(lo, hi)`` (S, 1): the box of the log price multiplier of each segment."""
    return xp.asarray(prob.log_mu_lo)[:, None], xp.asarray(prob.log_mu_hi)[:, None]


def log_multiplier(price_raw: jnp.ndarray, prob) -> jnp.ndarray:
    """(S, J) ``log(price / reference)`` of raw price variables (always inside the box)."""
    lo, hi = price_box(prob)
    return lo + (hi - lo) * jax.nn.sigmoid(price_raw)


def raw_price(log_mu, prob, xp=jnp, eps: float = 1e-12):
    """The inverse of :func:`log_multiplier` (clipped ``eps`` inside the box; ``xp`` jnp or np)."""
    lo, hi = price_box(prob, xp)
    pos = xp.clip((log_mu - lo) / (hi - lo), eps, 1 - eps)
    return xp.log(pos) - xp.log1p(-pos)


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


def encode(price_multiplier, mix, route, prob) -> Decision:
    """The :class:`Decision` that :func:`decode` maps to these prices, mix and routing (where offered)."""
    offered = prob.demand.offer_mask > 0
    log_mu = jnp.where(offered, jnp.log(jnp.where(offered, price_multiplier, 1.0)), 0.0)
    return Decision(raw_price(log_mu, prob), jnp.log(jnp.maximum(mix, 1e-300)), jnp.log(jnp.maximum(route, 1e-300)))


def start_factors(n: int) -> np.ndarray:
    """(n,) price multipliers of ``n`` generated starts: :data:`START_FACTORS`, cycled."""
    return np.asarray((list(START_FACTORS) * (n // len(START_FACTORS) + 1))[:n])


def price_starts(prob, factors, xp=jnp):
    """(n, S, J) raw prices at ``factors`` × reference (kept 1e-3 inside the box)."""
    S, J = prob.demand.ref_price.shape
    lm = xp.broadcast_to(xp.log(xp.asarray(factors, float))[:, None, None], (len(factors), S, J))
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
