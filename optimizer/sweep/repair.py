"""A sweep's second pass: the rows the first pass left without a plan, solved again.

The first pass gives every scenario the same number of dual steps from the base scenario's state.
Where users push a sweep (elasticities, volumes and rents far from the base, a binding GPU cap or
budget) some rows end at the step limit, and some converge to a relaxed plan whose pools cannot be
rounded up to whole replicas within a binding limit (``no_whole_fleet``). Each such row is solved
again from its own dual state with more steps, and, where rounding up breaks a limit, within that
limit lowered by what rounding adds, the rule of a single run's integer stage
(:func:`optimizer.engine.tightened`): rounding adds about the same GPUs and cost at any nearby plan,
so a relaxation solved within ``limit − (whole − fractional)`` rounds up to a fleet within the
limit. Where that falls just short, the next round lowers the limit by the smallest step a whole
fleet takes (one replica, one replica for one period, its capex), doubling each round.

A repaired row keeps the certified bound of the scenario as set, so its gap says what the whole
fleet costs against the relaxed optimum; its ``repair_rounds`` and ``limits_lowered`` columns say
how it was found. Host-side (NumPy) bookkeeping around one compiled program
(:func:`optimizer.sweep.batch.repair_program`) run on fixed-size batches of rows.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from optimizer.solve.base import RESULTS

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


def next_cut(cut, broken, over, overshoot, step, attempt) -> np.ndarray:
    """(N, G + 2) how far below each limit the next solve stays: where rounding up breaks a limit,
    at least what rounding adds (``overshoot``), and ``cut`` + the excess or the smallest whole step
    × ``2**(attempt − 1)``, whichever is more (the rule of :func:`optimizer.engine.tightened`)."""
    doubling = 2.0 ** np.maximum(np.asarray(attempt) - 1, 0)
    grow = cut + np.maximum(over, step * np.reshape(doubling, np.shape(doubling) + (1,) * (np.ndim(step) - np.ndim(doubling))))
    return np.where(broken, np.maximum(grow, overshoot), cut)


def repair(result, values: np.ndarray, solve: Callable, batch: int, rounds: int) -> Repaired:
    """Re-solve every row of ``result`` (host copy of a chunk's SweepResult) that is not a converged,
    whole-able plan, up to ``rounds`` times each.

    Args:
      values: (N, A) the rows' axis values. solve: ``solve(values, start, cut, bound)`` on ``batch``
        rows at a time (the compiled repair program), returning their SweepResult.
    """
    import jax

    res = result
    n = len(values)
    done_rounds = np.zeros(n, int)
    lowered = np.zeros(n, bool)
    cut = np.zeros_like(np.asarray(res.over))
    bound = np.asarray(res.bound, float).copy()
    tries = np.zeros(n, int)  # times each row's limits were lowered
    for attempt in range(rounds):
        r = rank(res.status, res.whole_ok)
        todo = np.nonzero(r > RANK_PLAN)[0]
        if todo.size == 0:
            break
        cut_now = cut.copy()
        # every row whose rounded-up plan breaks a limit solves within it lowered (step-limited ones
        # too: at a binding limit over several periods they end short of the tolerance more often)
        whole = todo
        cut_now[whole] = next_cut(cut[whole], np.asarray(res.broken)[whole], np.asarray(res.over)[whole],
                                  np.asarray(res.overshoot)[whole], np.asarray(res.step)[whole], tries[whole])
        tries[whole] += 1
        todo = todo[(cut_now[todo] < np.asarray(res.limit)[todo]).all(-1)]  # a limit lowered to zero: no plan
        for lo in range(0, todo.size, batch):
            rows = todo[lo:lo + batch]
            pad = np.concatenate([rows, np.repeat(rows[-1:], batch - rows.size)])  # same compiled shape
            out = solve(values[pad], jax.tree.map(lambda x: np.asarray(x)[pad], res.start), cut_now[pad], bound[pad])
            out = jax.tree.map(lambda x: np.asarray(x)[:rows.size], out)
            take = rank(out.status, out.whole_ok) <= r[rows]
            idx = rows[take]
            res = jax.tree.map(lambda old, new: _put(old, idx, new[take]), res, out)
            done_rounds[rows] = attempt + 1
            lowered[idx] = (cut_now[idx] > 0).any(-1)
            cut[rows] = cut_now[rows]
            bound[idx] = np.asarray(out.bound)[take]
    return Repaired(res, done_rounds, lowered)


def _put(old, idx, new):
    a = np.array(old, copy=True)
    a[idx] = new
    return a
