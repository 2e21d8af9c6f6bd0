"""Cost-model accuracy in both regimes: in-sample and held-out errors.

Regimes: maximum throughput (``measured_throughput.csv``) and latency-bound (``measured_slo_throughput.csv``:
fixed concurrency, min-latency with MTP, large-batch attention DP + EP), plus the online inter-token
latency of ``measured_online_serving_latency.csv``. Prints (and writes to
``benchmarks/results/calibration_error.{md,json}``), per regime:
  * in-sample median / mean / p90 absolute percentage error of ``conf/efficiency/calibrated.yaml``;
  * leave-one-GPU-out: for each GPU, fit on every other GPU's rows (both regimes), predict its rows;
  * leave-one-model-out: the same per model.
Every fit starts from ``conf/efficiency/start.yaml`` like ``tokenmargin-calibrate``.

Usage: ``python benchmarks/calibration_error.py [--steps 600] [--skip-lomo]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
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
from optimizer.catalog import load_efficiency  # noqa: E402

REGIMES = {"max_throughput": BUNDLED_CASES, "latency_bound": BUNDLED_SLO_CASES}
LATENCY_DF = read_latency_cases(BUNDLED_LATENCY)


def held_out(frames: dict, column: str, steps: int) -> dict:
    """Per regime, the absolute % errors of each group of ``column`` predicted by a fit on the other groups."""
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
            if len(test):
                pred = predict_frame(test, fitted)
                pred["held_out"] = key
                parts[k].append(pred)
    return {k: pd.concat(v, ignore_index=True) for k, v in parts.items() if v}


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
    rows, by_gpu, by_model = [], {}, {}
    for k, f in frames.items():
        rows.append(_row("in-sample (conf/efficiency/calibrated.yaml)", k, predict_frame(f, calibrated)["abs_pct_error"]))
    logo = held_out(frames, "gpu_key", args.steps)
    for k, f in logo.items():
        rows.append(_row("leave-one-GPU-out", k, f["abs_pct_error"]))
        by_gpu[k] = f.groupby("held_out")["abs_pct_error"].median().round(1)
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
    md.append(f"cases: {', '.join(p.name for p in REGIMES.values())}; {time.perf_counter() - t0:.0f} s")
    text = "\n".join(md) + "\n"
    print(text)
    out = ROOT / "benchmarks" / "results"
    io.write_text(out / "calibration_error.md", text)
    result = {"summary": rows, "logo_by_gpu": {k: v.to_dict() for k, v in by_gpu.items()},
              "lomo_by_model": {k: v.to_dict() for k, v in by_model.items()}}
    io.write_json(out / "calibration_error.json", result)
    return result


if __name__ == "__main__":
    main()
