"""Run a sweep: the base scenario, its warm start, the chunk loop over the store, the result table.

A sweep's scenarios are solved chunk by chunk (:mod:`optimizer.sweep.batch`); finished chunks are
stored (:mod:`optimizer.sweep.store`), so an interrupted sweep resumes where it stopped and gives the
same result as an uninterrupted one, and processes sharing a store split the work.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.sharding import Mesh

from optimizer import aot, io
from optimizer.constraints import active_mask
from optimizer.errors import ConfigError
from optimizer.problem import (SERVING_FIELDS, assemble_jit, candidate_scores_jit, prune_candidates, scenario_inputs,
                               serving_of_jit)
from optimizer.schema import RunConfig
from optimizer.solve import Dual, choose, relaxed_task
from optimizer.solve.auglag import multistart
from optimizer.solve.check import floors_relaxed
from optimizer.solve.choose import dual_of, peak_limits
from optimizer.solve.dual import dual_program
from optimizer.sweep.axes import (MAX_PROBES, activated, axes_of, check_axes, check_rents, design, probe_rows,
                                  resolve_path)
from optimizer.sweep.batch import chunk_program, probe_program, repair_program, result_frame, sweep_key
from optimizer.sweep.repair import repair
from optimizer.sweep.store import chunk_folder, chunk_lock, chunk_path, read_chunk, remove_stale_temporaries, try_lock


def run_sweep(cfg: RunConfig, outdir: Path, store: Path, progress: bool = False,
              stop_after_chunks: int | None = None, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Solve every scenario of ``cfg.sweep`` and write ``sweep.parquet`` into ``outdir``.

    Args:
      cfg: the run config (its ``sweep`` has the axes).
      outdir: the run directory. store: where finished chunks live (the unit of resume), in a folder of
        this sweep's own (:func:`chunk_folder`); any number of sweeps and processes may share a store.
        A process solves a chunk under its lock; one whose lock another process holds is done last,
        from that process's file. Stored chunks are validated; an invalid one is solved again.
      progress: show a scenarios-per-second bar. stop_after_chunks: stop early (for tests of resume).
    """
    sw = cfg.sweep
    if not sw.axes:
        raise ConfigError("sweep.axes is empty: pick a sweep (sweep=what-if) or add axes")
    numbers, pools, labels = scenario_inputs(cfg)  # validates every field, sweep.chunk_size and starts included
    axes = axes_of(sw)
    names = list(axes)
    targets = [resolve_path(axes[n].path, labels) for n in names]
    plan = design(sw)
    check_axes(cfg, axes, plan)
    relative = [bool(axes[n].relative) for n in names]
    check_rents(numbers, targets, relative, plan, names, list(labels.gpus))
    pools = prune_candidates(pools, *_candidate_scores(numbers, pools, plan, targets, relative))
    lab = activated(labels, targets)
    n_total = len(plan)
    base_prob = aot.exported("assemble", assemble_jit, (numbers, pools))(numbers, pools)
    active = jnp.asarray(active_mask(lab, base_prob, fixed_fleet=False))
    steps = sw.dual_steps_periods if np.shape(base_prob.profile)[-1] > 1 else sw.dual_steps
    solver = choose(active, len(labels.gpus), cfg.solver, dual_steps=steps, dual_temperature=sw.dual_temperature,
                    shared=labels.has_shared_products)
    log(f"sweep '{sw.name}': solver {solver.name}")
    base_task = relaxed_task(base_prob, active)
    G = len(labels.gpus)
    check = None
    if isinstance(solver, Dual):
        # the base scenario's cost split warm-starts every scenario (a long solve from an even split)
        warm = _dual_warm(cfg, base_task, labels.has_shared_products, solver.cap_weights)
    else:  # the base scenario's optimum warm-starts every scenario of the sweep
        base, _ = multistart(solver, base_task, cfg.solver.starts, cfg.solver.seed)
        warm = base.decision
        # every row's plan is checked against the dual's on its task with the floors relaxed
        # (optimizer.solve.check), warm-started as a dual sweep's rows are
        relaxed = floors_relaxed(np.asarray(active), G)
        caps = peak_limits(relaxed, G)
        check = dual_of(cfg.solver, steps, sw.dual_temperature, labels.has_shared_products, warm=True, caps=caps)
        warm = (warm, _dual_warm(cfg, relaxed_task(base_prob, relaxed), labels.has_shared_products, caps))
    reuse = not any(t.field in SERVING_FIELDS for t in targets)
    serving = aot.exported("serving", serving_of_jit, (numbers, pools))(numbers, pools) if reuse else None
    devices = jax.devices()
    mesh = Mesh(np.asarray(devices), ("scenarios",)) if len(devices) > 1 else None
    nd = len(devices)
    chunk = min(sw.chunk_size, n_total)
    chunk = max(nd, math.ceil(chunk / nd) * nd)  # a multiple of the device count
    program = chunk_program(targets, relative, solver, sw.starts, mesh, reuse, check)
    if mesh is None:  # traced once per machine (a rerun skips tracing; the compilation cache compiles)
        example = (numbers, np.zeros((chunk, len(names))), pools, active, warm, serving)
        program = aot.exported("sweep_chunk", program, example,
                               repr((targets, relative, solver, sw.starts, reuse, check)))
    fix = _repairer(sw, solver, numbers, pools, active, warm, serving, targets, relative, mesh, reuse, chunk, nd, check)
    key = sweep_key(cfg)
    folder = chunk_folder(store, key, chunk)  # this sweep's own folder: other sweeps in the store never mix
    folder.mkdir(parents=True, exist_ok=True)
    io.write_json(folder / "sweep_meta.json", {"key": key, "name": sw.name, "scenarios": n_total, "chunk_size": chunk,
                                                "axes": {n: axes[n].path for n in names}})
    remove_stale_temporaries(folder, log)
    if not sw.resume:
        old = list(folder.glob("chunk_*.parquet"))
        for p in old:
            p.unlink(missing_ok=True)
        if old:
            log(f"sweep.resume=false: deleted {len(old)} stored chunk(s) of this sweep, recomputing them")
    n_chunks = math.ceil(n_total / chunk)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n_total, unit="scenario", desc=f"sweep {sw.name}", smoothing=0.1)
    t0 = time.perf_counter()
    frames: dict[int, pd.DataFrame] = {}  # validated rows of every chunk done (here or by another process)
    held = []  # chunk locks this process holds (released on any way out)
    skipped = []  # chunks another process was solving when this one reached them
    solved = 0  # chunks solved here
    n_solved = 0  # scenarios solved here
    waited = 0.0  # seconds spent waiting for other processes' chunks
    pending = None  # the chunk in flight: its results are written while the next one computes

    def rows_of(c):
        return plan.iloc[c * chunk:(c + 1) * chunk]

    def take_stored(c) -> bool:
        df = read_chunk(chunk_path(folder, c), rows_of(c), c * chunk, log)
        if df is None:
            return False
        frames[c] = df
        if bar:
            bar.update(len(df))
        return True

    def unlock(lock):
        held.remove(lock)
        lock.release()

    def launch(c):
        vals = rows_of(c).to_numpy(float)
        if len(vals) < chunk:  # pad the last chunk (same compiled shape), drop the padding after
            vals = np.concatenate([vals, np.repeat(vals[-1:], chunk - len(vals), axis=0)])
        return program(numbers, jnp.asarray(vals), pools, active, warm, serving)  # dispatched asynchronously

    def finish(job):
        nonlocal n_solved
        res, c, lock = job
        rows, path = rows_of(c), chunk_path(folder, c)
        fixed = None
        if fix is not None:  # the rows left without a plan, solved again from their own state
            host = jax.tree.map(lambda x: np.asarray(x)[:len(rows)], res)
            fixed = repair(host, rows.to_numpy(float), fix, fix.batch, sw.repair_rounds,
                           np.asarray(host.checked) > 0 if fix.only_checked else None)
            res = fixed.result
        frame = result_frame(res, labels, rows, c * chunk, fixed, solver.name)
        try:  # the lock is held until the file is in place (atomically), so no one solves or reads it half-way
            io.write_frame(path, frame)
        finally:
            unlock(lock)
        frames[c] = frame
        if bar:
            bar.update(len(frame))
        n_solved += len(rows)

    try:
        for c in range(n_chunks):
            if take_stored(c):
                continue
            if stop_after_chunks is not None and solved >= stop_after_chunks:
                break
            lock = chunk_lock(folder, c)
            if not try_lock(lock):  # another process is solving it: come back for it at the end
                skipped.append(c)
                continue
            held.append(lock)
            if take_stored(c):  # finished by another process since the look above
                unlock(lock)
                continue
            res = launch(c)
            if pending is not None:
                finish(pending)
            pending = (res, c, lock)
            solved += 1
        if pending is not None:
            job, pending = pending, None
            finish(job)
        for c in skipped:  # wait for the other process; use its file, or solve the chunk if it left none
            if stop_after_chunks is not None and solved >= stop_after_chunks:
                break
            lock = chunk_lock(folder, c)
            t = time.perf_counter()
            lock.acquire()
            waited += time.perf_counter() - t
            held.append(lock)
            if take_stored(c):
                unlock(lock)
                continue
            finish((launch(c), c, lock))
            solved += 1
    finally:
        for lock in list(held):
            unlock(lock)
        if bar:
            bar.close()
    if len(frames) < n_chunks:
        log(f"sweep stopped with {len(frames)} of {n_chunks} chunks done; rerun the same command to resume")
        return pd.DataFrame()
    result = pd.concat([frames[c] for c in range(n_chunks)], ignore_index=True)
    wall = time.perf_counter() - t0
    io.write_frame(outdir / "sweep.parquet", result)
    n_bad = int((~result["converged"]).sum())
    rate = f"{n_solved / max(wall - waited, 1e-9):,.0f} scenarios/s" if n_solved else "nothing to solve"
    log(f"sweep '{sw.name}': {n_solved} of {n_total} scenarios solved here ({n_total - n_solved} reused) in "
        f"{wall:.1f} s ({rate}, {len(devices)} device(s)); {n_bad} not converged (flagged in the 'status' column)")
    if check is not None:
        n_replaced = int((result["solver"] == "dual").sum())
        log(f"sweep '{sw.name}': the dual's plan replaced the augmented Lagrangian's in {n_replaced} scenario(s) "
            "('solver' column): it met every constraint and earned more, or the augmented Lagrangian's was infeasible")
    return result


def _dual_warm(cfg: RunConfig, base_task, shared: bool, caps: bool):
    """The state of the dual solved from scratch on the base scenario's task, as every warm-started
    scenario after it solves (``sweep.dual_temperature``): their start, each taking its first
    charge steps afresh."""
    solver = dual_of(cfg.solver, temperature=cfg.sweep.dual_temperature, shared=shared, caps=caps)
    y0 = solver.init(base_task)
    _, state = aot.exported("dual_solve", dual_program(solver), (base_task, y0), repr(solver))(base_task, y0)
    return state.start._replace(age=None)


def _candidate_scores(numbers, pools, plan: pd.DataFrame, targets, relative) -> tuple[np.ndarray, np.ndarray]:
    """GPU-s per request and feasibility of every candidate deployment, (M, S, P, C), at the base
    scenario and, when a serving input is an axis, at the design's probe rows
    (:func:`optimizer.sweep.axes.probe_rows`); each program is traced once per machine."""
    gpu_s, ok = aot.exported("candidate_scores", candidate_scores_jit, (numbers, pools))(numbers, pools)
    gpu_s, ok = np.asarray(gpu_s)[None], np.asarray(ok)[None]
    rows = probe_rows(plan, [t.field in SERVING_FIELDS for t in targets])
    if len(rows):
        values = plan.iloc[rows].to_numpy(float)
        values = np.concatenate([values, np.repeat(values[-1:], MAX_PROBES - len(values), axis=0)])  # one shape
        program = aot.exported("sweep_probes", probe_program(targets, relative), (numbers, values, pools),
                               repr((targets, relative)))
        g, o = program(numbers, values, pools)
        gpu_s, ok = np.concatenate([gpu_s, np.asarray(g)]), np.concatenate([ok, np.asarray(o)])
    return gpu_s, ok


class _Repairer:
    """The repair program on ``batch`` rows at a time, compiled (or loaded) when a row first needs it."""

    def __init__(self, make: Callable, fixed_args: tuple, batch: int, only_checked: bool = False):
        self.make, self.fixed_args, self.batch, self.program = make, fixed_args, batch, None
        self.only_checked = only_checked  # repair only the rows holding the checking dual's plan

    def __call__(self, values, start, cut, bound):
        if self.program is None:
            self.program = self.make()
        base, pools, active, serving = self.fixed_args
        return self.program(base, values, pools, active, serving, start, cut, bound)


def _repairer(sw, solver, numbers, pools, active, warm, serving, targets, relative, mesh, reuse: bool, chunk: int,
              n_devices: int, check: Dual | None = None) -> _Repairer | None:
    """The sweep's repair pass (:mod:`optimizer.sweep.repair`), ``sweep.repair_rounds`` > 0: dual
    solves, of every row of a dual sweep, or of the rows of an augmented-Lagrangian sweep that hold
    the plan of its checking dual ``check`` (on the task with its floors relaxed; a plan that breaks
    a floor is not taken)."""
    if sw.repair_rounds <= 0 or not (isinstance(solver, Dual) or check is not None):
        return None
    floors = not isinstance(solver, Dual)
    dual = check if floors else solver
    start = (warm[1] if floors else warm)._replace(age=np.zeros(()))  # a row's own state carries its age
    steps = sw.repair_steps or 2 * dual.steps
    fixer = dataclasses.replace(dual, steps=steps)
    batch = min(REPAIR_BATCH, chunk)
    batch = max(n_devices, math.ceil(batch / n_devices) * n_devices)
    n_limits = np.shape(start.limit_price)[-1]

    def make():
        program = repair_program(targets, relative, fixer, mesh, reuse, floors)
        if mesh is not None:
            return program
        example = (numbers, np.zeros((batch, len(targets))), pools, active, serving,
                   jax.tree.map(lambda x: np.zeros((batch,) + np.shape(x)), start), np.zeros((batch, n_limits)),
                   np.zeros(batch))
        return aot.exported("sweep_repair", program, example, repr((targets, relative, fixer, reuse, floors)))

    return _Repairer(make, (numbers, pools, active, serving), batch, floors)


REPAIR_BATCH = 16
"""Rows per call of the repair program (a fixed shape: one compile; few rows need it on a usual sweep)."""


def default_store(cfg: RunConfig) -> Path:
    """Chunk store of a sweep: ``sweep.directory`` or ``outputs/sweeps/<name>``. Each sweep keeps its
    chunks in its own ``<sweep_key>-c<chunk>`` folder inside (:func:`chunk_folder`), so sweeps may share one."""
    if cfg.sweep.directory:
        return Path(cfg.sweep.directory)
    return Path("outputs") / "sweeps" / cfg.sweep.name
