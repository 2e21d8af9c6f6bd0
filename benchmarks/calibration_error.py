"""Cost-model accuracy on measured throughput: in-sample and held-out errors.

Prints (and writes to ``benchmarks/results/calibration_error.{md,json}``):
  * in-sample median / mean absolute percentage error of the calibrated model;
  * leave-one-GPU-out: for each GPU, fit on the other GPUs' rows, predict that GPU's rows;
  * leave-one-model-out: the same per model.
Every fit starts from ``conf/efficiency/start.yaml`` like ``tokenmargin-calibrate``.

Usage: ``python benchmarks/calibration_error.py [--cases PATH] [--steps 600]``
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
from optimizer.cases import (BUNDLED_CASES, BUNDLED_LATENCY, build_cases, build_latency_cases,  # noqa: E402
                             efficiency_table, predict_frame, predict_itl, read_cases)
from optimizer.catalog import load_efficiency  # noqa: E402


LATENCY = build_latency_cases(pd.read_csv(BUNDLED_LATENCY))


def held_out(df: pd.DataFrame, column: str, steps: int) -> pd.DataFrame:
    """Absolute % errors of each group of ``column`` predicted by a fit on the other groups."""
    start = load_efficiency("start")
    parts = []
    for key in sorted(df[column].unique()):
        train, test = df[df[column] != key], df[df[column] == key]
        batch, _, _ = build_cases(train)
        fitted, _ = fit(batch, start, steps=steps, latency=LATENCY)
        pred = predict_frame(test.reset_index(drop=True), fitted)
        pred["held_out"] = key
        parts.append(pred)
    return pd.concat(parts, ignore_index=True)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=str(BUNDLED_CASES))
    ap.add_argument("--steps", type=int, default=600)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    df = read_cases(args.cases)
    in_sample = predict_frame(df, load_efficiency("calibrated"))
    logo = held_out(df, "gpu_key", args.steps)
    lomo = held_out(df, "model_key", args.steps)
    rows = []
    for name, frame in [("in-sample (conf/efficiency/calibrated.yaml)", in_sample),
                        ("leave-one-GPU-out", logo), ("leave-one-model-out", lomo)]:
        e = frame["abs_pct_error"].dropna()
        rows.append({"evaluation": name, "rows": int(len(e)), "median_ape_pct": round(float(e.median()), 1),
                     "mean_ape_pct": round(float(e.mean()), 1), "p90_ape_pct": round(float(np.percentile(e, 90)), 1)})
    itl = np.abs(np.asarray(predict_itl(LATENCY, efficiency_table(load_efficiency("calibrated"))))
                 / np.asarray(LATENCY.measured_itl_s) - 1) * 100
    rows.append({"evaluation": "in-sample inter-token latency (online serving, 8B BF16)", "rows": int(len(itl)),
                 "median_ape_pct": round(float(np.median(itl)), 1), "mean_ape_pct": round(float(np.mean(itl)), 1),
                 "p90_ape_pct": round(float(np.percentile(itl, 90)), 1)})
    table = pd.DataFrame(rows)
    by_gpu = logo.groupby("held_out")["abs_pct_error"].median().round(1).rename("logo_median_ape_pct")
    by_model = lomo.groupby("held_out")["abs_pct_error"].median().round(1).rename("lomo_median_ape_pct")
    md = ("# Cost-model error on measured throughput\n\n" + table.to_markdown(index=False)
          + "\n\n## Leave-one-GPU-out, median APE per held-out GPU\n\n" + by_gpu.reset_index().to_markdown(index=False)
          + "\n\n## Leave-one-model-out, median APE per held-out model\n\n" + by_model.reset_index().to_markdown(index=False)
          + f"\n\ncases: {Path(args.cases).name}; {time.perf_counter() - t0:.0f} s\n")
    print(md)
    out = ROOT / "benchmarks" / "results"
    io.write_text(out / "calibration_error.md", md)
    result = {"summary": rows, "logo_by_gpu": by_gpu.to_dict(), "lomo_by_model": by_model.to_dict()}
    io.write_json(out / "calibration_error.json", result)
    return result


if __name__ == "__main__":
    main()
