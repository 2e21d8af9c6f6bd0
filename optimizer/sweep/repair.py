"""A sweep's second pass: the rows the first pass left without a plan, solved again.

The first pass gives every scenario the same number of dual steps from the base scenario's state.
Where users push a sweep (elasticities, volumes and rents far from the base, a binding GPU cap or
budget) some rows end at the step limit, and some converge to a relaxed plan whose pools cannot be
rounded up to whole replicas within a binding limit (``no_whole_fleet``). Each such row is solved
again from its own dual state with more steps, and, where rounding up breaks a limit, within that
limit lowered by what rounding adds (:func:`optimizer.solve.integer.limit_cut`, the rule of a
single run's integer stage, :func:`optimizer.engine.tightened`).

A repaired row is certified against the scenario as set: its bound is the lowest of the first
pass's and every re-solve's dual function at the scenario's own limits (lowered limits change the
Lagrangian only by a constant), so its gap says what the whole fleet costs against the relaxed
optimum; its ``repair_rounds`` and ``limits_lowered`` columns say
how it was found. In an augmented-Lagrangian sweep the rows that hold the plan of the dual that
checks it (:mod:`optimizer.solve.check`) are repaired the same way, on their task without quality
floors; a plan that breaks a floor is not taken. Host-side (NumPy) bookkeeping around one compiled program
(:func:`optimizer.sweep.batch.repair_program`) run on fixed-size batches of rows.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from optimizer.solve.base import INFEASIBLE_TOL, RESULTS
from optimizer.solve.integer import limit_cut

RANK_PLAN, RANK_NOT_WHOLE = 0, 1
"""Row ranks: a converged plan that can be made whole; a converged relaxed plan that cannot; then
step limit (2), infeasible (3), non-finite (4) by their result codes + 1."""


class Repaired(NamedTuple):
    """A chunk's rows after the repair pass (NumPy; leading axis = scenario)."""

    result: object  # the SweepResult, rows replaced where a repair ranked at least as well
    rounds: np.ndarray  # (N,) int: repair rounds a row went through (0: first pass only)
    lowered: np.ndarray  # (N,) bool: its plan was found within a lowered GPU cap or budget


def rank(status, whole_ok) -> np.ndarray:
    """(N,) how good each row is (lower is better; see :data:`RANK_PLAN`)."""
    status = np.asarray(status).astype(int)
    return np.where(status == RESULTS.converged, np.where(np.asarray(whole_ok, bool), RANK_PLAN, RANK_NOT_WHOLE),
                    status + 1)


def repair(result, values: np.ndarray, solve: Callable, batch: int, rounds: int,
           eligible: np.ndarray | None = None) -> Repaired:
    """Re-solve every row of ``result`` (host copy of a chunk's SweepResult) that is not a converged,
    whole-able plan, up to ``rounds`` times each.

    Args:
      values: (N, A) the rows' axis values. solve: ``solve(values, start, cut, bound)`` on ``batch``
        rows at a time (the compiled repair program), returning their SweepResult.
      eligible: (N,) bool, the rows the dual may re-solve (None: every row): in an
        augmented-Lagrangian sweep, those holding the dual's plan. A row keeps whose plan it holds
        (its ``checked`` code).
    """
    import jax

    res = result
    n = len(values)
    done_rounds = np.zeros(n, int)
    lowered = np.zeros(n, bool)
    cut = np.zeros_like(np.asarray(res.over))
    # how each row's latest solve rounds up (the next cut follows it, kept or not: a re-solve within a
    # lowered budget can break a GPU cap instead, and cutting only what the kept plan broke lowered
    # the same limit round after round while the other stayed broken)
    latest = {k: np.array(getattr(res, k), copy=True) for k in _ROUNDING}
    for attempt in range(rounds):  # a row once a plan stays one, so every row to do has been in each round
        r = rank(res.status, res.whole_ok)
        todo = np.nonzero((r > RANK_PLAN) & (True if eligible is None else np.asarray(eligible, bool)))[0]
        if todo.size == 0:
            break
        # every row whose rounded-up plan breaks a limit solves within it lowered (step-limited ones
        # too: at a binding limit over several periods they end short of the tolerance more often)
        # a limit the relaxed plan itself breaks (beyond the infeasibility tolerance) is not lowered:
        # rounding is not what breaks it, and its excess says nothing of what rounding adds
        over, overshoot, limit = latest["over"][todo], latest["overshoot"][todo], np.asarray(res.limit)[todo]
        by_rounding = latest["broken"][todo] & (over - overshoot <= INFEASIBLE_TOL * np.abs(limit))
        cut_now = cut.copy()
        cut_now[todo] = limit_cut(cut[todo], by_rounding, over, overshoot, latest["step"][todo], attempt)
        todo = todo[(cut_now[todo] < np.asarray(res.limit)[todo]).all(-1)]  # a limit lowered to zero: no plan
        for lo in range(0, todo.size, batch):
            rows = todo[lo:lo + batch]
            pad = np.concatenate([rows, np.repeat(rows[-1:], batch - rows.size)])  # same compiled shape
            out = solve(values[pad], jax.tree.map(lambda x: np.asarray(x)[pad], res.start), cut_now[pad],
                        np.asarray(res.bound)[pad])
            out = jax.tree.map(lambda x: np.asarray(x)[:rows.size], out)
            new_rank = rank(out.status, out.whole_ok)
            # a better rank wins; at the same rank, the higher margin (a step-limited row's best plan
            # may come from an earlier round)
            take = (new_rank < r[rows]) | ((new_rank == r[rows])
                                           & (out.margin >= np.asarray(res.margin)[rows]))
            idx = rows[take]
            res = jax.tree.map(lambda old, new: _put(old, idx, new[take]), res, out)
            # every re-solved row's next round continues from its solver's state, and its bound is
            # the lowest found for the scenario as set
            kept = rows[~take]
            res = res._replace(start=jax.tree.map(lambda old, new: _put(old, kept, new[~take]), res.start, out.start),
                               bound=_put(res.bound, kept, np.minimum(np.asarray(res.bound)[kept], out.bound[~take])))
            for k in _ROUNDING:
                latest[k][rows] = np.asarray(getattr(out, k))
            done_rounds[rows] = attempt + 1
            lowered[idx] = (cut_now[idx] > 0).any(-1)
            cut[rows] = cut_now[rows]
    return Repaired(res._replace(checked=np.asarray(result.checked)), done_rounds, lowered)


_ROUNDING = ("broken", "over", "overshoot", "step")
"""The fields of a row that say how its plan rounds up to whole replicas against each limit."""


def _put(old, idx, new):
    a = np.array(old, copy=True)
    a[idx] = new
    return a
