"""Hours of the day a time-of-day (off-peak) price sheet is valid, on the period grid.

A window is ``"HH:MM-HH:MM"`` on the clock of the load profiles (:mod:`optimizer.profiles`); an
end at or before its start wraps past midnight (``"16:30-00:30"``), and ``"00:00-24:00"`` is the
whole day. Windows repeat every day of the cycle. :func:`window_share` gives, for each period, the
fraction of its hours inside the windows (exact interval overlaps, so a window need not align with
the grid: with 24 one-hour periods ``"16:30-00:30"`` covers half of hours 16 and 0). Host-side
NumPy at the edge; the model sees a (T,) array per segment block.
"""

from __future__ import annotations

import re

import numpy as np

from optimizer.errors import ConfigError

HOURS_PER_DAY = 24.0
_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
ACCEPTED = "windows 'HH:MM-HH:MM' of the day (e.g. ['16:30-00:30'] or ['00:00-01:00', '04:00-06:00'])"


def parse_window(text: str, where: str) -> tuple[float, float]:
    """``(start, end)`` hours of one window, ``0 <= start < 24``, ``start < end <= start + 24``."""
    m = _WINDOW.match(str(text))
    if m is None:
        raise ConfigError(f"{where} = '{text}': accepted {ACCEPTED}")
    h0, m0, h1, m1 = (int(g) for g in m.groups())
    if m0 >= 60 or m1 >= 60 or h0 > 23 or h1 > 24 or (h1 == 24 and m1 > 0):
        raise ConfigError(f"{where} = '{text}': hours 00-23 (24:00 as an end), minutes 00-59; accepted {ACCEPTED}")
    start, end = h0 + m0 / 60.0, h1 + m1 / 60.0
    if end <= start:
        end += HOURS_PER_DAY  # wraps past midnight
    return start, end


def _pieces(hours: list[str], where: str) -> list[tuple[float, float]]:
    """The windows as disjoint [start, end) intervals of one day (wrapping ones split at midnight)."""
    spans = sorted(parse_window(h, f"{where}[{i}]") for i, h in enumerate(hours))
    pieces = []
    for s, e in spans:
        pieces += [(s, min(e, HOURS_PER_DAY))] + ([(0.0, e - HOURS_PER_DAY)] if e > HOURS_PER_DAY else [])
    pieces.sort()
    for (s0, e0), (s1, e1) in zip(pieces, pieces[1:]):
        if s1 < e0 - 1e-12:
            raise ConfigError(f"{where} = {list(hours)}: windows overlap around {s1:05.2f} h; give disjoint windows")
    return pieces


def window_share(hours: list[str], periods: int, hours_per_period: float, where: str) -> np.ndarray:
    """(periods,) fraction of each period's hours inside the daily ``hours`` windows."""
    if not hours:
        raise ConfigError(f"{where} is empty: accepted {ACCEPTED}")
    cycle = periods * hours_per_period
    days = cycle / HOURS_PER_DAY
    pieces = _pieces(list(hours), where)
    if periods > 1 and (days < 1 - 1e-9 or abs(days - round(days)) > 1e-9):
        raise ConfigError(f"{where} are hours of the day: they need a cycle of whole days (time.periods x "
                          f"time.hours_per_period = {cycle:g} h), or one period")
    if periods == 1:  # the whole cycle as one period: the share of the day inside the windows
        return np.asarray([sum(e - s for s, e in pieces) / HOURS_PER_DAY])
    edges = np.arange(periods + 1) * hours_per_period
    inside = np.zeros(periods)
    for d in range(int(round(days))):
        for s, e in pieces:
            lo, hi = s + d * HOURS_PER_DAY, e + d * HOURS_PER_DAY
            inside += np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None)
    return inside / hours_per_period


def describe(hours: list[str]) -> str:
    """The windows as one readable string, e.g. ``16:30-00:30 and 02:00-04:00``."""
    return " and ".join(str(h).replace(" ", "") for h in hours)
