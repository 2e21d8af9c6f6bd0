"""Measured (or user-supplied) benchmark cases → stacked deployment arrays, and predictions.

A cases CSV has the columns of ``shared/data/measured_throughput.csv``: ``model_key``, ``gpu_key``,
``precision_key``, ``tp``, ``num_gpus``, ``isl``, ``osl``, ``throughput_per_gpu_tok_s`` (output
tokens/s per GPU at maximum throughput); other columns are kept untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from kernels.roofline import Deployment, Efficiency
from kernels.serving import Workload, max_throughput_point, operating_point
from optimizer import catalog
from optimizer.errors import ConfigError, DataError
from optimizer.params import build_deployment, stack_trees
from optimizer.schema import GPU_FAMILIES, EfficiencyConfig

REQUIRED_COLUMNS = ("model_key", "gpu_key", "precision_key", "tp", "num_gpus", "isl", "osl",
                    "throughput_per_gpu_tok_s")

BUNDLED_CASES = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "measured_throughput.csv"
"""Copy of shared/data/measured_throughput.csv shipped with the project (the calibration set)."""

BUNDLED_LATENCY = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "measured_online_latency.csv"
"""Finite-rate rows of shared/data/measured_online_serving_latency.csv with catalog keys added."""

LATENCY_COLUMNS = ("model_key", "gpu_key", "precision_key", "tp", "isl", "osl", "tput_req_s", "mean_ttft_ms",
                   "mean_itl_ms")


def read_cases(path: str | Path) -> pd.DataFrame:
    """Read a cases CSV and check its columns (raises :class:`DataError` naming what is missing)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"cases file '{path}' does not exist")
    df = pd.read_csv(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"cases file '{path}' lacks column(s) {missing}; required columns: "
                        f"{list(REQUIRED_COLUMNS)}")
    for col in ("tp", "num_gpus", "isl", "osl"):
        bad = pd.to_numeric(df[col], errors="coerce")
        if bad.isna().any() or (bad <= 0).any():
            rows = list(df.index[bad.isna() | (bad <= 0)][:5])
            raise DataError(f"cases file '{path}': column '{col}' must be a positive number (rows {rows})")
    return df


class CaseBatch(NamedTuple):
    """Stacked arrays of the predictable cases (leading axis = case)."""

    dep: Deployment
    wl: Workload
    family: jnp.ndarray  # (n,) int index into GPU_FAMILIES
    measured: jnp.ndarray  # (n,) measured output tok/s per GPU (NaN if absent)


class EfficiencyTable(NamedTuple):
    """Efficiency factors per GPU family (leading axis = family, GPU_FAMILIES order)."""

    bw_eff: jnp.ndarray  # (n_family,)
    flops_eff: jnp.ndarray  # (n_family,)
    prefill_flops_eff: jnp.ndarray  # (n_family,)
    moe_eff: jnp.ndarray  # ()
    step_overhead_s: jnp.ndarray  # ()
    mem_util: jnp.ndarray  # ()


def efficiency_table(eff: EfficiencyConfig, dtype=jnp.float64) -> EfficiencyTable:
    """Per-family arrays from an :class:`EfficiencyConfig`."""
    bw = [eff.bw_eff.get(f, eff.default_bw_eff) for f in GPU_FAMILIES]
    fl = [eff.flops_eff.get(f, eff.default_flops_eff) for f in GPU_FAMILIES]
    pf = [eff.prefill_flops_eff.get(f, eff.default_prefill_flops_eff) for f in GPU_FAMILIES]
    return EfficiencyTable(jnp.asarray(bw, dtype), jnp.asarray(fl, dtype), jnp.asarray(pf, dtype),
                           jnp.asarray(eff.moe_eff, dtype), jnp.asarray(eff.step_overhead_ms / 1000.0, dtype), jnp.asarray(eff.mem_util, dtype))


def efficiency_at(table: EfficiencyTable, family) -> Efficiency:
    """The :class:`Efficiency` of GPU-family index (or index array) ``family``; shared factors broadcast."""
    f = jnp.asarray(family)
    b = lambda x: jnp.broadcast_to(x, f.shape)  # noqa: E731
    return Efficiency(table.bw_eff[f], table.flops_eff[f], table.prefill_flops_eff[f], b(table.moe_eff),
                      b(table.step_overhead_s), b(table.mem_util))


def build_cases(df: pd.DataFrame, dtype=jnp.float64) -> tuple[CaseBatch, np.ndarray, list[str]]:
    """Arrays for every row that can be predicted.

    Returns:
      ``(batch, rows, skipped_reason)``: ``rows`` are the positional indices of ``df`` in the batch;
      ``skipped_reason`` has one string per row of ``df`` (empty when the row is in the batch).
    """
    deps, wls, fams, meas, rows = [], [], [], [], []
    reasons = [""] * len(df)
    for i, r in enumerate(df.itertuples(index=False)):
        rec = r._asdict()
        try:
            hw = catalog.load_hardware(str(rec["gpu_key"]))
            model = catalog.load_model(str(rec["model_key"]))
            prec = catalog.load_precision(str(rec["precision_key"]))
            dep = build_deployment(hw, model, prec, int(rec["tp"]), dtype)
        except ConfigError as e:
            reasons[i] = str(e)
            continue
        deps.append(dep)
        wls.append(Workload(jnp.asarray(float(rec["isl"]), dtype), jnp.asarray(float(rec["osl"]), dtype),
                            jnp.asarray(0.0, dtype)))
        fams.append(GPU_FAMILIES.index(hw.family))
        m = pd.to_numeric(pd.Series([rec["throughput_per_gpu_tok_s"]]), errors="coerce").iloc[0]
        meas.append(float(m))
        rows.append(i)
    if not deps:
        return None, np.asarray([], int), reasons
    batch = CaseBatch(stack_trees(deps), stack_trees(wls), jnp.asarray(fams), jnp.asarray(meas, dtype))
    return batch, np.asarray(rows), reasons


class LatencyBatch(NamedTuple):
    """Stacked arrays of online-serving latency measurements (leading axis = case)."""

    dep: Deployment
    wl: Workload
    family: jnp.ndarray  # (n,) int index into GPU_FAMILIES
    concurrency: jnp.ndarray  # (n,) mean sequences in flight, Little's law: rate · (TTFT + (osl−1)·ITL)
    measured_itl_s: jnp.ndarray  # (n,) mean inter-token latency, s


def build_latency_cases(df: pd.DataFrame, dtype=jnp.float64) -> LatencyBatch | None:
    """Arrays for latency rows (columns LATENCY_COLUMNS); rows that cannot be built are dropped."""
    missing = [c for c in LATENCY_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"latency cases lack column(s) {missing}; required: {list(LATENCY_COLUMNS)}")
    deps, wls, fams, conc, itl = [], [], [], [], []
    for rec in df.to_dict(orient="records"):
        try:
            hw = catalog.load_hardware(str(rec["gpu_key"]))
            dep = build_deployment(hw, catalog.load_model(str(rec["model_key"])),
                                   catalog.load_precision(str(rec["precision_key"])), int(rec["tp"]), dtype)
        except ConfigError:
            continue
        deps.append(dep)
        wls.append(Workload(jnp.asarray(float(rec["isl"]), dtype), jnp.asarray(float(rec["osl"]), dtype),
                            jnp.asarray(0.0, dtype)))
        fams.append(GPU_FAMILIES.index(hw.family))
        w = (float(rec["mean_ttft_ms"]) + (float(rec["osl"]) - 1.0) * float(rec["mean_itl_ms"])) / 1000.0
        conc.append(max(float(rec["tput_req_s"]) * w, 1.0))
        itl.append(float(rec["mean_itl_ms"]) / 1000.0)
    if not deps:
        return None
    return LatencyBatch(stack_trees(deps), stack_trees(wls), jnp.asarray(fams), jnp.asarray(conc, dtype),
                        jnp.asarray(itl, dtype))


def predict_itl(batch: LatencyBatch, table: EfficiencyTable) -> jnp.ndarray:
    """Predicted time per output token at each case's concurrency, s (vmapped, differentiable)."""

    def one(dep, wl, fam, conc):
        return operating_point(dep, efficiency_at(table, fam), wl, conc).tpot_s

    return jax.vmap(one)(batch.dep, batch.wl, batch.family, batch.concurrency)


def predict(batch: CaseBatch, table: EfficiencyTable):
    """Max-throughput operating point of every case (vmapped), per-GPU output tok/s and fits.

    Pure and jittable; differentiable in ``table``.
    """

    def one(dep, wl, fam):
        p = max_throughput_point(dep, efficiency_at(table, fam), wl)
        return p.output_tok_s, p.fits

    return jax.vmap(one)(batch.dep, batch.wl, batch.family)


predict_jit = jax.jit(predict)


def error_summary(df: pd.DataFrame) -> dict[str, object]:
    """Median / mean absolute percentage error overall, by GPU and by model.

    ``df`` needs ``gpu_key``, ``model_key``, ``abs_pct_error`` (rows without a prediction are NaN).
    """
    ok = df.dropna(subset=["abs_pct_error"])
    by = lambda col: (ok.groupby(col)["abs_pct_error"].agg(["median", "mean", "count"])  # noqa: E731
                      .round(2).reset_index())
    return {"n_predicted": int(len(ok)), "n_skipped": int(len(df) - len(ok)),
            "median_ape_pct": float(ok["abs_pct_error"].median()) if len(ok) else float("nan"),
            "mean_ape_pct": float(ok["abs_pct_error"].mean()) if len(ok) else float("nan"),
            "by_gpu": by("gpu_key"), "by_model": by("model_key")}


def predict_frame(df: pd.DataFrame, eff: EfficiencyConfig) -> pd.DataFrame:
    """All input columns plus ``predicted_throughput_per_gpu_tok_s``, ``abs_pct_error`` and
    ``skipped_reason`` (empty when predicted)."""
    batch, rows, reasons = build_cases(df)
    out = df.copy()
    pred = np.full(len(df), np.nan)
    if batch is not None:
        thr, fits = predict_jit(batch, efficiency_table(eff))
        thr, fits = np.asarray(thr), np.asarray(fits)
        for j, i in enumerate(rows):
            if fits[j]:
                pred[i] = thr[j]
            else:
                reasons[i] = (f"model '{df.iloc[i]['model_key']}' does not fit {int(df.iloc[i]['tp'])}x "
                              f"'{df.iloc[i]['gpu_key']}' at {df.iloc[i]['precision_key']} with "
                              f"isl+osl={int(df.iloc[i]['isl'] + df.iloc[i]['osl'])} tokens")
    out["predicted_throughput_per_gpu_tok_s"] = np.round(pred, 1)
    meas = pd.to_numeric(out["throughput_per_gpu_tok_s"], errors="coerce")
    out["abs_pct_error"] = np.round(100.0 * np.abs(pred - meas.to_numpy()) / meas.to_numpy(), 2)
    out["skipped_reason"] = reasons
    return out
