"""The estimate path: one deployment, a cases file, and the command line."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from optimizer import catalog
from optimizer.cases import BUNDLED_CASES, error_summary, predict_frame, read_cases
from optimizer.errors import ConfigError, DataError, DoesNotFit, InfeasibleProblem
from optimizer.estimate import estimate_one
from optimizer.schema import CostConfig, EstimateConfig, TargetConfig

ROOT = Path(__file__).resolve().parent.parent


def cfg(model="llama-3.3-70b", gpu="h200-sxm", prec="fp8", tp=1, **kw) -> EstimateConfig:
    return EstimateConfig(hardware=catalog.load_hardware(gpu), model=catalog.load_model(model),
                          precision=catalog.load_precision(prec), efficiency=catalog.load_efficiency(),
                          tp=tp, **kw)


def test_estimate_matches_published_measurement():
    # measured_throughput.csv: Llama-3.3-70B FP8 on 1x H200 at 10 request shapes (1000/1000 -> 2909 tok/s/GPU)
    df = read_cases(BUNDLED_CASES)
    rows = df[(df.model_key == "llama-3.3-70b") & (df.gpu_key == "h200-sxm")].reset_index(drop=True)
    pred = predict_frame(rows, catalog.load_efficiency())
    assert len(rows) == 10 and pred["abs_pct_error"].median() <= 20.0
    row = estimate_one(cfg(isl=1000, osl=1000)).iloc[0]
    same = pred[(pred.isl == 1000) & (pred.osl == 1000)].iloc[0]
    # the single estimate and the cases path are one model: same deployment, same number
    assert row["output_tok_s_per_gpu"] == pytest.approx(same["predicted_output_tok_s_per_gpu"], abs=0.1)
    assert row["output_tok_s_per_gpu"] == pytest.approx(2909, rel=0.25)
    assert row["max_concurrency"] >= 1 and row["usd_per_mtok_output"] > 0 and row["usd_per_mtok_input"] > 0
    assert row["bound"] in ("memory", "compute") and row["deployment"] == "1 GPU TP1"


def test_cost_per_token_consistent_with_throughput():
    row = estimate_one(cfg(isl=1000, osl=1000)).iloc[0]
    # total $ per request from the two prices equals price x GPU-time per request
    usd_req = (row["usd_per_mtok_input"] * 1000 + row["usd_per_mtok_output"] * 1000) / 1e6
    gpu_s_req = 1000 / row["output_tok_s_per_gpu"]
    assert usd_req == pytest.approx(row["usd_per_gpu_hour"] / 3600 * gpu_s_req, rel=2e-3)


def test_slo_and_concurrency_operating_points():
    free = estimate_one(cfg()).iloc[0]
    slo = estimate_one(cfg(target=TargetConfig(tpot_ms=40.0))).iloc[0]
    assert slo["tpot_ms"] <= 40.0 + 1e-3 and slo["batch"] < free["batch"]
    assert slo["output_tok_s_per_gpu"] < free["output_tok_s_per_gpu"]
    fixed = estimate_one(cfg(target=TargetConfig(concurrency=8))).iloc[0]
    assert fixed["batch"] == pytest.approx(8.0)
    with pytest.raises(InfeasibleProblem, match="latency target"):
        estimate_one(cfg(target=TargetConfig(tpot_ms=0.5)))


def test_tco_cost_mode():
    row = estimate_one(cfg(cost=CostConfig(mode="tco"))).iloc[0]
    # h200 capex 32000 $ over 4 years + 0.7 kW x 1.3 x 0.08 $/kWh
    assert row["usd_per_gpu_hour"] == pytest.approx(32000 / (4 * 8760) + 0.7 * 1.3 * 0.08, rel=1e-3)
    with pytest.raises(ConfigError, match="capex"):
        estimate_one(cfg(gpu="l40s", model="llama-3.1-8b", cost=CostConfig(mode="tco")))


def test_not_fitting_and_bad_inputs_are_clear():
    with pytest.raises(DoesNotFit, match="does not fit 1x h100-sxm"):
        estimate_one(cfg(model="llama-3.1-405b", gpu="h100-sxm"))
    with pytest.raises(ConfigError, match="isl"):
        estimate_one(cfg(isl=-5))
    with pytest.raises(ConfigError, match="tp=3 must divide"):
        estimate_one(cfg(tp=3))
    # tensor parallelism over PCIe (L40S has no NVLink) is a deployment, not an error
    row = estimate_one(cfg(gpu="l40s", model="llama-3.1-8b", tp=2)).iloc[0]
    assert row["gpus"] == 2 and row["tp"] == 2 and row["output_tok_s_per_gpu"] > 0


def test_cases_file_predictions_and_skips(tmp_path):
    df = read_cases(BUNDLED_CASES)
    extra = df.iloc[:3].copy()
    extra["gpu_key"] = ["h300", "h100-sxm", "h100-sxm"]
    extra["precision_key"] = ["fp8", "fp4", "fp8"]
    extra.loc[extra.index[2], "model_key"] = "llama-3.1-405b"
    extra["tp"] = [1, 1, 1]
    out = predict_frame(pd.concat([df, extra], ignore_index=True), catalog.load_efficiency())
    assert len(out) == len(df) + 3
    reasons = out["skipped_reason"].tolist()[-3:]
    assert "unknown hardware 'h300'" in reasons[0]
    assert "fp4" in reasons[1] and "b200" in reasons[1]
    assert "does not fit" in reasons[2]
    assert np.isnan(out["predicted_throughput_per_gpu_tok_s"].iloc[-1])
    s = error_summary(out)
    assert s["n_predicted"] == len(df) and s["n_skipped"] == 3
    assert s["median_ape_pct"] <= 20.0  # issue #2 acceptance: median APE <= 20 %


def test_cases_file_missing_column(tmp_path):
    p = tmp_path / "bad.csv"
    pd.DataFrame({"model_key": ["llama-3.1-8b"], "gpu_key": ["h100-sxm"]}).to_csv(p, index=False)
    with pytest.raises(DataError, match="precision_key"):
        read_cases(p)


def _cli(args, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-c", "from optimizer.cli import estimate_main; estimate_main()",
                           *args, f"hydra.run.dir={tmp_path}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_estimate_writes_csv(tmp_path):
    r = _cli(["model=llama-3.1-8b", "hardware=h100-sxm", "precision=fp8", "isl=500", "osl=200"], tmp_path)
    assert r.returncode == 0, r.stderr
    out = pd.read_csv(tmp_path / "estimate.csv")
    assert out.loc[0, "model"] == "llama-3.1-8b" and out.loc[0, "output_tok_s_per_gpu"] > 0
    assert "usd_per_mtok_output" in r.stdout


def test_cli_fp4_on_hopper_fails_clearly(tmp_path):
    r = _cli(["precision=fp4"], tmp_path)
    assert r.returncode == 1
    assert "precision 'fp4'" in r.stderr and "h200-sxm" in r.stderr and "b200" in r.stderr
