"""Speculative decoding: tokens emitted per target step and the cost of drafting."""

from __future__ import annotations

import jax.numpy as jnp


def expected_tokens_per_step(acceptance: jnp.ndarray, draft_len: jnp.ndarray) -> jnp.ndarray:
    """Expected tokens emitted per target forward pass with draft length ``k``.

        E[T] = (1 − a^(k+1)) / (1 − a)        [Leviathan et al. 2023, arXiv 2211.17192, eq. 1]

    This counts the bonus / corrected token, so ``k = 0`` gives exactly 1 and ``a → 1`` gives
    ``k + 1``. Evaluated as the geometric sum ``Σ_{i=0..k} a^i`` in closed form with a guard at
    ``a = 1`` so the value and gradient stay finite on [0, 1].

    Args:
      acceptance: iid per-token acceptance probability ``a`` in [0, 1].
      draft_len: draft tokens per step ``k`` ≥ 0 (float allowed).

    Returns:
      Tokens per target step, in [1, k + 1].
    """
    a = jnp.clip(acceptance, 0.0, 1.0)
    near_one = a > 1.0 - 1e-4
    a_safe = jnp.where(near_one, 0.5, a)
    exact = (1.0 - a_safe ** (draft_len + 1.0)) / (1.0 - a_safe)
    # Taylor expansion of the geometric sum around a = 1: (k+1) − k(k+1)/2·(1−a).
    taylor = (draft_len + 1.0) - 0.5 * draft_len * (draft_len + 1.0) * (1.0 - a)
    return jnp.where(near_one, taylor, exact)


