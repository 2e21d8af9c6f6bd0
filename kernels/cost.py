"""GPU-hour cost (rental or TCO) and the resulting dollars per million tokens."""

from __future__ import annotations

import jax.numpy as jnp

HOURS_PER_YEAR = 8760.0


def tco_gpu_hour(capex_usd: jnp.ndarray, depreciation_years: jnp.ndarray, power_w: jnp.ndarray,
                 pue: jnp.ndarray, usd_per_kwh: jnp.ndarray) -> jnp.ndarray:
    """Total cost of ownership of one GPU per hour, USD.

        capex / (years · 8760) + power_kW · PUE · $/kWh

    Straight-line depreciation, GPU running at its rated board power all hour (an upper bound on
    energy). Args are scalars or broadcastable arrays in the units their names say.
    """
    return capex_usd / (depreciation_years * HOURS_PER_YEAR) + power_w / 1000.0 * pue * usd_per_kwh


def usd_per_mtok(usd_per_gpu_hour: jnp.ndarray, gpu_seconds: jnp.ndarray,
                 tokens: jnp.ndarray) -> jnp.ndarray:
    """Dollars per million tokens when ``tokens`` tokens cost ``gpu_seconds`` GPU-seconds.

        $/Mtok = $/GPU-h / 3600 · GPU-s / tokens · 1e6
    """
    return usd_per_gpu_hour / 3600.0 * gpu_seconds / jnp.maximum(tokens, 1e-12) * 1e6
