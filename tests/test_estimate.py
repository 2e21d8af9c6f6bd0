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


def cfg(model="llama-3p3-70b", gpu="h200-sxm", prec="fp8", tp=1, **kw) -> EstimateConfig:
    return EstimateConfig(hardware=catalog.load_hardware(gpu), model=catalog.load_model(model),
                          precision=catalog.load_precision(prec), efficiency=catalog.load_efficiency(),
                          tp=tp, **kw)


def test_estimate_matches_published_measurement():
    # measured_throughput.csv: Llama-3.3-70B FP8 on 1x H200 at 10 request shapes (1000/1000 -> 2909 tok/s/GPU)
    df = read_cases(BUNDLED_CASES)
    rows = df[(df.model_key == "llama-3p3-70b") & (df.gpu_key == "h200-sxm")].reset_index(drop=True)
    pred = predict_frame(rows, catalog.load_efficiency())
    assert len(rows) == 10 and pred["abs_pct_error"].median() <= 20.0
    row = estimate_one(cfg(isl=1000, osl=1000)).iloc[0]
    same = pred[(pred.isl == 1000) & (pred.osl == 1000)].iloc[0]
    # the single estimate and the cases path are one model: same deployment, same number
    assert row["output_tok_s_per_gpu"] == pytest.approx(same["predicted_output_tok_s_per_gpu"], abs=0.1)
    assert row["output_tok_s_per_gpu"] == pytest.approx(2909, rel=0.25)
    assert row["max_concurrency"] >= 1 and row["usd_per_mtok_output"] > 0 and row["usd_per_mtok_input"] > 0
    assert row["deployment"] == "1 GPU TP1"
    # the roof that binds at B_max, by hand (dense, TP1: dp = 1, one KV shard): memory-bound share
    # mem / (mem + compute) with mem = (W + B·ctx·kv) / (BW·η_bw), compute = B·(2·P + attn·ctx) FLOPs at η_fl
    # of the FP8 (dense) and BF16 (attention) roofs, ctx = isl + osl/2 = 1500, B = (HBM·u − W) / (kv·2000)
    m, h, p, e = (catalog.load_model("llama-3p3-70b"), catalog.load_hardware("h200-sxm"),
                  catalog.load_precision("fp8"), catalog.load_efficiency())
    w, kv = m.total_params_b * 1e9 * p.bytes_per_weight, m.kv_bytes_per_token_bf16 * p.bytes_per_kv / 2
    b = (h.memory_gb * 1e9 * e.mem_util - w) / (kv * 2000)
    mem = (w + b * 1500 * kv) / (h.mem_bw_tb_s * 1e12 * e.bw_eff["hopper"])
    fl = e.flops_eff["hopper"] * 1e12
    comp = (b * 2 * m.active_params_b * 1e9 / (h.dense_tflops.fp8 * fl)
            + b * 4 * m.num_attention_heads * m.head_dim * m.full_attention_layers * 1500 / (h.dense_tflops.bf16 * fl))
    assert row["max_concurrency"] == int(b)  # 189
    assert row["memory_bound_share"] == pytest.approx(mem / (mem + comp), abs=1e-3)  # 0.397
    # at the calibrated decode efficiency (31 % of the FP8 roof) the 189-sequence step is compute-bound
    assert mem / (mem + comp) < 0.5 and row["bound"] == "compute"


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
        estimate_one(cfg(gpu="l40s", model="llama-3p1-8b", cost=CostConfig(mode="tco")))


def test_not_fitting_and_bad_inputs_are_clear():
    with pytest.raises(DoesNotFit, match="does not fit 1x h100-sxm"):
        estimate_one(cfg(model="llama-3p1-405b", gpu="h100-sxm"))
    with pytest.raises(ConfigError, match="isl"):
        estimate_one(cfg(isl=-5))
    with pytest.raises(ConfigError, match="tp=3 must divide"):
        estimate_one(cfg(tp=3))
    # tensor parallelism over PCIe (L40S has no NVLink) is a deployment, not an error
    row = estimate_one(cfg(gpu="l40s", model="llama-3p1-8b", tp=2)).iloc[0]
    assert row["gpus"] == 2 and row["tp"] == 2 and row["output_tok_s_per_gpu"] > 0


def test_cases_file_predictions_and_skips(tmp_path):
    df = read_cases(BUNDLED_CASES)
    extra = df.iloc[:3].copy()
    extra["gpu_key"] = ["h300", "h100-sxm", "h100-sxm"]
    extra["precision_key"] = ["fp8", "fp4", "fp8"]
    extra.loc[extra.index[2], "model_key"] = "llama-3p1-405b"
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
    pd.DataFrame({"model_key": ["llama-3p1-8b"], "gpu_key": ["h100-sxm"]}).to_csv(p, index=False)
    with pytest.raises(DataError, match="precision_key"):
        read_cases(p)


def _cli(args, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-c", "from optimizer.cli import estimate_main; estimate_main()",
                           *args, f"hydra.run.dir={tmp_path}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_estimate_writes_csv(tmp_path):
    r = _cli(["model=llama-3p1-8b", "hardware=h100-sxm", "precision=fp8", "isl=500", "osl=200"], tmp_path)
    assert r.returncode == 0, r.stderr
    out = pd.read_csv(tmp_path / "estimate.csv")
    assert out.loc[0, "model"] == "llama-3p1-8b" and out.loc[0, "output_tok_s_per_gpu"] > 0
    assert "usd_per_mtok_output" in r.stdout


def test_cli_fp4_on_hopper_fails_clearly(tmp_path):
    r = _cli(["precision=fp4"], tmp_path)
    assert r.returncode == 1
    assert "precision 'fp4'" in r.stderr and "h200-sxm" in r.stderr and "b200" in r.stderr


def test_latency_bound_cases_format_and_blank_deployments():
    """The measured_slo_throughput.csv format: measured output tok/s per GPU, interactivity as concurrency,
    deployment columns that may be blank (best deployment of num_gpus GPUs), MTP-k speculation."""
    from optimizer.cases import BUNDLED_SLO_CASES

    df = read_cases(BUNDLED_SLO_CASES)
    out = predict_frame(df, catalog.load_efficiency())
    assert {"predicted_output_tok_s_per_gpu", "chosen_deployment", "chosen_precision", "skipped_reason"} <= set(out.columns)
    ok = out["predicted_output_tok_s_per_gpu"].notna()
    assert ok.sum() >= 20 and (out.loc[ok, "predicted_output_tok_s_per_gpu"] > 0).all()
    # given deployment columns are honoured: TP8 attention with MoE EP2 and 3 MTP drafts
    assert out.loc[0, "chosen_deployment"] == "8 GPU TP8 EP2 MTP-3"
    # attention DP (TensorRT-LLM --tp 8 --enable_attention_dp) is 8 attention ranks of TP 1
    assert out.loc[1, "chosen_deployment"].startswith("8 GPU TP1 DP8 EP8")
    # blank precision: the best the GPU supports (FP4 on GB200)
    assert out.loc[16, "chosen_precision"] == "fp4"
    # unknown models and unsourced speculation are skipped with a reason, never guessed
    assert "unknown model 'deepseek-v4-pro'" in out.loc[18, "skipped_reason"]
    assert "Eagle3" in out.loc[15, "skipped_reason"] or "isl" in out.loc[15, "skipped_reason"]
    s = error_summary(out)
    assert s["median_ape_pct"] <= 15.0  # issue 9: in-sample median APE <= 15 % in the latency-bound regime
    # the MTP rows order as measured: 2 drafts beat 1, and 5 drafts do not beat 3 (draft cost at batch 1)
    mtp = out.set_index(out["mtp_or_spec"].fillna(""))
    k1, k2, k3, k5 = (float(mtp.loc[f"MTP-{k} (autoregressive)", "predicted_output_tok_s_per_gpu"]) for k in (1, 2, 3, 5))
    assert k2 > k1 and k5 < k3


def test_estimate_chooses_the_deployment_for_deepseek_at_an_slo():
    """Issue 9: DeepSeek-V3 FP8 on H200 at 40 ms TPOT was 56 tok/s/GPU and $17/M output with one TP8 node."""
    c = cfg(model="deepseek-v3", tp=None, isl=4383, osl=1211, target=TargetConfig(tpot_ms=40))
    row = estimate_one(c).iloc[0]
    assert row["tpot_ms"] <= 40.0 + 1e-6 and row["output_tok_s_per_gpu"] > 300
    assert row["usd_per_mtok_output"] < 2.0
    assert row["ep"] > 1 and row["candidates"] > 5
    # fixing the old single-node TP8 deployment is still possible, and is worse
    fixed = estimate_one(cfg(model="deepseek-v3", tp=8, ep=8, gpus=8, isl=4383, osl=1211, disaggregated=False,
                             target=TargetConfig(tpot_ms=40))).iloc[0]
    assert fixed["deployment"].startswith("8 GPU TP8 EP8") and fixed["output_tok_s_per_gpu"] < row["output_tok_s_per_gpu"]
    # nodes= spans servers: two 8-GPU H800 nodes hold DeepSeek-V3 FP8, one cannot
    h800 = cfg(model="deepseek-v3", gpu="h800", tp=None, nodes=2, isl=4383, osl=1211)
    assert estimate_one(h800).iloc[0]["nodes"] == 2
    with pytest.raises(DoesNotFit, match="does not fit 8x h800"):
        estimate_one(cfg(model="deepseek-v3", gpu="h800", tp=None, nodes=1, isl=4383, osl=1211))
