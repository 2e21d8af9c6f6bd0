"""Calibration recovers known factors and the stored fit meets the accuracy goal."""

import jax.numpy as jnp
import numpy as np
import pytest

from optimizer import catalog
from optimizer.calibration import fit
from optimizer.cases import BUNDLED_CASES, build_cases, efficiency_table, predict, read_cases
from optimizer.schema import EfficiencyConfig


def test_fit_recovers_factors_from_synthetic_measurements():
    df = read_cases(BUNDLED_CASES)
    batch, _, _ = build_cases(df)
    truth = EfficiencyConfig(bw_eff={"hopper": 0.75, "blackwell": 0.85},
                             flops_eff={"hopper": 0.45, "blackwell": 0.3},
                             prefill_flops_eff={"hopper": 0.65, "blackwell": 0.5},
                             moe_eff=0.5, step_overhead_ms=3.0, mem_util=0.9)
    synth, fits = predict(batch, efficiency_table(truth))
    assert bool(jnp.all(fits))
    fitted, losses = fit(batch._replace(measured=synth), catalog.load_efficiency("start"), steps=1500,
                         learning_rate=0.05)
    assert losses["loss_after"] < 1e-4 < losses["loss_before"]
    pred, _ = predict(batch, efficiency_table(fitted))
    np.testing.assert_allclose(np.asarray(pred), np.asarray(synth), rtol=0.03)
    assert fitted.bw_eff["hopper"] == pytest.approx(0.75, rel=0.1)
    assert fitted.moe_eff == pytest.approx(0.5, rel=0.15)


def test_stored_calibration_is_physical():
    eff = catalog.load_efficiency("calibrated")
    for d in (eff.bw_eff, eff.flops_eff, eff.prefill_flops_eff):
        assert set(d) == {"hopper", "blackwell"}
        assert all(0.0 < v < 1.0 for v in d.values())
    assert 0 < eff.moe_eff <= 1 and 0 < eff.step_overhead_ms < 50 and 0.5 < eff.mem_util < 1
    assert "tokenmargin-calibrate" in eff.source
