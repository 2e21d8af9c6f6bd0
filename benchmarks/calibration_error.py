"""Cost-model accuracy in both regimes: in-sample and held-out errors.

Regimes: maximum throughput (``measured_throughput.csv``) and latency-bound (``measured_slo_throughput.csv``:
fixed concurrency, min-latency with MTP, large-batch attention DP + EP), plus the online inter-token
latency of ``measured_online_serving_latency.csv``. Prints (and writes to
``benchmarks/results/calibration_error.{md,json}``), per regime:
  * in-sample median / mean / p90 absolute percentage error of ``conf/efficiency/calibrated.yaml``;
  * leave-one-GPU-out: for each GPU, fit on every other GPU's rows (both regimes), predict its rows;
  * leave-one-model-out: the same per model;
  * leave-one-GPU-family-out: fit on the other families' rows, predict the family's rows twice — with the
    fitted factors carried over by the measured microbenchmark shares (``matmul_share`` / ``hbm_share``,
    what a run does for a family absent from the fit) and with the plain mean of the fitted families
    (the shares left out) — so the carry-over is judged on families it never saw.
Every fit starts from ``conf/efficiency/start.yaml`` like ``tokenmargin-calibrate``.

Usage: ``python benchmarks/calibration_error.py [--steps 600] [--skip-lomo]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from optimizer import io  # noqa: E402
from optimizer.calibration import fit  # noqa: E402
from optimizer.cases import (BUNDLED_CASES, BUNDLED_LATENCY, BUNDLED_SLO_CASES, build_cases,  # noqa: E402
                             build_latency_cases, efficiency_table, predict_frame, predict_itl, read_cases,
                             read_latency_cases)
from optimizer.catalog import load_efficiency, load_hardware  # noqa: E402

REGIMES = {"max_throughput": BUNDLED_CASES, "latency_bound": BUNDLED_SLO_CASES}


def with_family(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a ``gpu_family`` column (the catalog family of its ``gpu_key``)."""
    return frame.assign(gpu_family=[load_hardware(g).family for g in frame["gpu_key"]])


LATENCY_DF = with_family(read_latency_cases(BUNDLED_LATENCY))


def held_out(frames: dict, column: str, steps: int, variants: dict | None = None) -> dict:
    """Per regime, the absolute % errors of each group of ``column`` predicted by a fit on the other
    groups; with ``variants`` (name -> function of the fitted config), one prediction per variant,
    named in a ``variant`` column."""
    start = load_efficiency("start")
    keys = sorted(set().union(*(set(f[column].dropna().unique()) for f in frames.values())))
    parts = {k: [] for k in frames}
    for key in keys:
        train = {k: f[f[column] != key].reset_index(drop=True) for k, f in frames.items()}
        regimes = {k: build_cases(t, start).batches for k, t in train.items()}
        lat = LATENCY_DF[LATENCY_DF[column] != key] if column in LATENCY_DF else LATENCY_DF
        fitted, _ = fit(regimes, start, steps=steps, latency=build_latency_cases(lat) if len(lat) else None)
        for k, f in frames.items():
            test = f[f[column] == key].reset_index(drop=True)
            for name, make in (variants or {"": lambda e: e}).items():
                if len(test):
                    pred = predict_frame(test, make(fitted))
                    pred["held_out"], pred["variant"] = key, name
                    parts[k].append(pred)
    return {k: pd.concat(v, ignore_index=True) for k, v in parts.items() if v}


CARRY = {"shares": lambda e: e, "mean of fitted": lambda e: replace(e, matmul_share={}, hbm_share={})}
"""Leave-one-family-out variants: the factors a run uses (carried by the measured shares) and the
plain mean of the fitted families."""


def _row(name: str, regime: str, errors: pd.Series) -> dict:
    e = errors.dropna()
    return {"evaluation": name, "regime": regime, "rows": int(len(e)), "median_ape_pct": round(float(e.median()), 1),
            "mean_ape_pct": round(float(e.mean()), 1), "p90_ape_pct": round(float(np.percentile(e, 90)), 1)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--skip-lomo", action="store_true", help="skip leave-one-model-out")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    frames = {k: read_cases(p) for k, p in REGIMES.items()}
    calibrated = load_efficiency("calibrated")
    rows, by_gpu, by_model, by_family = [], {}, {}, {}
    for k, f in frames.items():
        rows.append(_row("in-sample (conf/efficiency/calibrated.yaml)", k, predict_frame(f, calibrated)["abs_pct_error"]))
    logo = held_out(frames, "gpu_key", args.steps)
    for k, f in logo.items():
        rows.append(_row("leave-one-GPU-out", k, f["abs_pct_error"]))
        by_gpu[k] = f.groupby("held_out")["abs_pct_error"].median().round(1)
    lofo = held_out({k: with_family(f) for k, f in frames.items()}, "gpu_family", args.steps, CARRY)
    for k, f in lofo.items():
        for name, part in f.groupby("variant", sort=False):
            rows.append(_row(f"leave-one-GPU-family-out ({name})", k, part["abs_pct_error"]))
        by_family[k] = f.groupby(["held_out", "variant"])["abs_pct_error"].median().round(1).unstack()
    if not args.skip_lomo:
        lomo = held_out(frames, "model_key", args.steps)
        for k, f in lomo.items():
            rows.append(_row("leave-one-model-out", k, f["abs_pct_error"]))
            by_model[k] = f.groupby("held_out")["abs_pct_error"].median().round(1)
    lat = build_latency_cases(LATENCY_DF)
    itl = np.abs(np.asarray(predict_itl(lat, efficiency_table(calibrated))) / np.asarray(lat.measured_itl_s) - 1) * 100
    rows.append(_row("in-sample inter-token latency (online serving, 8B BF16)", "online_latency", pd.Series(itl)))
    table = pd.DataFrame(rows)
    md = ["# Cost-model error on measured throughput, by regime", "", table.to_markdown(index=False), ""]
    for title, d in (("Leave-one-GPU-out", by_gpu), ("Leave-one-model-out", by_model)):
        for k, s in d.items():
            md += [f"## {title}, median APE per held-out key ({k})", "",
                   s.rename("median_ape_pct").reset_index().to_markdown(index=False), ""]
    for k, t in by_family.items():
        md += [f"## Leave-one-GPU-family-out, median APE per held-out family and variant ({k})", "",
               t.reset_index().to_markdown(index=False), ""]
    md.append(f"cases: {', '.join(p.name for p in REGIMES.values())}; {time.perf_counter() - t0:.0f} s")
    text = "\n".join(md) + "\n"
    print(text)
    out = ROOT / "benchmarks" / "results"
    io.write_text(out / "calibration_error.md", text)
    result = {"summary": rows, "logo_by_gpu": {k: v.to_dict() for k, v in by_gpu.items()},
              "lomo_by_model": {k: v.to_dict() for k, v in by_model.items()},
              "lofo_by_family": {k: v.to_dict(orient="index") for k, v in by_family.items()}}
    io.write_json(out / "calibration_error.json", result)
    return result


if __name__ == "__main__":
    main()
