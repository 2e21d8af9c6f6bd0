"""The body of `tokenmargin-calibrate`: fit, report before/after error, write a ready config."""

from __future__ import annotations

import hashlib
import logging
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import yaml

from optimizer import io
from optimizer.calibration import fit
from optimizer.cases import (BUNDLED_CASES, BUNDLED_LATENCY, BUNDLED_SLO_CASES, build_cases, build_latency_cases,
                             error_summary, predict_frame, read_cases, read_latency_cases)
from optimizer.catalog import to_schema
from optimizer.errors import DataError
from optimizer.schema import CalibrateConfig, EfficiencyConfig

log = logging.getLogger("tokenmargin")


def efficiency_yaml(eff: EfficiencyConfig, header: str) -> str:
    """The text of a ``conf/efficiency/<name>.yaml`` file holding ``eff``."""
    body = {"defaults": ["base_efficiency", "_self_"], **asdict(eff)}
    return header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def load_regimes(cases_path: Path, slo_path: Path | None, start: EfficiencyConfig) -> tuple[dict, dict]:
    """(regime name -> {mode: CaseBatch}, regime name -> frame) of the max-throughput and latency-bound tables."""
    regimes, frames = {}, {}
    for name, path in (("max_throughput", cases_path), ("latency_bound", slo_path)):
        if path is None:
            continue
        df = read_cases(path)
        g = build_cases(df, start)
        if not g.batches:
            raise DataError(f"no predictable row in '{path}' (see skipped_reason in predictions)")
        regimes[name], frames[name] = g.batches, df
    return regimes, frames


def calibrate(cases_path: Path, start: EfficiencyConfig, per_family: bool, steps: int,
              learning_rate: float, fit_mem_util: bool = True, latency_path: Path | None = None,
              slo_path: Path | None = None) -> tuple[EfficiencyConfig, dict, dict, dict]:
    """Fit on the cases files; returns (fitted, report, predictions_before, predictions_after) by regime."""
    regimes, frames = load_regimes(cases_path, slo_path, start)
    latency = build_latency_cases(read_latency_cases(latency_path)) if latency_path else None
    fitted, losses = fit(regimes, start, latency=latency, per_family=per_family, steps=steps,
                         learning_rate=learning_rate, fit_mem_util=fit_mem_util)
    before = {k: predict_frame(df, start) for k, df in frames.items()}
    after = {k: predict_frame(df, fitted) for k, df in frames.items()}
    itl_err = {}
    if latency is not None:
        import numpy as np

        from optimizer.cases import efficiency_table, predict_itl
        for name, eff in (("before", start), ("after", fitted)):
            e = np.abs(np.asarray(predict_itl(latency, efficiency_table(eff))) / np.asarray(latency.measured_itl_s) - 1)
            itl_err[f"itl_median_ape_pct_{name}"] = round(float(np.median(e)) * 100, 2)
    report = {"cases": str(cases_path), "slo_cases": str(slo_path) if slo_path else None,
              "latency_cases": str(latency_path) if latency_path else None,
              "per_family": per_family, "steps": steps, "learning_rate": learning_rate, **losses}
    for k in frames:
        sb, sa = error_summary(before[k]), error_summary(after[k])
        report[k] = {"n_rows": len(frames[k]), "n_predicted": sa["n_with_measurement"],
                     "median_ape_pct_before": sb["median_ape_pct"], "median_ape_pct_after": sa["median_ape_pct"],
                     "mean_ape_pct_after": sa["mean_ape_pct"],
                     "by_gpu_after": sa["by_gpu"].to_dict(orient="records"),
                     "by_model_after": sa["by_model"].to_dict(orient="records")}
    report.update(itl_err)
    report["fitted"] = asdict(fitted)
    return fitted, report, before, after


def run(cfg, outdir: Path) -> Path:
    c: CalibrateConfig = to_schema(cfg, CalibrateConfig)
    cases = Path(c.cases) if c.cases else BUNDLED_CASES
    slo = (Path(c.slo_cases) if c.slo_cases else BUNDLED_SLO_CASES) if c.use_slo else None
    try:
        shown = cases.resolve().relative_to(Path.cwd())
    except ValueError:
        shown = cases
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in (cases, slo) if p is not None and p.exists())
                            ).hexdigest()[:12]
    fitted, report, before, after = calibrate(
        cases, c.efficiency, c.per_family, c.steps, c.learning_rate, c.fit_mem_util,
        (Path(c.latency_cases) if c.latency_cases else BUNDLED_LATENCY) if c.use_latency else None, slo)
    command = "tokenmargin-calibrate " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    regimes = [k for k in ("max_throughput", "latency_bound") if k in report]
    errs = "; ".join(f"{k} {report[k]['n_predicted']} rows, median APE {report[k]['median_ape_pct_before']:.1f}% -> "
                     f"{report[k]['median_ape_pct_after']:.1f}%" for k in regimes)
    fitted.source = (f"fitted by `{command.strip()}` on {shown}" + (f" + {slo.name}" if slo else "")
                     + f" (sha256 {digest}); {errs}; families absent from the data take the "
                     "fitted factors scaled by their measured matmul_share / hbm_share (microbenchmarks, not fitted; "
                     "sources in conf/efficiency/start.yaml), or default_* = mean of the fitted families where no "
                     "share is measured")
    header = ("# Roofline efficiency factors fitted by tokenmargin-calibrate.\n"
              f"# Data: {shown}" + (f" + {slo.name}" if slo else "") + f" (sha256 {digest}).\n"
              f"# Command: {command.strip()}\n"
              "# Copy to conf/efficiency/<name>.yaml and select it with efficiency=<name>.\n")
    report["fitted"]["source"] = fitted.source

    def write(stage: Path) -> None:
        io.write_text(stage / "efficiency.yaml", efficiency_yaml(fitted, header))
        io.write_json(stage / "calibration.json", report)
        for k in before:
            io.write_frame(stage / f"predictions_before_{k}.csv", before[k])
            io.write_frame(stage / f"predictions_after_{k}.csv", after[k])

    io.publish(outdir, write, status="calibrated")
    path = outdir / "efficiency.yaml"
    for k in regimes:
        r = report[k]
        print(f"{k}: {r['n_predicted']} of {r['n_rows']} rows predicted; median absolute % error "
              f"{r['median_ape_pct_before']:.1f} -> {r['median_ape_pct_after']:.1f} (mean {r['mean_ape_pct_after']:.1f})")
    if "itl_median_ape_pct_after" in report:
        print(f"inter-token latency median % error (online serving): {report['itl_median_ape_pct_before']:.1f} -> "
              f"{report['itl_median_ape_pct_after']:.1f}")
    print(f"fitted: bw_eff={fitted.bw_eff} flops_eff={fitted.flops_eff} moe_eff={fitted.moe_eff} "
          f"step_overhead_ms={fitted.step_overhead_ms} layer_overhead_us={fitted.layer_overhead_us} "
          f"moe_layer_overhead_us={fitted.moe_layer_overhead_us} "
          f"collective_latency_us={fitted.collective_latency_us} ep_imbalance={fitted.ep_imbalance}")
    print(f"written: {path}")
    return path
