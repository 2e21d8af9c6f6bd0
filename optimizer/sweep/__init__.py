"""Vectorised what-if sweeps: thousands of scenarios in one compiled, sharded, chunked solve.

* :mod:`.axes` — config paths → scenario numbers, grids and Latin-hypercube designs;
* :mod:`.batch` — the per-chunk program (assemble → solve, vmapped and sharded) and its table;
* :mod:`.store` — finished chunks on disk, locks, resume;
* :mod:`.run` — :func:`run_sweep`, the loop tying them together;
* :mod:`.report` — axis effects, tornado and heatmap plots.
"""

from optimizer.sweep.axes import apply_axes, axes_of, check_axes, design, resolve_path
from optimizer.sweep.batch import SweepResult, plan_flags, sweep_key
from optimizer.sweep.report import axis_effects, sweep_plots
from optimizer.sweep.run import default_store, run_sweep
from optimizer.sweep.store import chunk_folder, chunk_lock, chunk_path

__all__ = ["SweepResult", "apply_axes", "axes_of", "axis_effects", "check_axes", "chunk_folder", "chunk_lock",
           "chunk_path", "default_store", "design", "plan_flags", "resolve_path", "run_sweep", "sweep_key",
           "sweep_plots"]
