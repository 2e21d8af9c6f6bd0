"""Calibration recovers known factors and the stored fit meets the accuracy goal in both regimes."""

import jax.numpy as jnp
import numpy as np
import pytest

from optimizer import catalog
from optimizer.calibration import fit
from optimizer.cases import (BUNDLED_CASES, BUNDLED_SLO_CASES, build_cases, efficiency_table, error_summary,
                             predict, predict_frame, read_cases)
from optimizer.params import efficiency_for, family_factors, transferred
from optimizer.schema import GPU_FAMILIES, EfficiencyConfig

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


def test_a_family_absent_from_the_fit_is_as_efficient_relative_to_its_microbenchmark_as_the_fitted_ones():
    """Families without measurements take the fitted factors × their measured share / the fitted families'."""
    fitted = {"hopper": 0.3, "blackwell": 0.2}
    shares = {"hopper": 0.8, "blackwell": 0.5, "cdna3": 0.4}
    assert transferred(fitted, 0.25, shares, "hopper") == 0.3  # a fitted family keeps its fit
    assert transferred(fitted, 0.25, shares, "cdna3") == pytest.approx((0.3 * 0.4 / 0.8 + 0.2 * 0.4 / 0.5) / 2)
    assert transferred(fitted, 0.25, shares, "ada") == 0.25  # no share measured: the default
    assert transferred(fitted, 0.25, {"cdna3": 0.4}, "cdna3") == 0.25  # no fitted family to relate it to
    assert transferred({"hopper": 0.9}, 0.9, {"hopper": 0.5, "ampere": 0.9}, "ampere") == 1.0  # capped at peak

    eff = catalog.load_efficiency("calibrated")
    bw, fl, pf = family_factors(eff, "cdna3")  # MI300X / MI325X: lower measured matmul and STREAM shares
    assert bw == pytest.approx(eff.bw_eff["hopper"] * 0.7725 / 0.8785)  # blackwell has no STREAM share
    assert fl == pytest.approx(np.mean([eff.flops_eff[f] * 0.559 / eff.matmul_share[f] for f in ("hopper", "blackwell")]))
    assert pf < eff.default_prefill_flops_eff and fl < eff.default_flops_eff and bw < eff.default_bw_eff
    assert family_factors(eff, "ada") == (eff.default_bw_eff, eff.default_flops_eff, eff.default_prefill_flops_eff)
    assert family_factors(eff, "hopper") == (eff.bw_eff["hopper"], eff.flops_eff["hopper"], eff.prefill_flops_eff["hopper"])
    table = efficiency_table(eff)  # the arrays every model reads agree
    i = GPU_FAMILIES.index("cdna3")
    assert (float(table.bw_eff[i]), float(table.flops_eff[i]), float(table.prefill_flops_eff[i])) == \
        pytest.approx((bw, fl, pf))
    assert float(efficiency_for(eff, "cdna3").flops_eff) == pytest.approx(fl)
    # the ideal roofline has no fitted family: nothing to carry, every family at peak
    assert family_factors(catalog.load_efficiency("roofline"), "cdna3") == (1.0, 1.0, 1.0)
