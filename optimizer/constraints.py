"""Names and activity of the constraint vector built in :func:`optimizer.objective.evaluate`.

Layout: GPU caps (G) | budget (1) | capex budget (1) | min quality (S·J) | fixed-fleet peak
capacity (G·J·K) | fixed-fleet daily capacity (G·J·K).
"""

from __future__ import annotations

import numpy as np

from optimizer.problem import Labels, Problem


def constraint_names(labels: Labels) -> list[str]:
    """Human-readable name of every constraint row."""
    L = labels
    names = [f"GPU cap on {g}" for g in L.gpus] + ["daily GPU budget", "capex budget"]
    names += [f"minimum quality of segment '{s}' on {m}" for s in L.segments for m in L.models]
    pools = [f"{g}/{m}/{k}" for g in L.gpus for m in L.models for k in L.precisions]
    names += [f"peak capacity of pool {p}" for p in pools] + [f"daily capacity of pool {p}" for p in pools]
    return names


def active_mask(labels: Labels, prob: Problem, fixed_fleet: bool) -> np.ndarray:
    """1.0 for constraints that apply (caps and budgets only where set; capacity only with a fixed fleet)."""
    L = labels
    S, J, K, G = len(L.segments), len(L.models), len(L.precisions), len(L.gpus)
    offer = np.asarray(prob.demand.offer_mask)
    quality = np.asarray([[L.has_min_quality[s] and offer[s, j] > 0 for j in range(J)] for s in range(S)])
    parts = [np.asarray(L.has_gpu_cap, float), [float(L.has_budget)], [float(L.has_capex_budget)],
             quality.ravel().astype(float), np.full(2 * G * J * K, float(fixed_fleet))]
    return np.concatenate([np.asarray(p, float) for p in parts])
