"""One solver interface (after optimistix and jaxopt).

* :mod:`.base` — :class:`Task` (problem, active constraints, fleet), :class:`Solution`,
  :class:`RESULTS`, the :class:`Solver` protocol.
* :mod:`.auglag` — :class:`AugLag`: augmented Lagrangian with Adam, every constraint.
* :mod:`.dual` — :class:`Dual`: closed-form prices at capacity prices, certified bounds; the relaxed
  problem with GPU caps and budgets.
* :mod:`.fleet` — :class:`FleetDual`: the same for a fixed fleet (capacity prices per pool).
* :mod:`.integer` — :class:`IntegerRepair`: whole replicas, wrapping a fixed-fleet inner solver.
* :mod:`.choose` — :func:`choose`: which solver, behind ``solver.method`` (single runs and sweeps).
"""

from optimizer.solve.auglag import AugLag
from optimizer.solve.base import INFEASIBLE_TOL, RESULTS, Solution, Solver, Stats, Task, fixed_task, relaxed_task
from optimizer.solve.choose import METHODS, choose
from optimizer.solve.dual import Dual, DualStart
from optimizer.solve.fleet import FleetDual, FleetStart
from optimizer.solve.integer import IntegerRepair

__all__ = ["AugLag", "Dual", "DualStart", "FleetDual", "FleetStart", "INFEASIBLE_TOL", "IntegerRepair", "METHODS", "RESULTS", "Solution",
           "Solver", "Stats", "Task", "choose", "fixed_task", "relaxed_task"]
