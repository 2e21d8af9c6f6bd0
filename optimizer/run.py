"""The body of `tokenmargin`: solve the scenario and export the plan (Hydra-free apart from the cfg)."""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from optimizer import figures, io
from optimizer import progress as progress_mod
from optimizer.catalog import to_schema
from optimizer.engine import Result, optimize
from optimizer.errors import SolverFailure
from optimizer.plan import (check_on_demand_caps, fleet_hourly_table, fleet_table, loss_making, plan_table, prepare_tables,
                            reserved_commitment, segment_summary)
from optimizer.price_sheet import PRICE_COLUMNS, price_sheet_markdown, price_sheet_table
from optimizer.report import console_summary, markdown_report
from optimizer.schema import RunConfig

log = logging.getLogger("tokenmargin")

PLAN_FILES = ("plan.csv", "plan.parquet", "plan.json", "plan.md", "fleet.csv", "fleet_hourly.csv", "reserved.csv")


def build_summary(res: Result, cfg: RunConfig, plan, fleet, reserved=None) -> dict:
    """The `summary.json` content: totals, per segment, solver status and diagnostics."""
    b = res.final_breakdown
    last = list(res.stages.values())[-1]
    summary = {
        "scenario": cfg.demand.name, "description": cfg.demand.description, "status": res.status,
        "recommended": res.ok,
        "violated_constraints": last.violated,
        "violation": float(res.final.violation), "grad_norm": float(res.final.stats.grad_norm),
        "solver": {k: asdict(v) for k, v in res.stages.items()},
        "solver_settings": asdict(cfg.solver),
        # a product sold to several segments at one price sheet: the dual's bound is per-segment pricing's
        "shared_price_sheets": bool(res.labels.has_shared_products),
        "integrality_loss_usd_per_day": None if res.integrality_loss_usd_per_day is None
        else round(res.integrality_loss_usd_per_day, 2),
    }
    if res.integrality_loss_usd_per_day is not None:
        rel = float(res.relaxed_breakdown.margin)
        summary["integrality_loss_pct"] = round(100 * res.integrality_loss_usd_per_day / max(abs(rel), 1e-9), 4)
    rev = float(np.asarray(b.revenue).sum())
    gpus = np.asarray(b.gpus)
    summary["totals"] = {
        "revenue_usd_per_day": round(rev, 2), "gpu_cost_usd_per_day": round(float(b.gpu_cost), 2),
        "margin_usd_per_day": round(float(b.margin), 2),
        "margin_pct": round(100 * float(b.margin) / rev, 3) if rev > 0 else 0.0,
        "gpus": round(float(gpus.sum()), 3),
    }
    summary["gpus_by_type"] = {g: round(float(gpus[i].sum()), 3) for i, g in enumerate(res.labels.gpus)
                               if gpus[i].sum() > 1e-6}
    if reserved is not None:  # the headline capacity decision: GPUs committed around the clock
        summary["reserved_commitment"] = reserved.to_dict(orient="records")
        summary["periods"] = {"count": cfg.time.periods, "hours_each": cfg.time.hours_per_period}
    if plan is not None:
        summary["segments"] = segment_summary(plan).to_dict(orient="records")
        at = plan[plan["price_at_bound"] != ""]
        summary["prices_at_bound"] = [f"{r.segment}/{r.model}: {r.price_at_bound}" for r in at.itertuples()]
        summary["loss_making"] = loss_making(plan)
    return summary


def run_sweep_job(c: RunConfig, cfg, outdir: Path) -> dict:
    """`tokenmargin sweep=<name>`: the vectorised sweep, its table, plots and summary (published as a unit)."""
    from optimizer.sweep import default_store

    store = default_store(c)
    out: dict = {}
    io.publish(outdir, lambda stage: out.update(_sweep_files(c, cfg, stage, store)), status="sweep")
    summary = out["summary"]
    if summary.get("status") == "interrupted":
        return summary
    print(f"sweep '{c.sweep.name}': {summary['scenarios']} scenarios, {summary['not_converged']} not converged")
    if "optimality_gap_bound" in summary:
        g = summary["optimality_gap_bound"]
        print(f"certified optimality gap (margin vs upper bound): median {100 * g['p50']:.3f} %, "
              f"p99 {100 * g['p99']:.3f} %, max {100 * g['max']:.3f} %")
    print(io.markdown_table(out["effects"]))
    print(f"\nwritten: {outdir / 'sweep.parquet'}")
    return summary


def _sweep_files(c: RunConfig, cfg, stage: Path, store: Path) -> dict:
    from optimizer.sweep import axis_effects, run_sweep, sweep_plots

    t0 = time.perf_counter()
    result = run_sweep(c, stage, store, progress=progress_mod.enabled(c.output.progress))
    io.write_text(stage / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if result.empty:
        summary = {"status": "interrupted", "recommended": False, "store": str(store)}
        io.write_json(stage / "summary.json", summary)
        return {"summary": summary}
    names = list(c.sweep.axes)
    effects = axis_effects(result, names)
    io.write_frame(stage / "axis_effects.csv", effects)
    plots = [p.name for p in sweep_plots(stage, result, effects, c.sweep.heatmap)] if c.output.plots else []
    ok = result["converged"]
    summary = {
        "scenario": c.demand.name, "sweep": c.sweep.name, "scenarios": int(len(result)),
        "converged": int(ok.sum()), "not_converged": int((~ok).sum()),
        "status_counts": result["status"].value_counts().to_dict(), "store": str(store),
        "margin_usd_per_day": {q: round(float(result.loc[ok, "margin_usd_per_day"].quantile(v)), 2)
                               for q, v in (("p5", 0.05), ("p50", 0.5), ("p95", 0.95))} if ok.any() else {},
        "axis_effects": effects.to_dict(orient="records"), "plots": plots,
        "wall_s": round(time.perf_counter() - t0, 3),
    }
    summary["rows_price_at_bound"] = int((ok & (result["price_at_bound"] != "")).sum())
    summary["rows_without_whole_fleet"] = int((~result["whole_fleet_feasible"]).sum())
    gap = result["optimality_gap_bound"]
    if gap.notna().any():  # the dual solver certifies each row against an upper bound
        summary["optimality_gap_bound"] = {q: round(float(gap.quantile(v)), 6)
                                           for q, v in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))}
    io.write_json(stage / "summary.json", summary)
    return {"summary": summary, "effects": effects}


def run(cfg, outdir: Path) -> dict:
    """Solve and publish the run's files as a unit: summary.json always, the plan files only for a
    recommended result (:func:`optimizer.io.publish`; ``manifest.json`` is written last)."""
    c: RunConfig = to_schema(cfg, RunConfig)
    helper = figures.helper_for(c.output.plots and not c.sweep.axes)  # started by the console script, if any
    try:
        if c.sweep.axes:
            return run_sweep_job(c, cfg, outdir)
        Path(outdir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".staging-figures-", dir=outdir) as scratch:
            try:
                return _single_run(c, cfg, Path(outdir), helper, Path(scratch))
            finally:  # it may be writing in ``scratch``: ended before that is removed
                if helper is not None:
                    helper.close()
    finally:
        if helper is not None:
            helper.close()


def _single_run(c: RunConfig, cfg, outdir: Path, helper, scratch: Path) -> dict:
    """A single run: solve, then publish the plan (figures drawn with ``helper``'s help; those it
    draws during the solve are written in the folder ``scratch``, then moved into the plan)."""
    t0 = time.perf_counter()
    show = progress_mod.enabled(c.output.progress)
    from optimizer import report

    early = []  # figures of the problem, drawn by the helper in ``scratch`` while the solve runs
    plotting = []  # the report's program and matplotlib, loaded beside the rest of the run

    def prepare(prob, labels) -> None:  # in the background, while the relaxed solve runs
        if c.output.plots:  # the helper's figures first: it is idle until it has them
            if helper is not None and helper.draw(made := report.early_figures(scratch, prob, labels)):
                early.extend(made)
            plotting.append(threading.Thread(target=report.prepare, args=(prob, labels), name="plots-prepare"))
            plotting[-1].start()
        io.import_writers()
        prepare_tables(prob)

    res = optimize(c, show_bar=show, also_compile=prepare)
    drawing = None
    if res.ok and c.output.plots:  # the helper draws the prices' figure while the tables and files are made
        drawing = report.start_plots(scratch, res, helper, early)
    plan = plan_table(res.prob, res.labels, res.final_breakdown)
    fleet = fleet_table(res.prob, res.labels, res.final_breakdown)
    hourly = fleet_hourly_table(res.prob, res.labels, res.final_breakdown, c.time.hours_per_period)
    reserved = reserved_commitment(res.prob, res.labels, res.final_breakdown)
    sheet = price_sheet_table(res.prob, res.labels, res.final_breakdown)
    summary = build_summary(res, c, plan if res.ok else None, fleet, reserved)
    summary["wall_s"] = round(time.perf_counter() - t0, 3)

    if res.ok:  # a NaN or inf is reported, never exported as a plan
        check_on_demand_caps(res.prob, res.labels, res.final_breakdown)
        io.check_finite(plan, "the plan")
        io.check_finite(fleet, "the fleet table", blank_ok=("on_demand_usd_per_gpu_hour",))  # blank: no on-demand rent
        io.check_finite(hourly, "the hourly fleet table")
        io.check_finite(sheet[PRICE_COLUMNS], "the price sheet")
    if drawing is not None:  # drawn here while the helper draws its share
        drawing.add(report.fleet_figures(scratch, res, fleet, hourly))

    def write(stage: Path) -> None:
        io.write_text(stage / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        if res.ok:
            for name in ("plan.csv", "plan.parquet", "plan.json"):
                io.write_frame(stage / name, plan)
            io.write_frame(stage / "fleet.csv", fleet)
            io.write_frame(stage / "fleet_hourly.csv", hourly)
            io.write_frame(stage / "reserved.csv", reserved)
            io.write_frame(stage / "price_sheet.csv", sheet)
            io.write_frame(stage / "price_sheet.json", sheet)
            io.write_text(stage / "price_sheet.md", price_sheet_markdown(sheet, res.labels.scenario))
            io.write_text(stage / "plan.md", markdown_report(summary, plan, fleet, segment_summary(plan), reserved))
            if drawing is not None:
                for thread in plotting:  # matplotlib imported (what it failed to import fails again here)
                    thread.join()
                summary["plots"] = [p.name for p in report.finish_plots(drawing, stage)]
        io.write_json(stage / "summary.json", summary)

    io.publish(outdir, write, status=res.status)
    print(console_summary(summary, plan if res.ok else None))
    if not res.ok:
        raise SolverFailure(
            f"no recommended plan: the solve ended with status '{res.status}'"
            + (f"; violated: {'; '.join(summary['violated_constraints'])}" if summary["violated_constraints"] else "")
            + f". Diagnostics are in {outdir / 'summary.json'}")
    print(f"\nplan written to {outdir}")
    return summary
