"""Calibration recovers known factors and the stored fit meets the accuracy goal in both regimes."""

import jax.numpy as jnp
import numpy as np
import pytest

from optimizer import catalog
from optimizer.calibration import fit
from optimizer.cases import (BUNDLED_CASES, BUNDLED_SLO_CASES, build_cases, efficiency_table, error_summary,
                             predict, predict_frame, read_cases)
from optimizer.schema import EfficiencyConfig

TRUTH = EfficiencyConfig(bw_eff={"hopper": 0.75, "blackwell": 0.85}, flops_eff={"hopper": 0.45, "blackwell": 0.3},
                         prefill_flops_eff={"hopper": 0.65, "blackwell": 0.5}, moe_eff=0.7, step_overhead_ms=1.0,
                         mem_util=0.9, layer_overhead_us=5.0, moe_layer_overhead_us=10.0, collective_latency_us=20.0, ep_imbalance=1.3)


def _regimes(eff):
    return {name: build_cases(read_cases(path), eff).batches
            for name, path in (("max_throughput", BUNDLED_CASES), ("latency_bound", BUNDLED_SLO_CASES))}


@pytest.mark.slow  # ~30 s: 1500 Adam steps over both regimes (nightly: pytest -m "slow or not slow")
def test_fit_recovers_factors_from_synthetic_measurements():
    """Measurements made by the model itself at known factors, in both regimes, are fitted back."""
    regimes = _regimes(TRUTH)
    table = efficiency_table(TRUTH)
    synth = {}
    for name, batches in regimes.items():
        synth[name] = {}
        for mode, b in batches.items():
            out, _, _, fits = predict(b, table, mode)
            synth[name][mode] = b._replace(measured=jnp.where(fits, out, jnp.nan))
    fitted, losses = fit(synth, catalog.load_efficiency("start"), steps=1500, learning_rate=0.05, fit_mem_util=False)
    assert losses["loss_after"] < 2e-3 < losses["loss_before"]
    fitted_table = efficiency_table(fitted)
    for name, batches in synth.items():
        for mode, b in batches.items():
            pred, _, _, fits = predict(b, fitted_table, mode)
            ok = np.isfinite(np.asarray(b.measured)) & np.asarray(fits)
            err = np.abs(np.asarray(pred)[ok] / np.asarray(b.measured)[ok] - 1)
            assert np.median(err) < 0.03, (name, mode, np.median(err))
    assert fitted.bw_eff["hopper"] == pytest.approx(0.75, rel=0.1)
    assert fitted.bw_eff["blackwell"] == pytest.approx(0.85, rel=0.1)


def test_stored_calibration_is_physical_and_meets_the_goal_in_both_regimes():
    eff = catalog.load_efficiency("calibrated")
    for d in (eff.bw_eff, eff.flops_eff, eff.prefill_flops_eff):
        assert set(d) == {"hopper", "blackwell"}
        assert all(0.0 < v < 1.0 for v in d.values())
    # an efficiency lowers achieved rates, it never multiplies bytes: grouped GEMMs reach >= half the dense rate
    assert 0.5 <= eff.moe_eff <= 1 and 0 < eff.step_overhead_ms < 50 and 0.5 < eff.mem_util < 1
    assert 1.0 <= eff.ep_imbalance <= 2.0 and 0 <= eff.layer_overhead_us <= 200 and 0 < eff.collective_latency_us <= 50
    assert "tokenmargin-calibrate" in eff.source
    for path in (BUNDLED_CASES, BUNDLED_SLO_CASES):  # issue 9: in-sample median APE <= 15 % in each regime
        s = error_summary(predict_frame(read_cases(path), eff))
        assert s["median_ape_pct"] <= 15.0, (path.name, s["median_ape_pct"])
