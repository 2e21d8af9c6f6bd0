"""Mixture-of-experts weight traffic: how many distinct experts a decode batch touches."""

from __future__ import annotations

import jax.numpy as jnp


def distinct_expert_fraction(tokens: jnp.ndarray, num_experts: jnp.ndarray,
                             experts_per_token: jnp.ndarray) -> jnp.ndarray:
    """Expected share of routed experts touched by a step that routes ``tokens`` tokens.

    With uniform routing each token picks ``k`` of ``E`` experts, so one expert is missed by all
    ``n`` tokens with probability ``(1 − k/E)^n`` and the expected distinct share is

        f(n) = 1 − (1 − k/E)^n                                    [ECONOMICS.md §3.1, DERIV]

    E = 256, k = 8 gives 163/256 experts at n = 32 and all 256 at n = 256.

    Args:
      tokens: tokens routed in one step (batch × tokens per sequence), ≥ 0, any shape.
      num_experts: routed experts per layer ``E`` (use 1 for dense models).
      experts_per_token: top-``k`` (use 1 for dense models).

    Returns:
      Share in [0, 1], broadcast shape. Finite gradients everywhere, including k == E.
    """
    ratio = jnp.clip(experts_per_token / jnp.maximum(num_experts, 1.0), 0.0, 1.0 - 1e-7)
    return 1.0 - jnp.exp(tokens * jnp.log1p(-ratio))
