"""Load profiles: a segment's load over the period grid, from the bundled traces or a user's CSV.

A profile is the shape of a segment's request rate over one cycle, mean 1.0 (``load_vs_mean``).
``flat`` is 1.0 in every period; a workload name is one of the hour-of-day profiles of public
traces in ``benchmarks/data/load_profiles.csv`` (a copy of ``shared/data/load_profiles.csv``, with
its sources and the time-zone caveat); a path is a CSV with columns ``hour`` and
``load_vs_mean`` (any number of equal-length steps over the cycle, ``hour`` the start of each). Profiles are resampled to the
grid by averaging the cycle's load over each period (exact for 24 one-hour periods). pandas and
files live here, at the edge; the model sees a (S, T) array.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from optimizer.errors import ConfigError

BUNDLED_PROFILES = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "load_profiles.csv"
"""Copy of shared/data/load_profiles.csv: hour-of-day profiles (mean 1.0) of public LLM serving traces."""
FLAT = "flat"


@functools.lru_cache(maxsize=1)
def bundled_profiles() -> dict[str, np.ndarray]:
    """workload -> (24,) hour-of-day load / mean of the bundled traces."""
    df = pd.read_csv(BUNDLED_PROFILES)
    return {w: g.sort_values("hour")["load_vs_mean"].to_numpy(float) for w, g in df.groupby("workload", sort=True)}


def profile_names() -> list[str]:
    """The accepted profile names (besides a CSV path)."""
    return [FLAT, *bundled_profiles()]


def _hours(x: np.ndarray, most: int = 8) -> str:
    shown = ", ".join(f"{v:g}" for v in x[:most])
    return f"[{shown}{', ...' if x.size > most else ''}]"


def _read_csv(path: Path, where: str, cycle_hours: float = 24.0) -> np.ndarray:
    """The rows' ``load_vs_mean`` in the order of their ``hour``: the start hour of each of n equal
    steps over the cycle (0, c/n, 2c/n, ...; every hour of the day for 24 rows, 0 and 12 for two
    half-days). A gap, a duplicate or an uneven step is refused (a day of 23 rows would otherwise
    be stretched over 24 hours)."""
    try:
        df = pd.read_csv(path)
    except Exception as e:  # noqa: BLE001  (any reader error is the user's file)
        raise ConfigError(f"{where} = '{path}': cannot read the CSV ({e})") from e
    missing = {"hour", "load_vs_mean"} - set(df.columns)
    if missing:
        raise ConfigError(f"{where} = '{path}': the CSV needs columns hour, load_vs_mean (missing {sorted(missing)})")
    df = df.sort_values("hour")
    load = df["load_vs_mean"].to_numpy(float)
    if load.size == 0 or not np.all(np.isfinite(load)) or np.any(load < 0) or load.sum() <= 0:
        raise ConfigError(f"{where} = '{path}': load_vs_mean must be finite, >= 0 and not all 0")
    hours = pd.to_numeric(df["hour"], errors="coerce").to_numpy(float)
    expected = np.arange(load.size) * cycle_hours / load.size
    if not np.allclose(hours, expected, rtol=0.0, atol=1e-6 * cycle_hours):
        whole = np.isfinite(hours).all() and np.allclose(hours, np.round(hours)) and hours.min() >= 0
        gaps = sorted(set(range(int(round(cycle_hours)))) - set(np.round(hours).astype(int))) if whole else []
        hint = f"; missing hours {_hours(np.asarray(gaps, float))}" if gaps else ""
        raise ConfigError(f"{where} = '{path}': column hour must hold the start hour of each row, equal steps over "
                          f"the {cycle_hours:g}-hour cycle from 0 (for {load.size} rows: {_hours(expected)}); got "
                          f"{_hours(hours)}{hint}")
    return load


def cycle_load(name: str, where: str, cycle_hours: float = 24.0) -> np.ndarray:
    """The profile ``name`` over one cycle of ``cycle_hours`` in equal steps, normalised to mean 1
    (an hour-of-day profile repeats over a cycle of several days; a CSV spans the cycle)."""
    if name == FLAT:
        return np.ones(1)
    table = bundled_profiles()
    if name in table:
        days = cycle_hours / 24.0
        if days < 1 or abs(days - round(days)) > 1e-9:
            raise ConfigError(f"{where} = '{name}' is an hour-of-day profile: it needs a cycle of whole days "
                              f"(time.periods x time.hours_per_period = {cycle_hours:g} h); use 'flat' or a CSV")
        load = np.tile(table[name], int(round(days)))
    elif name.endswith(".csv") or "/" in name:
        load = _read_csv(Path(name).expanduser(), where, cycle_hours)
    else:
        raise ConfigError(f"{where} = '{name}': accepted '{FLAT}', a workload of load_profiles.csv "
                          f"{list(table)}, or a path to a CSV with columns hour, load_vs_mean")
    return load / load.mean()


def resample(load: np.ndarray, periods: int) -> np.ndarray:
    """(periods,) mean of a cycle's step profile ``load`` (n equal steps) over each of ``periods``
    equal periods (exact overlap weights), renormalised to mean 1."""
    n = load.size
    edges = np.linspace(0.0, 1.0, periods + 1)
    steps = np.linspace(0.0, 1.0, n + 1)
    out = np.empty(periods)
    for t in range(periods):
        lo, hi = edges[t], edges[t + 1]
        overlap = np.clip(np.minimum(steps[1:], hi) - np.maximum(steps[:-1], lo), 0.0, None)
        out[t] = (overlap * load).sum() / (hi - lo)
    return out / out.mean()


def segment_profiles(names: list[str], segments: list[str], periods: int, cycle_hours: float = 24.0) -> np.ndarray:
    """(S, T) load / mean of each segment in each of ``periods`` periods of a ``cycle_hours`` cycle."""
    return np.stack([resample(cycle_load(n, f"demand.segments.{s}.profile", cycle_hours), periods)
                     for n, s in zip(names, segments)]) if names else np.ones((0, periods))
