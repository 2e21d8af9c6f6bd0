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
import pandas as pd

from optimizer.cases import (BUNDLED_CASES, BUNDLED_LATENCY, build_cases, build_latency_cases, error_summary,
                             predict_frame, read_cases)
from optimizer.catalog import to_schema
from optimizer.errors import DataError
from optimizer.schema import CalibrateConfig, EfficiencyConfig

log = logging.getLogger("tokenmargin")


def efficiency_yaml(eff: EfficiencyConfig, header: str) -> str:
    """The text of a ``conf/efficiency/<name>.yaml`` file holding ``eff``."""
    body = {"defaults": ["base_efficiency", "_self_"], **asdict(eff)}
    return header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def calibrate(cases_path: Path, start: EfficiencyConfig, per_family: bool, steps: int,
              learning_rate: float, fit_mem_util: bool = True, latency_path: Path | None = None
              ) -> tuple[EfficiencyConfig, dict, object, object]:
    """Fit on a cases file; returns (fitted, report, predictions_before, predictions_after)."""
    df = read_cases(cases_path)
    batch, _, _ = build_cases(df)
    if batch is None:
        raise DataError(f"no predictable row in '{cases_path}' (see skipped_reason in predictions)")
    latency = build_latency_cases(pd.read_csv(latency_path)) if latency_path else None
    fitted, losses = fit(batch, start, latency=latency, per_family=per_family, steps=steps, learning_rate=learning_rate,
                          fit_mem_util=fit_mem_util)
    before, after = predict_frame(df, start), predict_frame(df, fitted)
    itl_err = {}
    if latency is not None:
        import numpy as np

        from optimizer.cases import efficiency_table, predict_itl
        for name, eff in (("before", start), ("after", fitted)):
            e = np.abs(np.asarray(predict_itl(latency, efficiency_table(eff))) / np.asarray(latency.measured_itl_s) - 1)
            itl_err[f"itl_median_ape_pct_{name}"] = round(float(np.median(e)) * 100, 2)
    sb, sa = error_summary(before), error_summary(after)
    report = {
        "cases": str(cases_path), "n_rows": len(df), "n_predicted": sa["n_predicted"],
        "latency_cases": str(latency_path) if latency_path else None,
        "per_family": per_family, "steps": steps, "learning_rate": learning_rate, **losses,
        "median_ape_pct_before": sb["median_ape_pct"], "mean_ape_pct_before": sb["mean_ape_pct"],
        "median_ape_pct_after": sa["median_ape_pct"], "mean_ape_pct_after": sa["mean_ape_pct"],
        "by_gpu_after": sa["by_gpu"].to_dict(orient="records"),
        "by_model_after": sa["by_model"].to_dict(orient="records"),
        **itl_err,
        "fitted": asdict(fitted),
    }
    return fitted, report, before, after


def run(cfg, outdir: Path) -> Path:
    c: CalibrateConfig = to_schema(cfg, CalibrateConfig)
    cases = Path(c.cases) if c.cases else BUNDLED_CASES
    try:
        shown = cases.resolve().relative_to(Path.cwd())
    except ValueError:
        shown = cases
    digest = hashlib.sha256(cases.read_bytes()).hexdigest()[:12] if cases.exists() else "missing"
    fitted, report, before, after = calibrate(
        cases, c.efficiency, c.per_family, c.steps, c.learning_rate, c.fit_mem_util,
        (Path(c.latency_cases) if c.latency_cases else BUNDLED_LATENCY) if c.use_latency else None)
    command = "tokenmargin-calibrate " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    fitted.source = (f"fitted by `{command.strip()}` on {shown} (sha256 {digest}, "
                     f"{report['n_predicted']} rows); median APE {report['median_ape_pct_before']:.1f}% -> "
                     f"{report['median_ape_pct_after']:.1f}%; families absent from the data use "
                     f"default_* = mean of the fitted families")
    header = ("# Roofline efficiency factors fitted by tokenmargin-calibrate.\n"
              f"# Data: {shown} (sha256 {digest}).\n# Command: {command.strip()}\n"
              "# Copy to conf/efficiency/<name>.yaml and select it with efficiency=<name>.\n")
    path = io.write_text(outdir / "efficiency.yaml", efficiency_yaml(fitted, header))
    report["fitted"]["source"] = fitted.source
    io.write_json(outdir / "calibration.json", report)
    io.write_frame(outdir / "predictions_before.csv", before)
    io.write_frame(outdir / "predictions_after.csv", after)
    print(f"cases: {cases} ({report['n_predicted']} of {report['n_rows']} rows predicted)")
    print(f"median absolute % error: {report['median_ape_pct_before']:.1f} -> {report['median_ape_pct_after']:.1f}")
    print(f"mean absolute % error:   {report['mean_ape_pct_before']:.1f} -> {report['mean_ape_pct_after']:.1f}")
    if "itl_median_ape_pct_after" in report:
        print(f"inter-token latency median % error (online serving): {report['itl_median_ape_pct_before']:.1f} -> "
              f"{report['itl_median_ape_pct_after']:.1f}")
    print(f"fitted: bw_eff={fitted.bw_eff} flops_eff={fitted.flops_eff} "
          f"step_overhead_ms={fitted.step_overhead_ms}")
    print(f"written: {path}")
    return path
